"""The web chat's "Plan & billing": a person sees their plan, upgrades through Checkout (Stripe's
page is stood in for, as there is no network), comes back on the new plan, and switches plan."""

from __future__ import annotations

import re
import uuid

from playwright.sync_api import Browser, expect

from lamplighter.billing.subscriptions import add_period
from lamplighter.store.models import utcnow
from tests.billing.conftest import user_id_of, webhook
from tests.billing.factories import checkout_completed, signed, subscription_event
from tests.conftest import LiveServer
from tests.web.browser import Tabs
from tests.web.conftest import browser, new_person

__all__ = ["browser"]  # the fixture, shared with the web chat's tests


def test_a_person_upgrades_from_the_chat_and_switches_plan(
    browser: Browser, live: LiveServer
) -> None:
    person = new_person(live, plan="free")
    tabs = Tabs(browser, live.base_url)
    try:
        tab = tabs.open()
        tab.page.route(
            "https://checkout.stripe.test/**",
            lambda route: route.fulfill(
                body="Stripe Checkout (stand-in)", content_type="text/plain"
            ),
        )
        tab.login(person)
        page = tab.page
        page.get_by_test_id("billing-open").click()
        dialog = page.get_by_test_id("billing")
        expect(dialog.get_by_test_id("billing-plan")).to_have_text("Your plan: free")
        expect(dialog.get_by_test_id("billing-offer")).to_have_count(3)
        expect(dialog).to_contain_text("$20.00 a month")
        dialog.get_by_role("button", name="Upgrade to silver").click()
        expect(page).to_have_url(re.compile(r"^https://checkout\.stripe\.test/c/pay/cs_test_"))

        # Stripe tells the server the payment went through, and sends the person back.
        subject, ref = f"user:{user_id_of(live, person.email)}", f"sub_{uuid.uuid4().hex[:12]}"
        now = utcnow()
        for event in (
            checkout_completed(subject=subject, plan="silver", subscription=ref, created=now),
            subscription_event(
                "created", subject=subject, plan="silver", subscription=ref, created=now,
                period_end=add_period(now, "month"),
            ),
        ):  # fmt: skip
            assert webhook(live, *signed(event)).status_code == 200
        tab.goto("/?billing=success")
        expect(dialog.get_by_test_id("billing-notice")).to_contain_text("Thank you")
        expect(dialog.get_by_test_id("billing-plan")).to_have_text("Your plan: silver")
        expect(dialog.get_by_test_id("billing-status")).to_contain_text("renews on")
        dialog.get_by_role("button", name="Switch to gold").click()
        expect(dialog.get_by_test_id("billing-plan")).to_have_text("Your plan: gold")
        tab.screenshot("billing-dialog.png")
        dialog.get_by_test_id("billing-close").click()
        tab.reload()
        expect(page.get_by_test_id("plan")).to_have_text("gold")
    finally:
        tabs.close()
    assert not tabs.unexpected(), tabs.unexpected()
