"""Plans: what each class of user is promised and allowed.

Three plans exist by default (``free``, ``plus``, ``team``); operators change them or add their
own in the ``[plans.NAME]`` tables of the TOML config. On start, plans from the config that the
database does not have yet are stored; after that the database is the source of truth and the
admin API edits it live.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, get_type_hints

from pydantic import TypeAdapter, ValidationError

from lamplighter.exceptions import ConfigError

# Billing periods a plan may be sold for, and the most a price may be (in minor units).
PERIODS = ("month", "year")
MAX_PRICE = 10**12
CURRENCY = re.compile(r"[a-z]{3}")
# The names the admin API takes (in a URL path): a plan named otherwise in the config file
# could never be edited there.
PLAN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


@dataclass(frozen=True)
class Plan:
    name: str
    # Lower runs first: 0 is served before 1 whenever both wait.
    priority: int = 2
    requests_per_minute: int = 20
    tokens_per_minute: int = 20_000
    tokens_per_day: int = 200_000
    concurrent_streams: int = 2
    # The largest max_tokens a request is granted (asking for more is capped, not refused).
    max_tokens: int = 1024
    # Models the plan may use; empty means every model.
    models: tuple[str, ...] = ()
    # How long a request may wait in the queue before it is refused with 503.
    queue_patience_s: float = 10.0
    # The time to first token the plan promises.
    ttft_slo_s: float = 5.0
    # How long a deterministic answer may be served again from the response cache (0: never).
    cache_ttl_s: float = 300.0
    # For the web chat only: API keys on this plan are refused (and count as abuse).
    browser_only: bool = False
    # What a seat on the plan costs, in minor units of ``currency`` (cents for usd), for a month
    # and for a year; 0 means the plan is not sold for that period (both 0: a free plan).
    monthly_price: int = 0
    yearly_price: int = 0
    currency: str = "usd"

    def __post_init__(self) -> None:
        if not self.name or len(self.name) > 64:
            raise ValueError("a plan needs a name of at most 64 characters")
        for name in (
            "requests_per_minute",
            "tokens_per_minute",
            "tokens_per_day",
            "concurrent_streams",
            "max_tokens",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.priority < 0:
            raise ValueError("priority must be 0 or more")
        if self.queue_patience_s < 0 or self.ttft_slo_s <= 0 or self.cache_ttl_s < 0:
            raise ValueError("queue_patience_s and cache_ttl_s must be >= 0, ttft_slo_s > 0")
        if not 0 <= self.monthly_price <= MAX_PRICE or not 0 <= self.yearly_price <= MAX_PRICE:
            raise ValueError(f"monthly_price and yearly_price must be from 0 to {MAX_PRICE}")
        if not CURRENCY.fullmatch(self.currency):
            raise ValueError("currency must be a three-letter ISO 4217 code in lower case")

    def allows(self, model: str) -> bool:
        return not self.models or model in self.models

    def price(self, period: str) -> int:
        """A seat's price for one ``period`` (month or year), in minor units; 0: not sold."""
        if period not in PERIODS:
            raise ValueError(f"a billing period is one of {', '.join(PERIODS)}, not {period!r}")
        return self.monthly_price if period == "month" else self.yearly_price

    @property
    def monthly_cost(self) -> int:
        """A seat's price for a month, from the yearly price when only that is set."""
        return self.monthly_price or round(self.yearly_price / 12)

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["models"] = list(self.models)
        return data


DEFAULT_PLANS: dict[str, Plan] = {
    "free": Plan("free"),
    "plus": Plan(
        "plus",
        priority=1,
        requests_per_minute=60,
        tokens_per_minute=100_000,
        tokens_per_day=2_000_000,
        concurrent_streams=4,
        max_tokens=4096,
        queue_patience_s=30.0,
        ttft_slo_s=2.0,
    ),
    "team": Plan(
        "team",
        priority=0,
        requests_per_minute=200,
        tokens_per_minute=400_000,
        tokens_per_day=10_000_000,
        concurrent_streams=10,
        max_tokens=8192,
        queue_patience_s=60.0,
        ttft_slo_s=1.0,
    ),
}

PLAN_FIELDS = {f.name for f in fields(Plan)}
# Each field's type, checked in pydantic's strict mode (as the admin API checks its body with
# pydantic): the dataclass stores whatever it is given, and a TOML file gives what was typed,
# "10" for 10 or a string for a list of models.
_KINDS = get_type_hints(Plan)
_TYPES = {name: TypeAdapter(kind) for name, kind in _KINDS.items()}
_EXPECTED = {
    int: "an integer",
    float: "a number",
    bool: "true or false",
    str: "a string",
    tuple[str, ...]: "a list of strings",
}


def plan_from(name: str, values: Mapping[str, Any], base: Plan | None = None) -> Plan:
    """A plan from a mapping of fields (a TOML table, an admin API body or a stored row) over
    ``base``. An unknown field, or one of the wrong type, is a ValueError naming it."""
    unknown = set(values) - PLAN_FIELDS
    if unknown:
        raise ValueError(
            f"unknown plan fields: {', '.join(sorted(unknown))}; known: "
            f"{', '.join(sorted(PLAN_FIELDS - {'name'}))}"
        )
    data = {field: _typed(field, value) for field, value in values.items()}
    return replace(base or Plan(name), **{**data, "name": name})


def _typed(field: str, value: Any) -> Any:
    """``value`` as the field holds it: strictly of its type (not 1.5, true or "10" for an
    integer; an integer is a number), a TOML array becoming the plan's tuple."""
    given = tuple(value) if isinstance(value, list) else value
    try:
        return _TYPES[field].validate_python(given, strict=True)
    except ValidationError:
        raise ValueError(f"{field!r} must be {_EXPECTED[_KINDS[field]]}, not {value!r}") from None


def plans_from_config(table: Mapping[str, Any]) -> dict[str, Plan]:
    """The defaults, overlaid with the ``[plans.NAME]`` tables of a config file."""
    plans = dict(DEFAULT_PLANS)
    for name, values in table.items():
        if not PLAN_NAME.fullmatch(name):
            raise ConfigError(
                f"[plans]: {name!r} is no plan name: use 1 to 64 letters, digits, '.', '_' or "
                "'-', starting with a letter or digit (the admin API takes no other)"
            )
        if not isinstance(values, Mapping):
            raise ConfigError(f"[plans.{name}] must be a table")
        try:
            plans[name] = plan_from(name, values, DEFAULT_PLANS.get(name))
        except ValueError as exc:
            raise ConfigError(f"[plans.{name}]: {exc}") from exc
    return plans
