"""Picks the backend for a request.

Candidates are the backends that serve the request's model, allow the caller's plan and are fit
(an upstream's health check is up and its circuit breaker lets requests through). Among them:

- **Prefix affinity.** A conversation goes back to the backend that served its longest known
  prefix (the path hash of its turns, remembered for the last ``AFFINITY_ENTRIES`` requests),
  so the backend's prefix cache (vLLM's automatic prefix caching, SGLang's radix cache) already
  holds its KV. A conversation not seen yet is placed by weighted rendezvous hashing of its
  first turns, so every gateway replica places it on the same backend without sharing state.
- **Bounded by load.** The affinity backend is used only while it has a free slot and is at
  most ``slack`` (a share of its capacity, by weight) busier than the least-loaded candidate;
  otherwise the request goes to the least loaded, by weight.

A backend's load is the larger of what this gateway has running or queued on it and what the
backend publishes itself (requests running and waiting, KV-cache usage), counting the request
being routed, as a share of its capacity. Publishing backends are seen with every replica's load.

Replicas do not see each other's choices until a backend publishes its load again: requests
routed at the same instant on several replicas can all pick one backend and find its shared
slots taken. Before such a request queues, ``ChatService`` asks the other candidates, least
loaded first, for a slot free now (overflow; ``Router.serves`` keeps affinity right when none
has one).

A backend whose ``generate`` raises :class:`Unavailable` before its first chunk has failed in a
way another backend may not: the caller moves the request elsewhere (see ``ChatService``).
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import math
from collections import OrderedDict
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol, cast, runtime_checkable

from lamplighter.conversation.threading import Turn, path_hashes
from lamplighter.engines.base import Backend
from lamplighter.engines.health import Load
from lamplighter.exceptions import EngineFailed, NotFound, Overloaded

AFFINITY_SLACK = 0.5
# A backend's prefix cache holds the recent conversations, not every one: an 8B model's KV
# cache on one H100 is a few thousand long prompts. 20,000 is generous and about 4 MB.
AFFINITY_ENTRIES = 20_000


class Unavailable(EngineFailed):
    """The backend cannot take this request (unreachable, answered 5xx, timed out before its
    first token, or its circuit breaker is open): another backend may."""


class Refused(EngineFailed):
    """The backend refused the request itself (a 400: a JSON schema it cannot follow, a prompt
    its context cannot hold). Another backend would refuse it too, so the client is told why."""

    status_code = 400
    type = "invalid_request_error"
    code = "backend_refused"


@runtime_checkable
class Balanced(Protocol):
    """What a backend that takes part in balancing publishes beyond :class:`Backend`."""

    @property
    def weight(self) -> float: ...

    @property
    def plans(self) -> frozenset[str]:
        """The plans allowed to use it; empty: all."""

    @property
    def circuit(self) -> str:
        """Its breaker's state: closed, half_open or open."""

    def accepting(self) -> bool:
        """Healthy, and its breaker lets a request through."""

    def published(self) -> Load | None: ...

    def retry_after(self) -> float:
        """Seconds until it may accept again."""

    async def start(self) -> None: ...


# How many requests this gateway has running or waiting on a backend, by name.
Occupancy = Callable[[str], int]


def _none(_: str) -> int:
    return 0


@dataclass(frozen=True)
class Route:
    backend: Backend
    # affinity: the backend holding the conversation's prefix; least_loaded; only: the one
    # candidate there was.
    reason: str


@dataclass(frozen=True)
class BackendStatus:
    """One backend as metrics and the console show it."""

    name: str
    up: bool
    circuit: str | None  # None: a backend without a breaker (embedded, scripted)
    load: float | None  # the load it publishes (share of capacity), None when it does not


def load_of(backend: Backend, mine: int) -> float:
    """The backend's load with one more request, as a share of its capacity: ``mine`` is what
    this gateway runs or queues there; what it publishes counts when that is more."""
    capacity = max(1, backend.capacity)
    requests = mine + 1
    kv = 0.0
    published = _balanced(backend).published() if _is_balanced(backend) else None
    if published is not None:
        requests = max(requests, math.ceil(published.running + published.waiting) + 1)
        kv = published.kv_usage
    return max(requests / capacity, kv)


def rendezvous(key: str, backends: Sequence[Backend]) -> Backend:
    """Weighted rendezvous (highest random weight) hashing: the same key picks the same backend
    whatever the order, and losing one backend moves only the keys it had."""

    def score(backend: Backend) -> float:
        digest = hashlib.blake2b(f"{key}\0{backend.name}".encode(), digest_size=8).digest()
        unit = (int.from_bytes(digest, "big") + 1) / (2**64 + 1)  # in (0, 1)
        return -_weight(backend) / math.log(unit)

    return max(backends, key=score)


# isinstance() against a runtime-checkable protocol costs microseconds: answered once a type.
_BALANCED: dict[type, bool] = {}


def _is_balanced(backend: Backend) -> bool:
    kind = type(backend)
    known = _BALANCED.get(kind)
    if known is None:
        known = _BALANCED[kind] = isinstance(backend, Balanced)
    return known


def _balanced(backend: Backend) -> Balanced:
    return cast(Balanced, backend)  # the caller checked _is_balanced


def _weight(backend: Backend) -> float:
    return _balanced(backend).weight if _is_balanced(backend) else 1.0


def _allows(backend: Backend, plan: str | None) -> bool:
    if plan is None or not _is_balanced(backend):
        return True
    plans = _balanced(backend).plans
    return not plans or plan in plans


def accepting(backend: Backend) -> bool:
    """Whether ``backend`` takes requests now. Backends without health checks (embedded,
    scripted) always do."""
    return _balanced(backend).accepting() if _is_balanced(backend) else True


class Router:
    def __init__(
        self,
        backends: Iterable[Backend] = (),
        *,
        slack: float = AFFINITY_SLACK,
        entries: int = AFFINITY_ENTRIES,
    ) -> None:
        self.backends: list[Backend] = list(backends)
        self.slack = slack
        self.entries = entries
        # Path hash of a request's turns -> the backend that served it last (LRU).
        self._served: OrderedDict[str, str] = OrderedDict()
        self._turn = itertools.count()

    def add(self, backend: Backend) -> None:
        self.backends.append(backend)

    @property
    def models(self) -> list[str]:
        return self.models_for(None)

    def models_for(self, plan: str | None) -> list[str]:
        """The models served by some backend that takes requests of ``plan`` (None: any)."""
        seen: dict[str, None] = {}
        for backend in self.backends:
            if _allows(backend, plan):
                seen.update(dict.fromkeys(backend.models))
        return list(seen)

    @property
    def ready(self) -> bool:
        """Every model has at least one ready backend."""
        return bool(self.backends) and all(
            any(backend.ready for backend in self.backends if model in backend.models)
            for model in self.models
        )

    def status(self) -> list[BackendStatus]:
        rows = []
        for backend in self.backends:
            circuit: str | None = None
            load: float | None = None
            if isinstance(backend, Balanced):
                circuit = backend.circuit
                published = backend.published()
                if published is not None:
                    requests = (published.running + published.waiting) / max(1, backend.capacity)
                    load = max(requests, published.kv_usage)
            rows.append(BackendStatus(backend.name, backend.ready, circuit, load))
        return rows

    def route(self, model: str) -> Backend:
        """Some backend that serves ``model`` (raises NotFound if none does)."""
        return self.choose(model).backend

    def choose(
        self,
        model: str,
        *,
        plan: str | None = None,
        turns: Sequence[Turn] = (),
        occupancy: Occupancy = _none,
        exclude: Collection[str] = (),
    ) -> Route:
        """The backend for a request (see the module's docstring). Raises NotFound when no
        backend serves the model to this plan, and Overloaded (503) when those that do are
        all down, resting after failures or in ``exclude``."""
        serving = [backend for backend in self.backends if model in backend.models]
        if not serving:
            raise NotFound(
                f"The model '{model}' does not exist. Available: "
                f"{', '.join(self.models_for(plan)) or 'none'}.",
                param="model",
                code="model_not_found",
            )
        allowed = [backend for backend in serving if _allows(backend, plan)]
        if not allowed:
            raise NotFound(
                f"The model '{model}' is not available on plan '{plan}'.",
                param="model",
                code="model_not_found",
            )
        candidates = [b for b in allowed if b.name not in exclude and accepting(b)]
        if not candidates:
            waits = [b.retry_after() for b in allowed if isinstance(b, Balanced)]
            raise Overloaded(
                f"No backend for '{model}' is available now: "
                + ", ".join(
                    f"{b.name} ({'tried' if b.name in exclude else 'down'})" for b in allowed
                )
                + ". Try again shortly.",
                retry_after=max(1.0, min(waits, default=1.0)),
                code="backend_unavailable",
            )
        if len(candidates) == 1:
            return Route(candidates[0], "only")
        loads = {b.name: load_of(b, occupancy(b.name)) / _weight(b) for b in candidates}
        # Least loaded; ties go round in turn, so an idle pool is shared rather than piled
        # on the first backend.
        start = next(self._turn) % len(candidates)
        rotated = candidates[start:] + candidates[:start]
        least = min(rotated, key=lambda b: loads[b.name])
        hashes = path_hashes(turns) if turns else []
        preferred = self._preferred(turns, hashes, candidates)
        chosen, reason = least, "least_loaded"
        if preferred is not None:
            free = load_of(preferred, occupancy(preferred.name)) <= 1.0
            if free and loads[preferred.name] <= loads[least.name] + self.slack:
                chosen, reason = preferred, "affinity"
        if hashes:
            self._remember(hashes[-1], chosen.name)
        return Route(chosen, reason)

    def _preferred(
        self, turns: Sequence[Turn], hashes: list[str], candidates: list[Backend]
    ) -> Backend | None:
        if not hashes:
            return None
        by_name = {backend.name: backend for backend in candidates}
        # The longest earlier part of this conversation that a backend served.
        for prefix in reversed(hashes[:-1]):
            name = self._served.get(prefix)
            if name is not None:
                self._served.move_to_end(prefix)
                if name in by_name:
                    return by_name[name]
                break
        # New here: its first turns (system prompt and first question) decide.
        first = next((i for i, turn in enumerate(turns) if turn.role == "user"), 0)
        return rendezvous(hashes[first], candidates)

    def serves(self, turns: Sequence[Turn], name: str) -> None:
        """Backend ``name`` serves the conversation ``turns`` after all (the last ``choose``
        for it named another, which had no room)."""
        if turns:
            self._remember(path_hashes(turns)[-1], name)

    def _remember(self, path_hash: str, name: str) -> None:
        self._served[path_hash] = name
        self._served.move_to_end(path_hash)
        while len(self._served) > self.entries:
            self._served.popitem(last=False)

    async def start(self) -> None:
        """Start the backends' health checks (each checks once before this returns)."""
        await asyncio.gather(
            *(backend.start() for backend in self.backends if isinstance(backend, Balanced))
        )

    async def close(self) -> None:
        for backend in self.backends:
            await backend.close()
