"""While one chat's answer is being written, in a real Chromium against a real server: Stop and
Escape end that chat's answer only, and only from that chat; another chat sends if the plan
writes more than one answer at a time, and otherwise says where the answer is being written
(with a way to go there) instead of stopping it out of sight; a side-by-side waiting for its vote
still asks for it; and a refusal because another tab's answer takes the plan's only place reads
in plain words, without a countdown that would mean nothing.

The answer being written is from a scripted model that writes its first word and then waits
until the test lets it go on, so nothing here waits on a clock.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from playwright.sync_api import Locator, Page, Route, expect

from lamplighter.conversation.threading import Turn
from lamplighter.engines.base import Chunk, PreparedRequest
from lamplighter.engines.scripted import ScriptedBackend
from lamplighter.settings import Settings
from tests.conftest import ROOMY_PLAN, SCRIPTED, LiveServer, make_settings
from tests.web.browser import BODY, Tab, Tabs, eventually
from tests.web.conftest import Browserless, Person, new_person
from tests.web.test_connection_browser import sidebar_link

expect.set_options(timeout=15_000)

HELD = "scripted-held"
PARROT = "scripted-parrot"
CHAT = "**/api/chat"
# Plans without the parrot get no side-by-sides (the flywheel pairs the scripted models only
# for plans that have both); "many" writes any number of answers at a time, "single" one.
CONFIG = (
    ROOMY_PLAN
    + f"""
[plans.many]
priority = 0
models = ["{HELD}", "{SCRIPTED}"]
requests_per_minute = 100000
concurrent_streams = 1000
cache_ttl_s = 0

[plans.single]
priority = 0
models = ["{HELD}", "{SCRIPTED}"]
requests_per_minute = 100000
concurrent_streams = 1
cache_ttl_s = 0

[flywheel]
side_by_side_rate = 1.0
side_by_side_variants = ["{SCRIPTED}", "{PARROT}@t=1"]
"""
)


def held_reply(turns: tuple[Turn, ...]) -> str:
    return f"Held: {turns[-1].content} (the rest of it)."


class Held(ScriptedBackend):
    """A scripted model that writes its first word, then nothing (an empty piece every 50 ms,
    as a model thinking would, at which a stopped answer ends) until ``go`` is set."""

    def __init__(self) -> None:
        super().__init__(HELD, held_reply)
        self.go = asyncio.Event()

    async def generate(self, prepared: PreparedRequest) -> AsyncIterator[Chunk]:
        written = 0
        async for chunk in super().generate(prepared):
            yield chunk
            written += 1
            while written == 1 and not self.go.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.go.wait(), 0.05)
                yield Chunk("", tokens=0)


@pytest.fixture(scope="module")
def held() -> Held:
    return Held()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, held: Held) -> Iterator[LiveServer]:
    """This module's own server (it replaces the session's), with the held model."""

    async def backends(_: Settings) -> list[Any]:
        return [held, ScriptedBackend(SCRIPTED), ScriptedBackend(PARROT)]

    data_dir = tmp_path_factory.mktemp("other-chats")
    config = data_dir / "lamplighter.toml"
    config.write_text(CONFIG)
    with LiveServer(make_settings(data_dir, config=config), backends) as live:
        yield live


@pytest.fixture(autouse=True)
def _held_until_let_go(server: LiveServer, held: Held) -> Iterator[None]:
    """Each test starts with the held model waiting; after it, anything still waiting ends."""
    held.go = asyncio.Event()
    yield
    server.loop.call_soon_threadsafe(held.go.set)


def tab_on(tabs: Tabs, person: Person) -> Tab:
    opened = tabs.open()
    opened.login(person)
    return opened


def person_on(server: LiveServer, plan: str) -> Person:
    return new_person(server, plan=plan)


def writing(tab: Tab, question: str) -> tuple[str, Locator]:
    """Ask the held model in a new chat: its answer stays in progress. Returns the chat's id
    and the answer."""
    tab.page.get_by_test_id("new-chat").click()
    tab.pick_model(HELD)
    tab.send(question)
    answer = tab.answers().last
    expect(answer.locator(BODY)).to_have_text("Held:")
    expect(answer).to_have_attribute("data-status", "in_progress")
    return tab.conversation_id(), answer


def chat_requests(page: Page) -> list[str]:
    """Every /api/chat request the page makes from now on."""
    sent: list[str] = []
    page.on("request", lambda r: sent.append(r.url) if r.url.endswith("/api/chat") else None)
    return sent


def stored_status(web: Browserless, conversation_id: str) -> list[str]:
    return [m["status"] for m in web.tree(conversation_id)["messages"] if m["role"] == "assistant"]


def test_another_chat_sends_while_an_answer_is_written_and_escape_there_stops_nothing(
    tabs: Tabs, server: LiveServer
) -> None:
    person = person_on(server, "many")
    tab = tab_on(tabs, person)
    page = tab.page
    web = Browserless(server.base_url)
    web.login(person)
    first, answer = writing(tab, "the long one")
    stop, send = page.get_by_test_id("stop"), page.get_by_test_id("send")
    expect(stop).to_be_visible()

    # A new chat: its own Send, not the other chat's Stop; Escape there stops nothing.
    page.get_by_test_id("new-chat").click()
    expect(stop).to_be_hidden()
    expect(send).to_be_visible()
    tab.pick_model(SCRIPTED)
    tab.composer.fill("a quick one meanwhile")
    expect(send).to_be_enabled()
    tab.composer.press("Escape")
    expect(page.get_by_test_id("busy-elsewhere")).to_be_hidden()
    tab.composer.press("Enter")
    quick = tab.answer_done()
    expect(quick.locator(BODY)).to_have_text("You said: a quick one meanwhile")
    assert stored_status(web, first) == ["in_progress"]  # Escape did not end it

    # Back in the first chat, its answer is still being written, and Stop is there.
    sidebar_link(page, first).click()
    expect(answer).to_have_attribute("data-status", "in_progress")
    expect(stop).to_be_visible()
    stop.click()
    expect(answer).to_have_attribute("data-status", "cut")
    expect(answer.get_by_test_id("message-note")).to_have_text("Stopped")
    web.close()


def test_when_the_plan_writes_one_answer_at_a_time_another_chat_says_where_it_is_written(
    tabs: Tabs, server: LiveServer, held: Held
) -> None:
    person = person_on(server, "single")
    tab = tab_on(tabs, person)
    page = tab.page
    web = Browserless(server.base_url)
    web.login(person)
    first, answer = writing(tab, "the only one at a time")
    stop, send = page.get_by_test_id("stop"), page.get_by_test_id("send")

    page.get_by_test_id("new-chat").click()
    tab.composer.fill("can this go now?")
    busy = page.get_by_test_id("busy-elsewhere")
    expect(busy).to_be_visible()
    expect(busy).to_contain_text("An answer is still being written in “the only one at a time”.")
    expect(stop).to_be_hidden()  # the other chat's Stop is not offered here
    expect(send).to_be_visible()
    expect(send).to_be_disabled()
    sent = chat_requests(page)
    tab.composer.press("Enter")
    tab.composer.press("Escape")
    expect(tab.composer).to_have_value("can this go now?")
    tab.screenshot("busy-elsewhere.png")

    # Going there: the answer is still being written, and can be stopped there.
    busy.get_by_test_id("busy-elsewhere-go").click()
    expect(page).to_have_url(tab.url(f"/c/{first}"))
    expect(answer).to_have_attribute("data-status", "in_progress")
    expect(stop).to_be_focused()
    assert sent == [], "a message was sent, or Escape stopped the answer, from another chat"
    assert stored_status(web, first) == ["in_progress"]
    page.keyboard.press("Escape")
    expect(answer.get_by_test_id("message-note")).to_have_text("Stopped")
    expect(stop).to_be_hidden()

    # Once the server has ended it too, its place is free: the new chat's draft can be sent.
    server.loop.call_soon_threadsafe(held.go.set)
    eventually(lambda: stored_status(web, first) != ["in_progress"], what="the answer to end")
    page.get_by_test_id("new-chat").click()
    expect(tab.composer).to_have_value("can this go now?")
    expect(busy).to_be_hidden()
    tab.pick_model(SCRIPTED)
    expect(send).to_be_enabled()
    tab.composer.press("Enter")
    expect(tab.answer_done().locator(BODY)).to_have_text("You said: can this go now?")
    web.close()


def test_a_refusal_for_an_answer_written_in_another_tab_has_no_countdown(
    tabs: Tabs, server: LiveServer
) -> None:
    tabs.expect_console_error(r"Failed to load resource: .* 429")
    person = person_on(server, "single")
    elsewhere = tab_on(tabs, person)
    writing(elsewhere, "written in another tab")

    tab = tab_on(tabs, person)
    page = tab.page
    tab.pick_model(SCRIPTED)
    tab.send("and one here")
    banner = page.get_by_test_id("error-banner")
    # Not "Too many concurrent requests on plan 'single': ... You can send again in 1 s."
    expect(banner).to_contain_text(
        "Another answer of yours is still being written (in another tab or app), and your plan"
        " writes 1 answer at a time. Send again once it has finished."
    )
    expect(banner.get_by_test_id("wait")).to_have_count(0)
    detail = banner.get_by_test_id("error-detail")
    expect(detail).to_contain_text("Too many concurrent requests on plan 'single'")
    expect(tab.composer).to_have_value("and one here")
    expect(page.get_by_test_id("send")).to_be_enabled()  # nothing to wait out on this page


def test_a_side_by_side_waiting_for_its_vote_asks_for_it_while_another_chat_writes(
    tabs: Tabs, server: LiveServer
) -> None:
    tab = tab_on(tabs, new_person(server))  # roomy: every new question gets two answers
    page = tab.page
    tab.pick_model(SCRIPTED)
    tab.send("Which answer is better?")
    pair = page.get_by_test_id("pair")
    expect(pair.get_by_test_id("vote-a")).to_be_visible()
    voting = tab.conversation_id()

    # Another chat's message waits for the server (here, for ever): its answer is on its way.
    held: list[Route] = []

    def hold(route: Route) -> None:
        held.append(route)

    page.route(CHAT, hold)
    page.get_by_test_id("new-chat").click()
    with page.expect_request(CHAT):
        tab.send("a question in another chat")
    expect(page.get_by_test_id("stop")).to_be_visible()

    sidebar_link(page, voting).click()
    expect(pair.get_by_test_id("vote-a")).to_be_visible()
    expect(tab.composer).to_be_disabled()
    expect(tab.composer).to_have_attribute("placeholder", "Pick the better answer to continue")
    expect(page.get_by_test_id("stop")).to_be_hidden()
    pair.get_by_test_id("vote-b").click()
    expect(pair.get_by_test_id("pair-result")).to_contain_text("You picked B.")
    expect(tab.composer).to_be_enabled()
    for _ in range(100):  # the route's handler runs while Playwright is being called
        if held:
            break
        page.wait_for_timeout(20)
    held[0].continue_()
    page.unroute(CHAT)
