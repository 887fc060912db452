"""Stop sequences over streamed pieces: released text is exactly the text before the first stop."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from lamplighter.engines.stops import StopMatcher

alphabet = st.text(alphabet="ab\n", max_size=30)


def first_cut(text: str, stops: list[str]) -> str:
    positions = [text.find(stop) for stop in stops if stop and stop in text]
    return text[: min(positions)] if positions else text


@given(st.lists(alphabet, max_size=12), st.lists(st.text(alphabet="ab\n", max_size=4), max_size=4))
def test_released_text_is_the_text_before_the_first_stop(
    pieces: list[str], stops: list[str]
) -> None:
    matcher = StopMatcher(stops)
    released = ""
    for piece in pieces:
        released += matcher.feed(piece)
    released += matcher.flush()
    text = "".join(pieces)
    assert released == first_cut(text, stops)
    assert matcher.stopped == any(stop and stop in text for stop in stops)


@given(st.lists(alphabet, max_size=12))
def test_without_stops_everything_is_released_at_once(pieces: list[str]) -> None:
    matcher = StopMatcher([])
    assert [matcher.feed(piece) for piece in pieces] == pieces


def test_a_stop_split_across_pieces_is_caught() -> None:
    matcher = StopMatcher(["END"])
    assert matcher.feed("the E") == "the "
    assert matcher.feed("N") == ""
    assert matcher.feed("D and more") == ""
    assert matcher.stopped


def test_a_false_start_is_released_when_it_turns_out_not_to_be_a_stop() -> None:
    matcher = StopMatcher(["END"])
    assert matcher.feed("E") == ""
    assert matcher.feed("x") == "Ex"
    assert not matcher.stopped
