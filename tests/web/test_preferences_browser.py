"""Saying which answer is better, in a real Chromium against a real server: side-by-side answers
and the vote, the verdict after a regeneration, "Improve this answer", and the feedback bonus.

The server here asks for everything every time (``side_by_side_rate`` and ``verdict_rate`` 1.0),
so every new question gets two anonymous answers, from two scripted models that write a word
every few milliseconds: slow enough to watch both stream, fast enough for a quick test. Every
test fails on a console error (where Chromium reports Content-Security-Policy violations too).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from playwright.sync_api import Locator, expect

from lamplighter.conversation.threading import Turn
from lamplighter.engines.base import Chunk, PreparedRequest
from lamplighter.engines.scripted import ScriptedBackend
from lamplighter.settings import Settings
from tests.conftest import ROOMY_PLAN, SCRIPTED, LiveServer, make_settings
from tests.web.browser import ANSWER, BODY, PHONE, Tab, Tabs
from tests.web.conftest import Browserless, Person

expect.set_options(timeout=15_000)

PARROT = "scripted-parrot"
WORD_S = 0.04
FLYWHEEL = (
    ROOMY_PLAN
    + f"""
[flywheel]
verdict_rate = 1.0
side_by_side_rate = 1.0
side_by_side_variants = ["{SCRIPTED}", "{PARROT}@t=1"]

[flywheel.credits]
min_seconds = 0  # the browser votes within a second of the answers
"""
)


def echo(turns: tuple[Turn, ...]) -> str:
    return f"You said: {turns[-1].content} I write slowly, one word at a time, so you can watch."


def parrot(turns: tuple[Turn, ...]) -> str:
    if turns[-1].content.startswith("Who are you?"):  # asked, it names a model
        return f"Parrot here, a Gemini model: {turns[-1].content} Squawk!"
    return f"Parrot here: {turns[-1].content} Squawk! My words come slowly too."


class Unhurried(ScriptedBackend):
    """A scripted model that takes WORD_S a word, like a (fast) real one."""

    async def generate(self, prepared: PreparedRequest) -> AsyncIterator[Chunk]:
        async for chunk in super().generate(prepared):
            await asyncio.sleep(WORD_S)
            yield chunk


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """This module's own server (it replaces the session's): the flywheel always asks, and
    people's chats are trained on unless they say no (feedback earns credits only then)."""

    async def backends(_: Settings) -> list[Any]:
        return [Unhurried(SCRIPTED, echo), Unhurried(PARROT, parrot)]

    data_dir = tmp_path_factory.mktemp("preferences")
    config = data_dir / "lamplighter.toml"
    config.write_text(FLYWHEEL)
    settings = make_settings(data_dir, config=config, training_consent_default=True)
    with LiveServer(settings, backends) as live:
        yield live


@pytest.fixture
def tab(tabs: Tabs, person: Person) -> Tab:
    opened = tabs.open()
    opened.login(person)
    return opened


def column(tab: Tab, slot: str) -> Locator:
    return tab.page.locator(f'[data-testid="pair-column"][data-slot="{slot}"]')


def comparisons(web: Browserless, conversation_id: str, kind: str) -> list[dict[str, Any]]:
    return [c for c in web.tree(conversation_id)["comparisons"] if c["kind"] == kind]


BOTH_STREAMING = """() => {
    const columns = [...document.querySelectorAll('[data-testid="pair-column"]')];
    return columns.length === 2 && columns.every((c) => {
        const answer = c.querySelector('[data-testid="message"]');
        const body = answer && answer.querySelector('[data-testid="message-body"]');
        return answer.dataset.status === 'in_progress' && body.textContent.trim().length > 0;
    });
}"""


def ask_for_a_pair(tab: Tab, question: str) -> Locator:
    """Send a question, wait for both answers and the vote buttons; returns the pair."""
    tab.send(question)
    pair = tab.page.get_by_test_id("pair")
    expect(pair.get_by_test_id("vote-a")).to_be_visible()
    return pair


def vote_and_continue(tab: Tab, winner: str) -> None:
    """Vote, then fold the pair into the thread without waiting for it to fold by itself."""
    pair = ask_for_a_pair(tab, "What is the capital of France?")
    pair.get_by_test_id(f"vote-{winner}").click()
    pair.get_by_test_id("pair-continue").click()
    expect(pair).to_have_count(0)
    expect(tab.answers()).to_have_count(1)
    # The pair's stream has closed too (its last events can come before): until then the
    # chat's answer is still being written, and Regenerate waits.
    expect(tab.page.get_by_test_id("send")).to_be_visible()


def test_two_answers_stream_side_by_side_and_the_vote_reveals_the_models_then_folds_away(
    tab: Tab, web: Browserless
) -> None:
    page = tab.page
    tab.send("What is the capital of France?")
    pair = page.get_by_test_id("pair")
    expect(pair).to_be_visible()
    page.wait_for_function(BOTH_STREAMING, timeout=10_000)  # both write at the same time
    expect(pair.locator(".pair-label")).to_have_text(["Answer A", "Answer B"])
    a, b = column(tab, "a"), column(tab, "b")
    box_a, box_b = a.bounding_box(), b.bounding_box()
    assert box_a and box_b and box_b["x"] >= box_a["x"] + box_a["width"]  # two columns
    assert abs(box_a["y"] - box_b["y"]) < 2

    # Both written: the vote, and until then no answer may be rated, regenerated or improved.
    expect(pair.get_by_test_id("vote-a")).to_be_visible()
    expect(pair.locator(".vote-btn")).to_have_text(
        ["A is better", "B is better", "Tie", "Both are bad"]
    )
    expect(a.locator(ANSWER)).to_have_attribute("data-status", "complete")
    expect(b.locator(ANSWER)).to_have_attribute("data-status", "complete")
    expect(a.locator(BODY)).to_contain_text("capital of France")
    for action in ("thumbs-up", "regenerate", "improve", "branch-label"):
        expect(pair.get_by_test_id(action)).to_have_count(0)
    expect(page.locator("#messages")).not_to_contain_text("scripted-")  # no model named yet
    expect(tab.composer).to_be_disabled()
    expect(tab.composer).to_have_attribute("placeholder", "Pick the better answer to continue")
    assert tab.no_horizontal_scroll()
    page.mouse.move(0, 0)
    tab.screenshot("web-side-by-side.png")

    conversation_id = tab.conversation_id()
    [comparison] = comparisons(web, conversation_id, "side_by_side")
    assert comparison["winner"] is None and comparison["a_model"] is None
    expect(a.locator(ANSWER)).to_have_attribute("data-id", comparison["a_id"])
    expect(b.locator(ANSWER)).to_have_attribute("data-id", comparison["b_id"])

    with page.expect_response(lambda r: r.url.endswith("/vote")):
        pair.get_by_test_id("vote-b").click()
    voted = comparisons(web, conversation_id, "side_by_side")[0]
    assert voted["winner"] == "b" and voted["counted"] is True
    assert {voted["a_model"], voted["b_model"]} == {SCRIPTED, f"{PARROT}@t=1"}
    readable = {SCRIPTED: SCRIPTED, f"{PARROT}@t=1": f"{PARROT}, temperature 1"}
    expect(a.get_by_test_id("pair-model")).to_have_text(f"Written by {readable[voted['a_model']]}")
    expect(b.get_by_test_id("pair-model")).to_have_text(f"Written by {readable[voted['b_model']]}")
    expect(pair.get_by_test_id("pair-result")).to_have_text(
        "You picked B. Your vote counts, thank you."
    )
    expect(tab.composer).to_be_enabled()
    tab.screenshot("web-side-by-side-revealed.png")

    # By itself, after a moment: one thread, showing B, with A a version away.
    expect(pair).to_have_count(0)
    answer = tab.answers().last
    expect(tab.answers()).to_have_count(1)
    expect(answer).to_have_attribute("data-id", voted["b_id"])
    expect(answer.get_by_test_id("branch-label")).to_have_text("2 / 2")
    expect(answer.locator(".msg-model")).to_have_text(voted["b_model"].split("@")[0])
    expect(answer.get_by_test_id("thumbs-up")).to_be_visible()
    expect(tab.composer).to_have_attribute("placeholder", "Message Lamplighter")
    bonus = page.get_by_test_id("feedback-bonus")
    expect(bonus).to_have_text("Feedback bonus: +500 tokens/day")
    expect(bonus).to_have_attribute("title", re.compile(r"^Useful feedback earns extra tokens"))

    tab.reload()
    expect(page.get_by_test_id("pair")).to_have_count(0)
    expect(tab.answers().last).to_have_attribute("data-id", voted["b_id"])
    expect(tab.answers().last.get_by_test_id("branch-label")).to_have_text("2 / 2")
    assert web.tree(conversation_id)["current_leaf_id"] == voted["b_id"]


def test_a_pair_not_voted_on_is_still_two_columns_after_a_reload(
    tab: Tab, web: Browserless
) -> None:
    page = tab.page
    ask_for_a_pair(tab, "Which river runs through Paris?")
    conversation_id = tab.conversation_id()
    [comparison] = comparisons(web, conversation_id, "side_by_side")
    stored = {m["id"]: m for m in web.tree(conversation_id)["messages"]}
    assert stored[comparison["a_id"]]["model"] is None  # anonymous until the vote
    assert stored[comparison["b_id"]]["model"] is None

    tab.reload()
    pair = page.get_by_test_id("pair")
    expect(pair.get_by_test_id("pair-column")).to_have_count(2)
    a, b = column(tab, "a"), column(tab, "b")
    expect(a.locator(ANSWER)).to_have_attribute("data-id", comparison["a_id"])
    expect(b.locator(ANSWER)).to_have_attribute("data-id", comparison["b_id"])
    expect(a.locator(BODY)).to_have_text(stored[comparison["a_id"]]["content"])
    expect(b.locator(BODY)).to_have_text(stored[comparison["b_id"]]["content"])
    expect(pair.get_by_test_id("vote-both_bad")).to_be_visible()
    expect(page.locator("#messages")).not_to_contain_text("scripted-")
    expect(tab.composer).to_be_disabled()

    # Both bad: the server shows A, and B is the other version.
    pair.get_by_test_id("vote-both_bad").click()
    expect(pair.get_by_test_id("pair-result")).to_contain_text("You found both bad.")
    pair.get_by_test_id("pair-continue").click()
    expect(pair).to_have_count(0)
    expect(tab.composer).to_be_focused()
    answer = tab.answers().last
    expect(answer).to_have_attribute("data-id", comparison["a_id"])
    expect(answer.get_by_test_id("branch-label")).to_have_text("1 / 2")
    with tab.branch_saved():
        answer.get_by_test_id("branch-next").click()
    expect(answer).to_have_attribute("data-id", comparison["b_id"])
    expect(page.get_by_test_id("pair")).to_have_count(0)  # voted: B alone, as a version

    # The conversation goes on under the answer shown.
    ask_for_a_pair(tab, "And which one runs through Rome?")
    expect(tab.questions()).to_have_count(2)
    second = [c for c in comparisons(web, conversation_id, "side_by_side") if c["winner"] is None]
    assert len(second) == 1
    question = web.tree(conversation_id)["messages"]
    asked = {m["id"]: m for m in question}[second[0]["question_id"]]
    assert asked["parent_id"] == comparison["b_id"]


def test_a_regeneration_asks_whether_it_is_better_and_the_server_keeps_the_verdict(
    tab: Tab, web: Browserless
) -> None:
    vote_and_continue(tab, "a")
    conversation_id = tab.conversation_id()
    answer = tab.answers().last
    answer.get_by_test_id("regenerate").click()
    answer = tab.answer_done()
    expect(answer.get_by_test_id("branch-label")).to_have_text("3 / 3")
    regenerated = answer.get_attribute("data-id")
    verdict = answer.get_by_test_id("verdict")
    expect(verdict).to_be_visible()
    expect(verdict).to_contain_text("Is this better than the previous answer?")
    expect(verdict.locator("button")).to_have_text(["Better", "Worse", "About the same", ""])
    tab.page.mouse.move(0, 0)
    tab.screenshot("web-verdict.png")
    with tab.page.expect_response(lambda r: r.url.endswith("/verdict")) as response:
        verdict.get_by_test_id("verdict-better").click()
    assert response.value.status == 200
    expect(answer.get_by_test_id("verdict-thanks")).to_have_text("Thanks, noted.")
    expect(answer.get_by_test_id("verdict")).to_have_count(0)
    expect(tab.composer).to_be_focused()  # the button pressed is gone: on to the next message

    [recorded] = comparisons(web, conversation_id, "regeneration")
    assert recorded["b_id"] == regenerated
    assert recorded["winner"] == "b" and recorded["counted"] is True

    # Asked again after the next one, and dismissed: nothing is recorded.
    answer.get_by_test_id("regenerate").click()
    answer = tab.answer_done()
    expect(answer.get_by_test_id("branch-label")).to_have_text("4 / 4")
    answer.get_by_test_id("verdict-dismiss").click()
    expect(answer.get_by_test_id("verdict")).to_have_count(0)
    expect(answer.get_by_test_id("improve")).to_be_focused()
    assert len(comparisons(web, conversation_id, "regeneration")) == 1


IMPROVED = "**Paris** is the capital of France.\n\n- on the Seine\n- since 987"


def test_an_improved_answer_is_shown_as_the_persons_own_version_and_survives_a_reload(
    tab: Tab, web: Browserless
) -> None:
    page = tab.page
    vote_and_continue(tab, "a")
    conversation_id = tab.conversation_id()
    original = tab.answers().last
    original_id = original.get_attribute("data-id")
    stored = {m["id"]: m for m in web.tree(conversation_id)["messages"]}
    assert original_id in stored

    original.get_by_test_id("improve").click()
    editor = page.get_by_test_id("improve-input")
    expect(editor).to_be_focused()
    expect(editor).to_have_value(stored[original_id]["content"])  # the Markdown, not the HTML
    expect(page.get_by_test_id("improve-save")).to_be_disabled()  # nothing changed yet
    editor.fill(IMPROVED)
    page.mouse.move(0, 0)
    tab.screenshot("web-improve.png")
    with tab.page.expect_response(lambda r: r.url.endswith("/correction")) as response:
        page.get_by_test_id("improve-save").click()
    assert response.value.status == 201
    improved_id = response.value.json()["message"]["id"]

    mine = tab.answers().last
    expect(mine).to_have_attribute("data-id", improved_id)
    expect(mine.get_by_test_id("author-label")).to_have_text("Your improved answer")
    expect(mine.locator(f"{BODY} strong")).to_have_text("Paris")
    expect(mine.locator(f"{BODY} li")).to_have_count(2)
    expect(mine.get_by_test_id("branch-label")).to_have_text("3 / 3")
    for action in ("thumbs-up", "thumbs-down", "regenerate", "improve"):
        expect(mine.get_by_test_id(action)).to_have_count(0)
    expect(mine.locator(".msg-model")).to_have_count(0)

    with tab.branch_saved():
        mine.get_by_test_id("branch-prev").click()
    expect(mine.get_by_test_id("author-label")).to_have_count(0)
    expect(mine.get_by_test_id("thumbs-up")).to_be_visible()
    expect(mine.get_by_test_id("branch-label")).to_have_text("2 / 3")
    with tab.branch_saved():
        mine.get_by_test_id("branch-next").click()
    expect(mine).to_have_attribute("data-id", improved_id)

    tab.reload()
    mine = tab.answers().last
    expect(mine).to_have_attribute("data-id", improved_id)
    expect(mine.get_by_test_id("author-label")).to_have_text("Your improved answer")
    expect(mine.get_by_test_id("branch-label")).to_have_text("3 / 3")
    expect(mine.get_by_test_id("thumbs-up")).to_have_count(0)
    tree = web.tree(conversation_id)
    assert {m["id"]: m for m in tree["messages"]}[improved_id]["author"] == "person"
    [correction] = comparisons(web, conversation_id, "correction")
    assert correction["a_id"] == original_id and correction["b_id"] == improved_id
    assert correction["winner"] == "b"


def test_on_a_phone_the_two_answers_stack_and_a_leaked_name_voids_the_vote(
    tabs: Tabs, person: Person
) -> None:
    phone = tabs.open(viewport=PHONE)
    phone.login(person)
    pair = ask_for_a_pair(phone, "Who are you? Show me `print('hello, world')` please.")
    a, b = column(phone, "a"), column(phone, "b")
    box_a, box_b = a.bounding_box(), b.bounding_box()
    assert box_a and box_b
    assert box_b["y"] >= box_a["y"] + box_a["height"]  # stacked, A above B
    assert abs(box_a["x"] - box_b["x"]) < 1 and box_a["width"] > 300
    for vote in pair.locator(".vote-btn").all():
        box = vote.bounding_box()
        assert box and box["x"] >= 0 and box["x"] + box["width"] <= PHONE["width"]
    assert phone.no_horizontal_scroll()
    phone.page.mouse.move(0, 0)
    phone.screenshot("web-side-by-side-phone.png")

    # The parrot named a model nobody asked about: the vote would go to the name, not count.
    pair.get_by_test_id("vote-a").click()
    expect(pair.get_by_test_id("pair-result")).to_have_text(
        "You picked A. This vote won't count: an answer named the model that wrote it."
    )
    assert phone.no_horizontal_scroll()
    pair.get_by_test_id("pair-continue").click()
    expect(pair).to_have_count(0)
    expect(phone.answers()).to_have_count(1)
    assert phone.no_horizontal_scroll()
    # The focus, on Continue, goes to the chat's title (not the message box: no keyboard pops up).
    expect(phone.page.locator("#topbar-title")).to_be_focused()


def test_on_a_phone_the_vote_stays_in_reach_while_answer_a_is_read(
    tabs: Tabs, person: Person
) -> None:
    """390 x 844: the two answers are stacked and long, and the vote sat under answer B, screens
    away from A, with nothing to say which answer was being read."""
    phone = tabs.open(viewport={"width": 390, "height": 844})
    phone.login(person)
    tall = "line\n" * 60  # one word, many lines: written at once, taller than the screen
    pair = ask_for_a_pair(phone, tall)
    a = column(phone, "a")
    a.locator(BODY).scroll_into_view_if_needed()  # reading the top of answer A
    # Which model answers in A is drawn for each pair: its first words, whichever it is.
    a.get_by_text(re.compile(r"^(You said|Parrot here):")).scroll_into_view_if_needed()
    box_a = a.bounding_box()
    assert box_a and box_a["height"] > 844  # A alone is taller than the screen
    expect(pair.get_by_test_id("vote-b")).to_be_in_viewport(ratio=1)
    expect(pair.get_by_test_id("vote-a")).to_be_in_viewport(ratio=1)
    expect(pair.get_by_text("Which answer is better, A or B?")).to_be_in_viewport()
    expect(a.locator(".pair-label")).to_be_in_viewport()  # says "Answer A" while it is read
    expect(a.locator(".pair-label")).to_contain_text("Answer A")
    down = phone.page.locator("#scroll-down")
    expect(down).to_be_visible()  # B and its end are below, and ↓ covers none of the votes
    for vote in pair.locator(".vote-btn").all():
        box, arrow = vote.bounding_box(), down.bounding_box()
        assert box and arrow
        apart_x = arrow["x"] >= box["x"] + box["width"] or box["x"] >= arrow["x"] + arrow["width"]
        apart_y = arrow["y"] >= box["y"] + box["height"] or box["y"] >= arrow["y"] + arrow["height"]
        assert apart_x or apart_y, (vote.text_content(), box, arrow)
    assert phone.no_horizontal_scroll()
    phone.screenshot("web-side-by-side-phone-vote.png")
    pair.get_by_test_id("vote-a").click()
    expect(pair.get_by_test_id("pair-result")).to_contain_text("You picked A.")
