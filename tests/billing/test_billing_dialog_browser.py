"""The web chat's "Plan & billing" after the money stops or the plan moves: an unpaid subscriber
is told the plan they are really on and can cancel, and the sidebar's limits follow a plan
change made in the dialog."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from datetime import timedelta

import pytest
from playwright.sync_api import Browser, expect

from lamplighter.billing.subscriptions import add_period
from lamplighter.store.models import utcnow
from tests.billing.conftest import user_id_of, webhook
from tests.billing.factories import checkout_completed, signed, subscription_event
from tests.billing.fake_stripe import FakeStripe
from tests.conftest import LiveServer, ThreadedServer
from tests.web.browser import Tab, Tabs
from tests.web.conftest import Person, browser, new_person

__all__ = ["browser"]  # the fixture, shared with the web chat's tests

expect.set_options(timeout=15_000)


def subscribe(live: LiveServer, person: Person, plan: str, *, status: str = "active") -> str:
    """Subscribe ``person`` to ``plan`` through Stripe's webhooks, as after a paid Checkout,
    then let Stripe report the subscription's ``status``; the subscription's id."""
    subject, ref = f"user:{user_id_of(live, person.email)}", f"sub_{uuid.uuid4().hex[:12]}"
    now = utcnow()
    events = [
        checkout_completed(subject=subject, plan=plan, subscription=ref, created=now),
        subscription_event(
            "created", subject=subject, plan=plan, subscription=ref, created=now,
            period_end=add_period(now, "month"),
        ),
    ]  # fmt: skip
    if status != "active":
        events.append(
            subscription_event(
                "updated", subject=subject, plan=plan, subscription=ref,
                created=now + timedelta(seconds=1), period_end=add_period(now, "month"),
                status=status,
            )
        )  # fmt: skip
    for event in events:
        assert webhook(live, *signed(event)).status_code == 200
    return ref


@pytest.fixture
def tabs(browser: Browser, live: LiveServer) -> Iterator[Tabs]:
    opened = Tabs(browser, live.base_url)
    try:
        yield opened
    finally:
        opened.close()
    assert not opened.unexpected(), opened.unexpected()


def logged_in(tabs: Tabs, person: Person) -> Tab:
    tab = tabs.open()
    tab.login(person)
    return tab


def test_an_unpaid_subscriber_is_told_their_own_plan_and_can_cancel(
    tabs: Tabs, live: LiveServer, stripe_api: tuple[FakeStripe, ThreadedServer]
) -> None:
    person = new_person(live, plan="bronze")  # their own plan, under the subscription
    ref = subscribe(live, person, "gold", status="unpaid")
    page = logged_in(tabs, person).page
    expect(page.get_by_test_id("plan")).to_have_text("bronze")

    page.get_by_test_id("billing-open").click()
    dialog = page.get_by_test_id("billing")
    expect(dialog.get_by_test_id("billing-plan")).to_have_text("Your plan: bronze")
    status = dialog.get_by_test_id("billing-status")
    expect(status).to_have_text("Subscription: gold, unpaid: you are on bronze until it is paid.")
    expect(status).not_to_contain_text("free")

    dialog.get_by_role("button", name="Cancel the subscription now").click()
    expect(dialog.get_by_test_id("billing-status")).to_have_count(0)
    expect(dialog.get_by_test_id("billing-plan")).to_have_text("Your plan: bronze")
    stripe = stripe_api[0]
    assert ("DELETE", f"/v1/subscriptions/{ref}") in [(m, p) for m, p, _ in stripe.requests]


def test_after_a_switch_in_the_dialog_the_sidebar_shows_the_new_plans_limits(
    tabs: Tabs, live: LiveServer
) -> None:
    person = new_person(live, plan="free")
    subscribe(live, person, "silver")
    page = logged_in(tabs, person).page
    limits = page.get_by_test_id("limits")
    expect(page.get_by_test_id("plan")).to_have_text("silver")
    expect(limits).to_contain_text("of 60 requests left this minute")

    page.get_by_test_id("billing-open").click()
    dialog = page.get_by_test_id("billing")
    dialog.get_by_role("button", name="Switch to gold").click()
    expect(dialog.get_by_test_id("billing-plan")).to_have_text("Your plan: gold")
    expect(page.get_by_test_id("plan")).to_have_text("gold")
    expect(limits).to_contain_text("of 300 requests left this minute")


def test_an_unpaid_subscriber_pays_in_stripes_portal_and_comes_back_to_the_dialog(
    tabs: Tabs, live: LiveServer, stripe_api: tuple[FakeStripe, ThreadedServer]
) -> None:
    fake, _ = stripe_api
    person = new_person(live, plan="bronze")
    subscribe(live, person, "gold", status="unpaid")
    page = logged_in(tabs, person).page
    # Stripe's portal is out of reach here: the browser is answered in its place.
    page.route("https://billing.stripe.test/**", lambda route: route.fulfill(body="Stripe"))
    page.get_by_test_id("billing-open").click()
    pay = page.get_by_test_id("billing").get_by_test_id("billing-portal")
    expect(pay).to_have_text("Pay now")
    pay.click()
    expect(page).to_have_url(re.compile(r"^https://billing\.stripe\.test/p/session/bps_\d+$"))
    assert fake.sent("/v1/billing_portal/sessions")[-1]["customer"] == "cus_test"
    page.goto(live.base_url + "/?billing=portal")  # where Stripe sends them back
    expect(page.get_by_test_id("billing-notice")).to_contain_text("Back from Stripe")
