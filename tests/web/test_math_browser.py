"""TeX in an answer is typeset by the browser from the server's MathML: what a person reading a
maths answer sees, in a real Chromium."""

from __future__ import annotations

from playwright.sync_api import expect

from tests.web.browser import BODY, Tab


def test_an_answer_with_tex_shows_typeset_maths(tab: Tab) -> None:
    answer = tab.echo("Euler: $e^{i\\pi} + 1 = 0$ and\n\n$$\\sum_{k=1}^{n} k = \\frac{n(n+1)}{2}$$")
    body = answer.locator(BODY)
    inline, block = body.locator("math[display=inline]"), body.locator(".math math")
    expect(inline).to_have_count(1)
    expect(block).to_have_count(1)
    # Typeset, not raw TeX: the fraction is drawn over two lines, the exponent raised.
    fraction = block.locator("mfrac").bounding_box()
    numerator = block.locator("mfrac > mrow").first.bounding_box()
    assert fraction is not None and numerator is not None
    assert fraction["height"] > numerator["height"] * 1.5
    base, power = inline.locator("msup > *").first, inline.locator("msup > *").nth(1)
    base_box, power_box = base.bounding_box(), power.bounding_box()
    assert base_box is not None and power_box is not None
    assert power_box["y"] < base_box["y"]
    expect(body).not_to_contain_text("\\frac")
    expect(body).to_contain_text("Euler:")
