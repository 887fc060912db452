"""Details of the chat page that a browser audit found wanting, in a real Chromium against the
real server: right-to-left text reads right to left.
"""

from __future__ import annotations

import pytest
from playwright.sync_api import Locator, expect

from tests.conftest import SCRIPTED
from tests.web.browser import BODY, Tab, Tabs
from tests.web.conftest import Person

expect.set_options(timeout=15_000)


@pytest.fixture
def tab(tabs: Tabs, person: Person) -> Tab:
    """A desktop tab, logged in as ``person``, talking to scripted-echo."""
    opened = tabs.open()
    opened.login(person)
    opened.pick_model(SCRIPTED)
    return opened


def direction(element: Locator) -> str:
    shown: str = element.evaluate("el => getComputedStyle(el).direction")
    return shown


# Right-to-left text -----------------------------------------------------------------------------

HEBREW = "שלום, מה שלומך היום?"


def test_right_to_left_text_reads_right_to_left_where_people_write_and_read_it(tab: Tab) -> None:
    tab.composer.fill(HEBREW)
    assert direction(tab.composer) == "rtl"
    answer = tab.echo(HEBREW)
    question = tab.questions().last
    expect(question.locator(BODY)).to_have_text(HEBREW)
    assert direction(question.locator(BODY)) == "rtl"
    assert direction(answer.locator(BODY)) == "ltr"  # "You said: …" starts in English
    expect(tab.sidebar_titles().first).to_have_text(HEBREW)
    assert direction(tab.sidebar_titles().first) == "rtl"
    title = tab.page.locator("#topbar-title")
    expect(title).to_have_text(HEBREW)
    assert direction(title) == "rtl"
    tab.composer.fill("And English again")
    assert direction(tab.composer) == "ltr"
