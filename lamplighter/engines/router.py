"""Picks the backend that serves a request's model."""

from __future__ import annotations

from collections.abc import Iterable

from lamplighter.engines.base import Backend
from lamplighter.exceptions import NotFound


class Router:
    def __init__(self, backends: Iterable[Backend] = ()) -> None:
        self.backends: list[Backend] = list(backends)

    def add(self, backend: Backend) -> None:
        self.backends.append(backend)

    @property
    def models(self) -> list[str]:
        seen: dict[str, None] = {}
        for backend in self.backends:
            seen.update(dict.fromkeys(backend.models))
        return list(seen)

    @property
    def ready(self) -> bool:
        return bool(self.backends) and all(backend.ready for backend in self.backends)

    def route(self, model: str) -> Backend:
        for backend in self.backends:
            if model in backend.models:
                return backend
        raise NotFound(
            f"The model '{model}' does not exist. Available: {', '.join(self.models) or 'none'}.",
            param="model",
            code="model_not_found",
        )

    async def close(self) -> None:
        for backend in self.backends:
            await backend.close()
