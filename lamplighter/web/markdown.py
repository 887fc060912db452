"""Model answers, from Markdown to HTML that is safe to put in the page.

Model output is untrusted. Two independent layers keep it harmless: markdown-it renders with raw
HTML disabled (so ``<script>`` in an answer becomes visible text) and refuses ``javascript:``-style
links; then ammonia (nh3) keeps only an allow-list of tags and attributes, and of link schemes.
Images are not rendered at all: an answer can never make the browser load anything.
The page's Content-Security-Policy is a third layer, and the page only ever puts this function's
output into ``innerHTML``.
"""

from __future__ import annotations

import nh3
from markdown_it import MarkdownIt

_markdown = (
    MarkdownIt("commonmark", {"html": False, "linkify": False, "breaks": True})
    .enable(["table", "strikethrough"])
    .disable("image")
)  # an image would be a request to wherever the model points: shown as a link

_TAGS = {
    "p", "br", "hr", "strong", "em", "del", "code", "pre", "blockquote",
    "ul", "ol", "li", "h1", "h2", "h3", "h4", "h5", "h6", "a",
    "table", "thead", "tbody", "tr", "th", "td",
}  # fmt: skip
_ATTRIBUTES = {
    "a": {"href", "title"},
    "ol": {"start"},
    "code": {"class"},  # language-xyz, from a fenced block's info string
}


def render(text: str) -> str:
    """Sanitized HTML for a (possibly partial) Markdown answer."""
    return nh3.clean(
        _markdown.render(text),
        tags=_TAGS,
        attributes=_ATTRIBUTES,
        url_schemes={"http", "https", "mailto"},
        link_rel="noopener noreferrer nofollow",
        set_tag_attribute_values={"a": {"target": "_blank"}},
        strip_comments=True,
    )
