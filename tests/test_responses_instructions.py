"""What a response was generated from, read back through the real ``openai`` SDK: a response
that continues another (``previous_response_id``) lists its own instructions among its input
items, not the first response's, and retrieving it gives its instructions and the response it
continued (audit sdk #2)."""

from __future__ import annotations

import openai

from tests.conftest import SCRIPTED


def inputs(client: openai.OpenAI, response_id: str) -> list[tuple[str, str]]:
    """(role, text) of a response's input items, oldest first."""
    items = client.responses.input_items.list(response_id, order="asc")
    found = []
    for item in items:
        assert item.type == "message"
        found.append((item.role, item.content[0].text))  # type: ignore[union-attr]
    return found


def test_a_continued_response_lists_and_returns_its_own_instructions(
    client: openai.OpenAI,
) -> None:
    first = client.responses.create(
        model=SCRIPTED, input="instructions audit hi", instructions="Be brief."
    )
    assert inputs(client, first.id) == [("system", "Be brief."), ("user", "instructions audit hi")]
    began = client.responses.retrieve(first.id)
    assert began.instructions == "Be brief." and began.previous_response_id is None

    # Continued without instructions: the model saw none (OpenAI's rule), so none is listed.
    plain = client.responses.create(
        model=SCRIPTED, input="instructions audit more", previous_response_id=first.id
    )
    history = [
        ("user", "instructions audit hi"),
        ("assistant", "You said: instructions audit hi"),
        ("user", "instructions audit more"),
    ]
    assert inputs(client, plain.id) == history
    stored = client.responses.retrieve(plain.id)
    assert stored.previous_response_id == first.id and stored.instructions is None

    # Continued with other instructions: those are what it lists and returns.
    verbose = client.responses.create(
        model=SCRIPTED,
        input="instructions audit more2",
        previous_response_id=plain.id,
        instructions="Be verbose.",
    )
    assert verbose.instructions == "Be verbose." and verbose.previous_response_id == plain.id
    assert inputs(client, verbose.id) == [
        ("system", "Be verbose."),
        *history,
        ("assistant", "You said: instructions audit more"),
        ("user", "instructions audit more2"),
    ]
    stored = client.responses.retrieve(verbose.id)
    assert stored.instructions == "Be verbose." and stored.previous_response_id == plain.id
    # The SDK pages through them as through any list, the instructions item included.
    paged = client.responses.input_items.list(verbose.id, order="asc", limit=2)
    assert [item.id for item in paged] == [
        item.id for item in client.responses.input_items.list(verbose.id, order="asc")
    ]
