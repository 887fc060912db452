"""Live configuration: plans, backends and policies reread from the config file, checked first.

``lamplighter serve`` reads its TOML file at start. A reload (SIGHUP, or
``POST /api/admin/config/reload``) reads it again:

1. **Everything is checked before anything changes**, with the readers ``serve`` uses at start
   (``read_config``, ``load_settings``, ``plans_from_config``, ``upstreams_from_config``,
   ``rules_from_config``, ``headroom_from_config``, ``Moderation``, ``ViolationPolicy``,
   ``WatchPolicy``, ``FlywheelPolicy``), plus what only makes sense together: a degrade rule's
   model must be served, backend names must be unique, and at least one backend must remain.
   A file that fails raises :class:`~lamplighter.exceptions.ConfigError` and the running
   configuration stays whole: the admin API answers 400 with the message, a SIGHUP logs it at
   ERROR, and ``lamplighter_config_reloads_total{outcome="refused"}`` counts it.
2. **Plans.** Each ``[plans.NAME]`` table (over the built-in plan of that name, as at start)
   replaces the stored plan when they differ: written to the database with an audit entry and
   announced on the bulletin, so every replica's next request obeys it. Plans the file does not
   name keep what the admin API gave them. (At start, a stored plan is never overwritten.)
3. **Backends.** ``[[backends]]`` tables added, removed or changed (by name). A new or changed
   upstream is health-checked before it takes requests; one removed or replaced takes no new
   requests, and those running on it finish on it. The embedded engine is not touched.
4. **Policies.** ``[traffic]`` (degrade rules, headroom), ``[moderation]``, ``[abuse]`` and
   ``[flywheel]`` replace the running ones when their table changed.
5. ``[lamplighter]`` settings are read at start only: a changed one is named in the answer
   (``restart_needed``) and logged.

With Redis, the replica that reloads announces it on the bulletin and every other replica rereads
its own copy of the file (a Kubernetes ConfigMap reaches each pod on its own schedule: reload
once the file has changed everywhere, or send SIGHUP to each pod).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Mapping
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from lamplighter.abuse.moderation import Moderation
from lamplighter.abuse.violations import ViolationPolicy
from lamplighter.abuse.watch import WatchPolicy
from lamplighter.engines.base import Backend
from lamplighter.engines.upstream import UpstreamBackend, UpstreamConfig, upstreams_from_config
from lamplighter.exceptions import ConfigError
from lamplighter.flywheel.policy import FlywheelPolicy
from lamplighter.settings import Settings, check_keys, load_settings, read_config
from lamplighter.store.audit import Audit
from lamplighter.store.audit import write as write_audit
from lamplighter.traffic.admission import headroom_from_config
from lamplighter.traffic.degrade import DegradeRule, rules_from_config
from lamplighter.traffic.plans import Plan, plans_from_config

if TYPE_CHECKING:
    from lamplighter.api.state import Services

log = logging.getLogger(__name__)
POLICY_TABLES = ("traffic", "moderation", "abuse", "flywheel")


async def _alone() -> None:
    """One replica has no one to tell."""


@dataclass(frozen=True)
class Outcome:
    """What a reload changed."""

    plans: tuple[str, ...] = ()
    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    changed: tuple[str, ...] = ()
    policies: tuple[str, ...] = ()
    restart_needed: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {
            "plans": list(self.plans),
            "backends": {
                "added": list(self.added),
                "removed": list(self.removed),
                "changed": list(self.changed),
            },
            "policies": list(self.policies),
            "restart_needed": list(self.restart_needed),
        }


@dataclass(frozen=True)
class Tables:
    """The file's tables beyond ``[lamplighter]``, each read and checked on its own (what needs
    the running server, such as which models it serves, is checked by :meth:`Reloader.check`)."""

    plans: dict[str, Plan]  # only those the file names
    upstreams: dict[str, UpstreamConfig]
    degrade: tuple[DegradeRule, ...]
    headroom: dict[int, float]
    moderation: Moderation  # its upstream checker connects at its first check, not before
    violations: ViolationPolicy
    watch: WatchPolicy
    flywheel: FlywheelPolicy


def read_tables(document: Mapping[str, Any], env: Mapping[str, str] | None = None) -> Tables:
    """Every table of a config file read with the readers ``serve`` uses, or a ConfigError that
    names what is wrong (``serve`` checks the file with it before it starts, a reload before
    it changes anything)."""
    plans_table = _table(document, "plans")
    every_plan = _read("[plans]", lambda: plans_from_config(plans_table))
    traffic = _table(document, "traffic")
    check_keys("[traffic]", traffic, ("degrade", "headroom"))
    abuse = _table(document, "abuse")
    return Tables(
        plans={name: every_plan[name] for name in plans_table},
        upstreams={
            config.name: config
            for config in _read(
                "[[backends]]", lambda: upstreams_from_config(document.get("backends", []), env)
            )
        },
        degrade=_read("[[traffic.degrade]]", lambda: rules_from_config(traffic.get("degrade", []))),
        headroom=_read(
            "[traffic] headroom", lambda: headroom_from_config(traffic.get("headroom", {}))
        ),
        moderation=_read(
            "[moderation]", lambda: Moderation.from_config(_table(document, "moderation"))
        ),
        violations=_read("[abuse]", lambda: ViolationPolicy.from_config(abuse)),
        watch=_read("[abuse.watch]", lambda: WatchPolicy.from_config(abuse.get("watch", {}))),
        flywheel=_read(
            "[flywheel]", lambda: FlywheelPolicy.from_config(_table(document, "flywheel"))
        ),
    )


@dataclass(frozen=True)
class _Checked:
    """A configuration that passed every check, not applied yet."""

    document: dict[str, Any]
    tables: Tables
    policies: tuple[str, ...]  # the policy tables that changed
    restart_needed: tuple[str, ...]


def _table(document: Mapping[str, Any], name: str) -> dict[str, Any]:
    value = document.get(name, {})
    if not isinstance(value, dict):
        raise ConfigError(f"[{name}] must be a table")
    return value


def _read(what: str, read: Callable[[], Any]) -> Any:
    """Run one of the start-up readers; the odd ValueError becomes a ConfigError naming the
    table, so that a reload never fails with a traceback."""
    try:
        return read()
    except ConfigError:
        raise
    except (ValueError, TypeError, KeyError) as exc:
        raise ConfigError(f"{what}: {exc}") from exc


class Reloader:
    def __init__(
        self,
        settings: Settings,
        services: Services,
        document: Mapping[str, Any],
        *,
        announce: Callable[[], Awaitable[None]] = _alone,
        env: Mapping[str, str] | None = None,
    ) -> None:
        """``document`` is the config file as the server started with it; ``announce`` tells
        the other replicas to reload too (see bulletin.py)."""
        self.settings = settings
        self.services = services
        self.document = dict(document)
        self.announce = announce
        self.env = os.environ if env is None else env
        self.applied = 0
        self.refused = 0
        self.loaded_at = time.time()
        self.last_error: str | None = None
        self._lock = asyncio.Lock()
        self._retired: list[Backend | Moderation] = []
        self._tasks: set[asyncio.Task[Any]] = set()

    async def reload(
        self, *, actor_id: uuid.UUID | None = None, actor: str = "system", announce: bool = True
    ) -> Outcome:
        """Check the file, then apply it (see the module). Raises ConfigError, having changed
        nothing, when the file does not pass."""
        async with self._lock:
            try:
                checked = self.check()
            except ConfigError as error:
                self.refused += 1
                self.last_error = str(error)
                log.error(
                    "configuration reload refused; the running configuration stays: %s",
                    error,
                    extra={"config": str(self.settings.config), "actor": actor},
                )
                raise
            outcome = await self._apply(checked, actor_id, actor)
            self.applied += 1
            self.loaded_at = time.time()
            self.last_error = None
        log.info(
            "configuration reloaded",
            extra={"config": str(self.settings.config), "actor": actor, **outcome.as_dict()},
        )
        for name in outcome.restart_needed:
            log.warning("setting %r changed in the config file: it applies at restart", name)
        if announce:
            await self.announce()
        return outcome

    def check(self) -> _Checked:
        """Read and check the whole file; nothing running changes."""
        path = self.settings.config
        if path is None:
            raise ConfigError(
                "there is no config file to reload: the server was started without --config "
                "or LAMPLIGHTER_CONFIG"
            )
        document = read_config(path)
        fresh = load_settings(self.env, config=path)  # [lamplighter]: unknown keys, bad values
        named = set(_table(document, "lamplighter")) | set(_table(self.document, "lamplighter"))
        restart = tuple(
            f.name
            for f in fields(Settings)
            if f.name in named and getattr(fresh, f.name) != getattr(self.settings, f.name)
        )
        tables = read_tables(document, self.env)
        upstreams = tables.upstreams
        others = [b for b in self.services.router.backends if not isinstance(b, UpstreamBackend)]
        taken = sorted(name for name in upstreams if name in {b.name for b in others})
        if taken:
            raise ConfigError(f"[[backends]]: names already used by built-in backends: {taken}")
        if not others and not upstreams:
            raise ConfigError(
                "[[backends]]: the file lists no backend, and this server has no other: every "
                "model would disappear"
            )
        served = {m for b in others for m in b.models} | {
            m for config in upstreams.values() for m in config.models
        }
        for rule in tables.degrade:
            if rule.model is not None and rule.model not in served:
                raise ConfigError(
                    f"[[traffic.degrade]]: no backend serves the model {rule.model!r}; "
                    f"served: {', '.join(sorted(served)) or 'none'}"
                )
        policies = tuple(
            name for name in POLICY_TABLES if document.get(name, {}) != self.document.get(name, {})
        )
        return _Checked(document=document, tables=tables, policies=policies, restart_needed=restart)

    async def _apply(self, checked: _Checked, actor_id: uuid.UUID | None, actor: str) -> Outcome:
        services = self.services
        chat = services.chat
        written = []
        for name, plan in checked.tables.plans.items():
            if name in services.plans.names() and services.plans.get(name) == plan:
                continue
            values = {k: v for k, v in plan.as_dict().items() if k != "name"}
            audit = Audit(actor_id, actor, "plan.reload", name, {"source": "config file", **values})
            await services.plans.put(name, values, create=True, audit=audit)
            written.append(name)
        added, removed, changed = await self._swap_backends(checked.tables.upstreams)
        if "traffic" in checked.policies:
            chat.degrade = checked.tables.degrade
            chat.admission.set_headroom(checked.tables.headroom)
        if "moderation" in checked.policies:
            self._retired.append(chat.moderation)
            chat.moderation = checked.tables.moderation
        if "abuse" in checked.policies:
            services.violations.policy = checked.tables.violations
            services.watch.policy = checked.tables.watch
        if "flywheel" in checked.policies:
            services.credits.policy = checked.tables.flywheel.credits
            services.preferences.policy = checked.tables.flywheel
        self.document = checked.document
        outcome = Outcome(
            plans=tuple(written),
            added=added,
            removed=removed,
            changed=changed,
            policies=checked.policies,
            restart_needed=checked.restart_needed,
        )
        if added or removed or changed or checked.policies:
            details = {k: v for k, v in outcome.as_dict().items() if k != "plans" and v}
            async with services.db.transaction() as session:
                await write_audit(session, Audit(actor_id, actor, "config.reload", "", details))
        return outcome

    async def _swap_backends(
        self, wanted: Mapping[str, UpstreamConfig]
    ) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
        router = self.services.router
        current = {b.name: b for b in router.backends if isinstance(b, UpstreamBackend)}
        added = tuple(name for name in wanted if name not in current)
        removed = tuple(name for name in current if name not in wanted)
        changed = tuple(
            name for name in wanted if name in current and current[name].config != wanted[name]
        )
        fresh = {name: UpstreamBackend(wanted[name]) for name in (*added, *changed)}
        # Health-checked once before taking a request, as at start.
        await asyncio.gather(*(backend.start() for backend in fresh.values()))
        backends: list[Backend] = []
        for backend in router.backends:
            if isinstance(backend, UpstreamBackend) and backend.name in (*removed, *changed):
                if backend.name in changed:
                    backends.append(fresh[backend.name])
                self._retired.append(backend)
                await backend.probe.stop()  # out of the router: no more health checks
                continue
            backends.append(backend)
        backends.extend(fresh[name] for name in added)
        router.backends = backends  # one assignment: the next request sees the new set
        for name in changed:
            self.services.chat.admission.resize(name, wanted[name].capacity)
        await self._close_retired(idle_only=True)
        return added, removed, changed

    async def _close_retired(self, *, idle_only: bool) -> None:
        """Close what reloads replaced; with ``idle_only``, only backends no stream uses."""
        keep: list[Backend | Moderation] = []
        for thing in self._retired:
            if idle_only and (not isinstance(thing, UpstreamBackend) or thing.streams):
                keep.append(thing)
                continue
            try:
                await thing.close()
            except Exception:
                log.exception("closing a replaced backend failed")
        self._retired = keep

    async def close(self) -> None:
        """At shutdown: close everything reloads replaced."""
        self.stop_listening()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._close_retired(idle_only=False)

    # -- triggers without a caller to answer: SIGHUP and the bulletin --------------------------

    async def reload_logged(self, why: str, *, announce: bool = True) -> None:
        """Reload, logging the outcome instead of raising (a refusal is logged by reload)."""
        try:
            await self.reload(actor=why, announce=announce)
        except ConfigError:
            pass
        except Exception:
            self.refused += 1
            log.exception("configuration reload failed (%s)", why)

    def listen_for_sighup(self) -> None:
        """Reload on SIGHUP (only the main thread may handle signals; elsewhere, as in tests
        that run the app in a thread, this does nothing)."""
        if threading.current_thread() is threading.main_thread():
            asyncio.get_running_loop().add_signal_handler(
                signal.SIGHUP, lambda: self._background(self.reload_logged("SIGHUP"))
            )

    def stop_listening(self) -> None:
        if threading.current_thread() is threading.main_thread():
            asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)

    async def heard(self, _: Mapping[str, Any]) -> None:
        """Another replica reloaded: reload our own file, without announcing it again."""
        self._background(self.reload_logged("bulletin", announce=False))

    def _background(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


class ReloadMetrics(Collector):
    """``lamplighter_config_reloads_total{outcome}`` and when the configuration was loaded."""

    def __init__(self, reloader: Reloader) -> None:
        self.reloader = reloader

    def collect(self) -> Iterator[Metric]:
        reloads = CounterMetricFamily(
            "lamplighter_config_reloads",
            "Configuration reloads (SIGHUP, admin API, another replica's), by outcome: applied, "
            "or refused (the file did not pass its checks; the running configuration stayed).",
            labels=["outcome"],
        )
        reloads.add_metric(["applied"], float(self.reloader.applied))
        reloads.add_metric(["refused"], float(self.reloader.refused))
        yield reloads
        yield GaugeMetricFamily(
            "lamplighter_config_loaded_timestamp_seconds",
            "When the running configuration was loaded (start, or the last applied reload).",
            value=self.reloader.loaded_at,
        )
        yield GaugeMetricFamily(
            "lamplighter_config_last_reload_ok",
            "0 if the last reload was refused, else 1.",
            value=0.0 if self.reloader.last_error else 1.0,
        )
