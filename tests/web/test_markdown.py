"""Answers render Markdown, and nothing a model writes can run script or load anything."""

from __future__ import annotations

from html.parser import HTMLParser

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lamplighter.web.markdown import render

ALLOWED = {
    "p", "br", "hr", "strong", "em", "del", "s", "code", "pre", "blockquote", "ul", "ol", "li",
    "h1", "h2", "h3", "h4", "h5", "h6", "a", "table", "thead", "tbody", "tr", "th", "td", "div",
    # MathML's presentation elements, for TeX.
    "math", "semantics", "annotation", "mrow", "mi", "mn", "mo", "ms", "mtext", "mspace",
    "msub", "msup", "msubsup", "munder", "mover", "munderover", "mfrac", "msqrt", "mroot",
    "mstyle", "mpadded", "mphantom", "menclose", "mtable", "mtr", "mtd", "merror",
}  # fmt: skip


class Elements(HTMLParser):
    """The real elements and attributes of an HTML fragment (escaped text is just text)."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.found: list[tuple[str, dict[str, str | None]]] = []
        self.feed(html)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.found.append((tag, dict(attrs)))


def test_markdown_renders_the_usual_structures() -> None:
    html = render(
        "# Title\n\nSome **bold** and `code`.\n\n- one\n- two\n\n1. first\n\n"
        "| a | b |\n|---|---|\n| 1 | 2 |\n\n```python\nprint('hi')\n```\n\n"
        "[docs](https://example.org/docs)"
    )
    for tag in ("<h1>", "<strong>", "<code>", "<ul>", "<ol>", "<table>", "<th>", "<td>"):
        assert tag in html
    assert '<pre><code class="language-python">' in html
    assert 'href="https://example.org/docs"' in html
    assert 'rel="noopener noreferrer nofollow"' in html


def test_struck_text_images_and_aligned_columns_keep_their_meaning() -> None:
    """~~wrong~~ stays struck through; an image is a link named by its alt text, with no
    stray "!" and nothing loaded; a table's column alignment survives as a class."""
    assert render("~~wrong~~ right") == "<p><s>wrong</s> right</p>\n"
    image = render("see ![a cat](https://example.org/cat.png) here")
    assert "!" not in image and "<img" not in image
    assert Elements(image).found[-1] == (
        "a",
        {
            "href": "https://example.org/cat.png",
            "target": "_blank",
            "rel": "noopener noreferrer nofollow",
        },
    )
    assert ">a cat</a> here" in image
    assert ">https://example.org/x.png</a>" in render("![](https://example.org/x.png)")
    table = Elements(render("| a | b | c | d |\n|:-|:-:|-:|-|\n| 1 | 2 | 3 | 4 |"))
    cells = [attrs for tag, attrs in table.found if tag in {"th", "td"}]
    assert [c.get("class") for c in cells] == [
        "align-left",
        "align-center",
        "align-right",
        None,
    ] * 2
    assert not any("style" in c for c in cells)


@pytest.mark.parametrize(
    "payload",
    [
        "<script>alert(1)</script>",
        "<img src=x onerror=alert(1)>",
        '<a href="javascript:alert(1)">x</a>',
        "[x](javascript:alert(1))",
        "[x](JaVaScRiPt:alert(1))",
        "[x](data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==)",
        "![x](https://evil.example/track.png)",
        '<iframe src="https://evil.example"></iframe>',
        '<svg onload="alert(1)">',
        "<style>body{display:none}</style>",
        '<div style="background:url(https://evil.example)">x</div>',
        "[x](vbscript:msgbox(1))",
        "<form action=https://evil.example><input></form>",
        '<td class="align-left" style="color:red">x</td>',
        "| a |\n|:-|\n| <span class=x>1</span> |",
        "$\\href{javascript:alert(1)}{x}$",
        "$$<svg onload=alert(1)>$$",
        "\\(\\style{background:url(https://evil.example)}{x}\\)",
        "$x$<math><maction actiontype=statusline href=javascript:alert(1)>x</maction></math>",
        "\\[\\text{<img src=x onerror=alert(1)>}\\]",
    ],
)
def test_hostile_output_is_inert(payload: str) -> None:
    for tag, attrs in Elements(render(payload)).found:
        assert tag in ALLOWED
        assert not any(name.startswith("on") or name in {"style", "src"} for name in attrs)
        assert attrs.get("class") in {None, "align-left", "align-center", "align-right", "math"}
        href = (attrs.get("href") or "https:").lower()
        assert href.startswith(("https:", "http:", "mailto:")), href


@given(st.text(max_size=400))
def test_no_text_produces_tags_outside_the_allow_list(text: str) -> None:
    assert {tag for tag, _ in Elements(render(text)).found} <= ALLOWED


def test_a_partial_answer_renders_too() -> None:
    """While streaming, the answer so far is rendered: an open code fence is still code."""
    assert "<pre><code" in render("Here:\n\n```js\nconsole.log(")


def test_bare_addresses_become_links_that_the_sanitizer_still_vets() -> None:
    html = render(
        "Docs: https://example.org/guide?x=1, or www.example.net; write to ada@example.org"
    )
    links = [attrs for tag, attrs in Elements(html).found if tag == "a"]
    assert [a["href"] for a in links] == [
        "https://example.org/guide?x=1",
        "http://www.example.net",
        "mailto:ada@example.org",
    ]
    assert all(a["rel"] == "noopener noreferrer nofollow" for a in links)
    # What the sanitizer does not allow stays inert: no href for another scheme, and the
    # script-running ones are never links at all.
    ftp = Elements(render("ftp://files.example.org/x")).found
    assert [t for t, _ in ftp] == ["p", "a"] and "href" not in ftp[1][1]
    scripts = (
        "javascript:alert(1)",
        "javascript://example.org/%0Aalert(1)",
        "[x](javascript:alert(1))",
        "vbscript:msgbox",
        "data:text/html,<b>hi</b>",
    )
    for text in scripts:
        assert not any(
            (attrs.get("href") or "").lower().startswith(("javascript", "vbscript", "data"))
            for _, attrs in Elements(render(text)).found
        ), text


def test_tex_becomes_mathml_and_money_stays_text() -> None:
    """Models write TeX between $...$, $$...$$, \\(...\\) and \\[...\\]: each becomes MathML the
    browser typesets, inline or as a block; dollar amounts and code stay as they are."""
    inline = Elements(render("The area is $\\pi r^2$, or \\(\\pi r^2\\)."))
    tags = [tag for tag, _ in inline.found]
    assert tags.count("math") == 2 and tags.count("msup") == 2 and "div" not in tags
    assert all(a["display"] == "inline" for t, a in inline.found if t == "math")
    for block in ("$$\\frac{a}{b}$$", "\\[\\frac{a}{b}\\]"):
        found = Elements(render(f"So:\n\n{block}\n\nDone.")).found
        assert ("div", {"class": "math"}) in found
        assert [a["display"] for t, a in found if t == "math"] == ["block"]
        assert "mfrac" in [t for t, _ in found]
    assert render("It costs $5 and $10.") == "<p>It costs $5 and $10.</p>\n"
    assert "<math" not in render("`$x$` and\n\n```\n$$y$$\n```")
    # TeX it cannot read stays readable, as code.
    assert "<code>x_{</code>" in render("$x_{$")
