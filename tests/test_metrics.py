"""GET /metrics: what an operator's Prometheus scrapes, with bounded labels only."""

from __future__ import annotations

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import SCRIPTED, LiveServer


def scrape(server: LiveServer) -> dict[str, list[tuple[dict[str, str], float]]]:
    response = httpx.get(server.base_url + "/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((sample.labels, sample.value))
    return samples


def value(
    samples: dict[str, list[tuple[dict[str, str], float]]], name: str, **labels: str
) -> float:
    return sum(v for found, v in samples.get(name, []) if labels.items() <= found.items())


def test_metrics_count_requests_tokens_latency_and_refusals(
    server: LiveServer, user: tuple[str, str], client: openai.OpenAI
) -> None:
    before = scrape(server)
    answer = client.chat.completions.create(
        model=SCRIPTED, messages=[{"role": "user", "content": "count me"}]
    )
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(
            model="no-such-model", messages=[{"role": "user", "content": "x"}]
        )
    after = scrape(server)

    def grew(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert answer.usage is not None
    assert grew("lamplighter_requests_total", plan="roomy", model=SCRIPTED, outcome="complete") == 1
    assert grew("gen_ai_server_token_usage_total", type="output", model=SCRIPTED) == (
        answer.usage.completion_tokens
    )
    assert grew("gen_ai_server_token_usage_total", type="input", model=SCRIPTED) == (
        answer.usage.prompt_tokens
    )
    assert grew("gen_ai_server_time_to_first_token_seconds_count", model=SCRIPTED) == 1
    assert grew("gen_ai_server_request_duration_seconds_count", model=SCRIPTED) == 1
    assert grew("lamplighter_refusals_total", plan="roomy", reason="model_not_found") == 1
    assert "lamplighter_queue_depth" in after and "lamplighter_backend_utilization" in after
    assert "lamplighter_active_streams" in after
    assert "lamplighter_cache_lookups_total" in after
    # Labels are bounded: no user, email or key ever appears.
    email, key = user
    text = httpx.get(server.base_url + "/metrics").text
    assert (
        email not in text
        and key not in text
        and "user"
        not in {label for series in after.values() for labels, _ in series for label in labels}
    )
