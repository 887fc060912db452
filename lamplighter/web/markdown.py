"""Model answers, from Markdown to HTML that is safe to put in the page.

Model output is untrusted. Two independent layers keep it harmless: markdown-it renders with raw
HTML disabled (so ``<script>`` in an answer becomes visible text) and refuses ``javascript:``-style
links; then ammonia (nh3) keeps only an allow-list of tags and attributes, and of link schemes.
Images are not rendered at all: an image is shown as a link to it, named by its alt text, so an
answer can never make the browser load anything.
The page's Content-Security-Policy is a third layer, and the page only ever puts this function's
output into ``innerHTML``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import nh3
from markdown_it import MarkdownIt
from markdown_it.common.utils import escapeHtml
from markdown_it.token import Token
from markdown_it.utils import EnvType, OptionsDict

# linkify (linkify-it-py) makes bare addresses links; the sanitizer vets them like any other.
_markdown = MarkdownIt("commonmark", {"html": False, "linkify": True, "breaks": True}).enable(
    ["table", "strikethrough", "linkify"]
)


def _image_as_link(
    renderer: Any, tokens: Sequence[Token], idx: int, options: OptionsDict, env: EnvType
) -> str:
    """An image would be a request to wherever the model points: shown as a link instead,
    named by its alt text (its address when it has none), without the image's "!"."""
    token = tokens[idx]
    alt = renderer.renderInlineAsText(token.children or [], options, env)
    src = str(token.attrGet("src") or "")
    title = token.attrGet("title")
    titled = f' title="{escapeHtml(str(title))}"' if title else ""
    return f'<a href="{escapeHtml(src)}"{titled}>{escapeHtml(alt or src)}</a>'


def _aligned_cell(
    renderer: Any, tokens: Sequence[Token], idx: int, options: OptionsDict, env: EnvType
) -> str:
    """A table cell's alignment as a class (align-left, -center, -right), not a style
    attribute: the sanitizer lets no style through."""
    token = tokens[idx]
    style = str(token.attrGet("style") or "")
    if style.startswith("text-align:"):
        token.attrs.pop("style")
        token.attrSet("class", "align-" + style.removeprefix("text-align:"))
    return str(renderer.renderToken(tokens, idx, options, env))


_markdown.add_render_rule("image", _image_as_link)
_markdown.add_render_rule("th_open", _aligned_cell)
_markdown.add_render_rule("td_open", _aligned_cell)

_TAGS = {
    "p", "br", "hr", "strong", "em", "del", "s", "code", "pre", "blockquote",
    "ul", "ol", "li", "h1", "h2", "h3", "h4", "h5", "h6", "a",
    "table", "thead", "tbody", "tr", "th", "td",
}  # fmt: skip
_ATTRIBUTES = {
    "a": {"href", "title"},
    "ol": {"start"},
    "code": {"class"},  # language-xyz, from a fenced block's info string
}
_ALIGNED = {"align-left", "align-center", "align-right"}
_CLASSES = {"th": _ALIGNED, "td": _ALIGNED}


def render(text: str) -> str:
    """Sanitized HTML for a (possibly partial) Markdown answer."""
    return nh3.clean(
        _markdown.render(text),
        tags=_TAGS,
        attributes=_ATTRIBUTES,
        allowed_classes=_CLASSES,
        url_schemes={"http", "https", "mailto"},
        link_rel="noopener noreferrer nofollow",
        set_tag_attribute_values={"a": {"target": "_blank"}},
        strip_comments=True,
    )
