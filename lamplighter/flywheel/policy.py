"""The flywheel's policy, from the ``[flywheel]`` table of the config file: how often people
are asked for preferences, and what feedback earns.

```toml
[flywheel]
verdict_rate = 0.2            # share of regenerations followed by "better, worse or same?"
side_by_side_rate = 0.05      # share of new questions answered twice, anonymously, side by side
side_by_side_variants = ["smollm2-135m-instruct@t=0.3", "smollm2-135m-instruct@t=1.0"]

[flywheel.credits]
tokens = 500                  # extra daily tokens one piece of useful feedback earns ...
days = 7                      # ... for this many days
cap = 10000                   # most extra daily tokens anyone holds at once
min_seconds = 1.0             # feedback sooner than this after the answer appeared earns nothing
uniform_after = 20            # this many ratings (or votes) in a row all alike earn nothing
min_trust = 0.5               # raters trusted less than this earn nothing (and lose what they had)
min_evidence = 5              # ... once at least this many of their labels could be checked
```
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from lamplighter.exceptions import ConfigError

_VARIANT = re.compile(r"^(?P<model>[^@\s]{1,200})(?:@t=(?P<temperature>\d+(?:\.\d+)?))?$")


@dataclass(frozen=True)
class Variant:
    """What answers one side of a side-by-side: a model, and optionally its temperature."""

    model: str
    temperature: float | None = None

    @classmethod
    def parse(cls, text: str) -> Variant:
        found = _VARIANT.match(text)
        if found is None:
            raise ConfigError(f"side_by_side_variants: {text!r} is not 'model' or 'model@t=0.7'")
        temperature = found["temperature"]
        value = None if temperature is None else float(temperature)
        if value is not None and value > 2:
            raise ConfigError(f"side_by_side_variants: {text!r}: temperature is at most 2")
        return cls(found["model"], value)

    def __str__(self) -> str:
        return self.model if self.temperature is None else f"{self.model}@t={self.temperature:g}"


@dataclass(frozen=True)
class CreditPolicy:
    tokens: int = 500
    days: int = 7
    cap: int = 10_000
    min_seconds: float = 1.0
    uniform_after: int = 20
    min_trust: float = 0.5
    min_evidence: int = 5


@dataclass(frozen=True)
class FlywheelPolicy:
    verdict_rate: float = 0.2
    side_by_side_rate: float = 0.0
    # Empty: two models of the person's plan when it has two, else one model at two temperatures.
    side_by_side_variants: tuple[Variant, ...] = ()
    credits: CreditPolicy = field(default_factory=CreditPolicy)

    @classmethod
    def from_config(cls, table: Mapping[str, Any]) -> FlywheelPolicy:
        known = {"verdict_rate", "side_by_side_rate", "side_by_side_variants", "credits"}
        unknown = set(table) - known
        if unknown:
            raise ConfigError(f"unknown keys in [flywheel]: {', '.join(sorted(unknown))}")
        rates = {}
        for name in ("verdict_rate", "side_by_side_rate"):
            value = table.get(name, getattr(cls, name))
            if not isinstance(value, int | float) or not 0 <= value <= 1:
                raise ConfigError(f"[flywheel] {name}: a share from 0 to 1, not {value!r}")
            rates[name] = float(value)
        variants = tuple(Variant.parse(str(v)) for v in table.get("side_by_side_variants", ()))
        if variants and len(variants) != 2:
            raise ConfigError("[flywheel] side_by_side_variants: name exactly two")
        return cls(
            **rates, side_by_side_variants=variants, credits=_credits(table.get("credits", {}))
        )


def _credits(table: Mapping[str, Any]) -> CreditPolicy:
    kinds = {f.name: f.type for f in fields(CreditPolicy)}
    unknown = set(table) - set(kinds)
    if unknown:
        raise ConfigError(f"unknown keys in [flywheel.credits]: {', '.join(sorted(unknown))}")
    values: dict[str, Any] = {}
    for name, raw in table.items():
        number = float(raw) if kinds[name] == "float" else raw
        if not isinstance(number, int | float) or isinstance(number, bool) or number < 0:
            raise ConfigError(f"[flywheel.credits] {name}: a number of at least 0, not {raw!r}")
        values[name] = number if kinds[name] == "float" else int(number)
    policy = CreditPolicy(**values)
    if policy.min_trust > 1:
        raise ConfigError("[flywheel.credits] min_trust: at most 1")
    return policy
