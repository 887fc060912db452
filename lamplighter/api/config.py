"""The admin API's configuration endpoints: reload the config file live, and see how the last
reload went (see reload.py)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from lamplighter.api.admin import Admin
from lamplighter.api.state import State
from lamplighter.exceptions import ConfigError, InvalidRequest, NotFound
from lamplighter.reload import Reloader

router = APIRouter(prefix="/api/admin/config")


def _reloader(state: State) -> Reloader:
    if state.reloader is None:
        raise NotFound("This server cannot reload its configuration.", code="unknown_url")
    return state.reloader


@router.get("")
async def config_status(_: Admin, state: State) -> dict[str, Any]:
    """Which file the server reads, when it was loaded, and how the last reload went."""
    reloader = _reloader(state)
    return {
        "file": str(reloader.settings.config) if reloader.settings.config else None,
        "loaded_at": reloader.loaded_at,
        "reloads": {"applied": reloader.applied, "refused": reloader.refused},
        "last_error": reloader.last_error,
    }


@router.post("/reload")
async def reload_config(who: Admin, state: State) -> dict[str, Any]:
    """Reread plans, backends and policies from the config file, checked first: a file that
    does not pass is a 400 naming the problem, and the running configuration stays."""
    try:
        outcome = await _reloader(state).reload(actor_id=who.user_id, actor=who.email)
    except ConfigError as error:
        raise InvalidRequest(
            f"The configuration was not reloaded: {error}", code="invalid_config"
        ) from error
    return {"reloaded": True, **outcome.as_dict()}
