"""Fuzzing the HTTP API from its own OpenAPI description with schemathesis: whatever the
generated input, no server error, and responses match what the schema documents.

A server of its own (the scripted backend, an admin key on an unlimited plan), so that the
fuzzer's plans, suspensions and revocations touch no other test's state.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
)

from lamplighter.engines.base import Backend
from lamplighter.engines.scripted import ScriptedBackend
from lamplighter.settings import Settings
from tests.conftest import ROOMY_PLAN, SCRIPTED, LiveServer, make_settings


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LiveServer, str]]:
    async def backends(_: Settings) -> list[Backend]:
        return [ScriptedBackend(SCRIPTED)]

    data_dir: Path = tmp_path_factory.mktemp("fuzz")
    config = data_dir / "lamplighter.toml"
    config.write_text(ROOMY_PLAN)
    settings = make_settings(data_dir, config=config, embedded_engine=False)
    with LiveServer(settings, backends) as live:
        email = "fuzzer@example.org"
        live.call(lambda s: s.accounts.create_user(email, admin=True, plan="roomy"))
        key = live.call(lambda s: s.accounts.create_key(email, "fuzz")).secret
        yield live, key


def test_no_input_breaks_the_api(fuzzed: tuple[LiveServer, str]) -> None:
    """Every operation the schema describes, 25 generated requests each (schemathesis's pytest
    plugin does not run under pytest 9, so the operations are driven with hypothesis here)."""
    server, key = fuzzed
    schema = schemathesis.openapi.from_url(server.base_url + "/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 10
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=25,
            deadline=None,
            database=None,
            # The same cases every run, so CI is repeatable; run with a random seed locally
            # (HYPOTHESIS_PROFILE is not needed: drop this line) to explore further.
            derandomize=True,
            suppress_health_check=list(HealthCheck),
        )
        def fuzz(case: Any) -> None:
            case.call_and_validate(
                headers={"authorization": f"Bearer {key}"},
                checks=[not_a_server_error, content_type_conformance, response_schema_conformance],
            )

        fuzz()
