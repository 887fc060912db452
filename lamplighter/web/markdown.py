r"""Model answers, from Markdown to HTML that is safe to put in the page.

Model output is untrusted. Two independent layers keep it harmless: markdown-it renders with raw
HTML disabled (so ``<script>`` in an answer becomes visible text) and refuses ``javascript:``-style
links; then ammonia (nh3) keeps only an allow-list of tags and attributes, and of link schemes.
Images are not rendered at all: an image is shown as a link to it, named by its alt text, so an
answer can never make the browser load anything. TeX math (``$...$``, ``$$...$$``, ``\(...\)``,
``\[...\]``, as models write it) becomes MathML here, on the server (latex2mathml), which the
browser typesets itself: no script and no font is sent for it, and the sanitizer keeps only
MathML's presentation elements, none of which can link or load.
The page's Content-Security-Policy is a third layer, and the page only ever puts this function's
output into ``innerHTML``.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import nh3
from latex2mathml.converter import convert as latex_to_mathml
from markdown_it import MarkdownIt
from markdown_it.common.utils import escapeHtml
from markdown_it.token import Token
from markdown_it.utils import EnvType, OptionsDict
from mdit_py_plugins.dollarmath import dollarmath_plugin
from mdit_py_plugins.texmath import texmath_plugin

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


# Dollars: "$5 and $10" is money, not math (no space inside the delimiters, no digit outside).
_markdown.use(
    dollarmath_plugin,
    allow_space=False,
    allow_digits=False,
    allow_labels=False,
    double_inline=True,
)
_markdown.use(texmath_plugin, delimiters="brackets")  # \( \) and \[ \]


def _math(
    renderer: Any, tokens: Sequence[Token], idx: int, options: OptionsDict, env: EnvType
) -> str:
    """TeX as MathML, inline or as a block of its own; TeX it cannot read stays as code."""
    token = tokens[idx]
    block = token.type in ("math_block", "math_block_eqno")  # a paragraph of its own
    shown = "inline" if token.type == "math_inline" else "block"  # $$x$$ in a line: a line
    latex = token.content.strip()
    mathml = _mathml(latex, shown)
    if mathml is None:
        code = f"<code>{escapeHtml(latex)}</code>"
        return f"<pre>{code}</pre>\n" if block else code
    return f'<div class="math">{mathml}</div>\n' if block else mathml


@lru_cache(maxsize=2048)
def _mathml(latex: str, display: str) -> str | None:
    """``latex`` as MathML, or None when it is not TeX latex2mathml can read. Cached: a
    streaming answer is rendered again as it grows, with the same formulas each time."""
    try:
        return str(latex_to_mathml(latex, display=display))
    except Exception:  # its parser raises many kinds on bad TeX (IndexError among them)
        return None


for _kind in ("math_inline", "math_inline_double", "math_block", "math_block_eqno"):
    _markdown.add_render_rule(_kind, _math)
_markdown.add_render_rule("image", _image_as_link)
_markdown.add_render_rule("th_open", _aligned_cell)
_markdown.add_render_rule("td_open", _aligned_cell)

_TAGS = {
    "p", "br", "hr", "strong", "em", "del", "s", "code", "pre", "blockquote",
    "ul", "ol", "li", "h1", "h2", "h3", "h4", "h5", "h6", "a",
    "table", "thead", "tbody", "tr", "th", "td", "div",
    # MathML Core's presentation elements, what latex2mathml writes.
    "math", "semantics", "annotation", "mrow", "mi", "mn", "mo", "ms", "mtext", "mspace",
    "msub", "msup", "msubsup", "munder", "mover", "munderover", "mfrac", "msqrt", "mroot",
    "mstyle", "mpadded", "mphantom", "menclose", "mtable", "mtr", "mtd", "merror",
}  # fmt: skip
# MathML's layout attributes (no href, no style, no event handler).
_MATH_ATTRIBUTES = {
    "display", "mathvariant", "stretchy", "fence", "separator", "lspace", "rspace", "accent",
    "accentunder", "columnalign", "rowalign", "columnspacing", "rowspacing", "columnlines",
    "rowlines", "linethickness", "displaystyle", "scriptlevel", "width", "height", "depth",
    "notation", "minsize", "maxsize", "movablelimits", "form", "largeop", "symmetric",
    "encoding", "xmlns",
}  # fmt: skip
_ATTRIBUTES = {
    "a": {"href", "title"},
    "ol": {"start"},
    "code": {"class"},  # language-xyz, from a fenced block's info string
    **{tag: _MATH_ATTRIBUTES for tag in _TAGS if tag == "math" or tag.startswith("m")},
}
_ALIGNED = {"align-left", "align-center", "align-right"}
_CLASSES = {"th": _ALIGNED, "td": _ALIGNED, "div": {"math"}}


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
