"""A ban's 403 says how long in words a person reads right: seconds below a minute."""

from __future__ import annotations

import pytest

from lamplighter.api.guard import wait_text


@pytest.mark.parametrize(
    ("seconds", "said"),
    [
        (0.2, "1 s"),
        (12.0, "12 s"),
        (59.5, "60 s"),
        (60.0, "1 min"),
        (299.0, "5 min"),
        (7200.0, "2.0 h"),
    ],
)
def test_a_wait_reads_in_seconds_below_a_minute(seconds: float, said: str) -> None:
    assert wait_text(seconds) == said
