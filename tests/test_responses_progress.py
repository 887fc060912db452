"""A background response's progress, through the real ``openai`` SDK: polled, it shows the
text generated so far (the checkpoint the store keeps every second), not an empty output until
it ends.

The backend is the session server's paced scripted one: it echoes the input a word every two
milliseconds, so a long input stays in progress for a few seconds."""

from __future__ import annotations

import openai
from openai.types.responses import Response

from tests.conftest import PACED
from tests.fleet import wait_for

WORDS = 1500  # about three seconds of answer: checkpointed at least once on the way


def long_input(tag: str) -> str:
    return " ".join(f"{tag}{n}" for n in range(WORDS))


def test_polling_a_background_response_shows_the_text_so_far(client: openai.OpenAI) -> None:
    said = long_input("progress")
    made = client.responses.create(model=PACED, input=said, background=True)
    assert made.status == "in_progress" and made.output == []  # nothing generated yet

    def partway() -> Response | None:
        polled = client.responses.retrieve(made.id)
        assert polled.status in ("in_progress", "completed")
        return polled if polled.status == "in_progress" and polled.output_text else None

    polled = wait_for(partway, 10, "a poll shows some of the text while it is generated")
    [item] = polled.output
    assert item.type == "message" and item.status == "in_progress"
    assert polled.usage is None

    done = wait_for(
        lambda: (found := client.responses.retrieve(made.id)).status == "completed" and found,
        20,
        "the response is completed",
    )
    assert done.output_text == f"You said: {said}"
    assert done.output_text.startswith(polled.output_text)
    assert len(polled.output_text) < len(done.output_text)
