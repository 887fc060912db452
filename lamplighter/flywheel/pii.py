"""Personal data and secrets in free text, found and replaced with typed placeholders.

Every message that leaves the store as training data goes through ``scrub``: e-mail addresses,
phone numbers, payment cards, IBANs, IP addresses, street addresses, credentials and person
names become ``[EMAIL]``, ``[PHONE]``, ``[CARD]``, ``[IBAN]``, ``[IP]``, ``[ADDRESS]``,
``[SECRET]`` and ``[NAME]``. ``find`` gives the spans that ``scrub`` replaces; ``scrub_json``
scrubs the JSON text of a tool call's arguments, keeping it JSON.

How it decides
    The structured types are matched by pattern, then checked: card numbers by the Luhn sum and
    a card network's prefix, IBANs by their country's length and the mod-97 check, IP addresses
    by their octets or by ``ipaddress``. A match must also stand alone: no letter, digit or
    underscore may touch it, nor a ``.``, ``-`` or ``/`` that links it to one, which is what
    keeps the digits of dates, versions, ISBNs, UUIDs, hashes and longer numbers. Numbers with
    no separator and no ``+`` are phone numbers only after a word such as "phone" or "call", so
    order numbers and ids are kept. A dotted quad after "version" or "v" is a version, not an
    address. Names and street addresses have no checksum: they are found from context (an
    honorific, "my name is", a greeting or sign-off, a street-type word next to a house number)
    and from a short list of common given names written for this module, so they are missed
    more often than the rest; ``bench/pii.py`` measures how often.

    When spans overlap, the type earlier in ``TYPES`` wins, then the longer span: the
    credentials in ``postgres://user:pass@db.example.com`` are a secret, not the start of an
    e-mail address. ``scrub`` looks again at what it made until it finds nothing more, so that
    scrubbing a scrubbed text changes nothing.

Speed
    An export scrubs every message it writes, most of which hold nothing to find, so each
    detector runs only where a cheap test says it could match (an "@" for e-mail addresses, a
    digit for the number types, a "-" or "_" for most keys), the number types share one scan
    for runs of digits and separators, and names share one with their cues. Patterns start
    with a plain character or a class of them, so that the regular expression engine can skip
    ahead to where a match could begin. ``bench/pii.py`` measures the speed.
"""

from __future__ import annotations

import bisect
import ipaddress
import json
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Final, Literal, TypeAlias

__all__ = ["TYPES", "Entity", "EntityType", "Scrubbed", "find", "scrub", "scrub_json"]

EntityType = Literal["SECRET", "EMAIL", "IBAN", "CARD", "IP", "PHONE", "ADDRESS", "NAME"]
# Also the order of precedence between overlapping spans.
TYPES: Final[tuple[EntityType, ...]] = (
    "SECRET",
    "EMAIL",
    "IBAN",
    "CARD",
    "IP",
    "PHONE",
    "ADDRESS",
    "NAME",
)
_RANK: Final = {kind: rank for rank, kind in enumerate(TYPES)}


@dataclass(frozen=True, slots=True)
class Entity:
    """``text[start:end]`` is personal data or a secret of this type."""

    type: EntityType
    start: int
    end: int


@dataclass(frozen=True, slots=True)
class Scrubbed:
    """The text with each entity replaced by ``[TYPE]``, and how many of each type were."""

    text: str
    counts: dict[str, int]


def scrub(text: str, spare: Callable[[Entity, str], bool] | None = None) -> Scrubbed:
    """Replace the personal data and secrets in ``text`` with typed placeholders, but for the
    entities ``spare(entity, text)`` keeps.

    What ``find`` gives is replaced, then ``find`` looks again at the result, until it finds
    nothing more. A value can be lost the first time to an overlapping one that takes
    precedence: in "+4412345678 0@example.com" the phone number ran on into the e-mail address
    ("+4412345678 0"), which won. Most texts take one look, or two when they hold something,
    and scrubbing a scrubbed text changes nothing."""
    counts: dict[str, int] = {}
    while entities := [e for e in find(text) if spare is None or not spare(e, text)]:
        parts: list[str] = []
        done = 0
        for entity in entities:
            parts += (text[done : entity.start], "[", entity.type, "]")
            done = entity.end
        parts.append(text[done:])
        scrubbed = "".join(parts)
        if scrubbed == text:  # a placeholder taken for a value; never expected, never looped on
            break
        for entity in entities:
            counts[entity.type] = counts.get(entity.type, 0) + 1
        text = scrubbed
    return Scrubbed(text, counts)


# A string or a number of JSON text: read from the start, a quote only ever opens a string, and
# outside strings only numbers hold digits.
_JSON_SCALAR = re.compile(r'"(?:[^"\\]|\\.)*"|-?\d[\d.eE+-]*')


def scrub_json(text: str) -> Scrubbed:
    """``scrub`` for JSON text, such as a tool call's ``arguments``: each string (a key or a
    value) and number is scrubbed as the text it holds, and one that held something is written
    back as a JSON string, so that the result is still JSON, with the placeholders in it; the
    rest stays byte for byte as it was. Scrubbing the JSON text as a whole could run a
    placeholder over a quote or an escape and leave no JSON at all. Text that is not JSON (a
    model's arguments cut short) has no structure to keep and is scrubbed as it is."""
    try:
        json.loads(text)
    except ValueError:
        return scrub(text)
    counts: Counter[str] = Counter()

    def scrubbed(scalar: re.Match[str]) -> str:
        value = scalar.group()
        plain = json.loads(value) if value.startswith('"') else value
        found = scrub(plain)
        if not found.counts:
            return value
        counts.update(found.counts)
        return json.dumps(found.text, ensure_ascii=False)

    return Scrubbed(_JSON_SCALAR.sub(scrubbed, text), dict(counts))


def find(text: str) -> list[Entity]:
    """The spans of personal data and secrets in ``text``, in order, none overlapping: what
    ``scrub`` replaces first."""
    lowered = text.lower()
    found = [*_secrets(text, lowered), *_emails(text), *_ipv6(text), *_names(text, lowered)]
    if any(digit in text for digit in "0123456789"):
        found += _numbers(text)
        found += _addresses(text)
    return _settle(found)


def _settle(found: list[Entity]) -> list[Entity]:
    """Keep the earlier type of ``TYPES``, then the longer span, wherever spans overlap."""
    if len(found) < 2:
        return found
    found.sort(key=lambda entity: (_RANK[entity.type], entity.start - entity.end, entity.start))
    kept: list[Entity] = []  # by start, none overlapping: a new span need only fit between two
    starts: list[int] = []
    for entity in found:
        index = bisect.bisect_left(starts, entity.start)
        if (index > 0 and kept[index - 1].end > entity.start) or (
            index < len(kept) and kept[index].start < entity.end
        ):
            continue
        kept.insert(index, entity)
        starts.insert(index, entity.start)
    return kept


def _is_word(char: str) -> bool:
    return char.isalnum() or char == "_"


def _alone(
    text: str, start: int, end: int, joiners: str = ".-/", joiners_after: str | None = None
) -> bool:
    """Whether ``text[start:end]`` is a whole token: no letter, digit or underscore touches it,
    and no joiner stands between it and one (the "1234" of "9.1234" or "a1-1234"). Joiners
    after the token are ``joiners`` too unless ``joiners_after`` says otherwise.

    A placeholder touching the token counts as the word it replaced ("]" before, "[" after), so
    that scrubbing a scrubbed text finds nothing new: "x@example.co+4412345678" keeps its
    digits, and so must "[EMAIL]+4412345678"."""
    if start > 0:
        before = text[start - 1]
        if (
            _is_word(before)
            or before == "]"
            or (before in joiners and start > 1 and _is_word(text[start - 2]))
        ):
            return False
    if joiners_after is None:
        joiners_after = joiners
    if end < len(text):
        after = text[end]
        if (
            _is_word(after)
            or after == "["
            or (after in joiners_after and end + 1 < len(text) and _is_word(text[end + 1]))
        ):
            return False
    return True


_Check: TypeAlias = Callable[[re.Match[str]], tuple[int, int] | None]


def _checked(
    pattern: re.Pattern[str], text: str, check: _Check, start: int = 0, end: int | None = None
) -> Iterator[tuple[int, int]]:
    """The spans ``check`` makes of the matches of ``pattern`` it accepts. After a refused
    match the search goes on from the character after its start, not after its end, so that a
    refused look-alike cannot hide a real match that begins inside it."""
    stop = len(text) if end is None else end
    position = start
    while (match := pattern.search(text, position, stop)) is not None:
        span = check(match)
        if span is None:
            position = match.start() + 1
        else:
            yield span
            position = max(span[1], match.start() + 1)


# --- Secrets --------------------------------------------------------------------------------

# A private key, whole: from its BEGIN line to its END line, or, when it was pasted cut short,
# through the lines of base64 and headers that follow.
_PEM_BEGIN = re.compile(
    r"(?P<header>-----BEGIN [A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?-----)"
    r"(?:[ \t]*\r?\n(?:[A-Za-z0-9+/=]+|[A-Za-z-]+:[^\n]*))*"
)
_PEM_END = re.compile(r"-----END [A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?-----")
_PEM_MAX = 20_000  # characters from BEGIN to END; a 4096-bit RSA key takes about 3,300
# The credentials of scheme://user:password@host (or of scheme://user@host); the host stays. The
# password runs to the last "@" before the path, since passwords may hold "@" themselves.
_URL_CREDENTIALS = re.compile(
    r"://(?P<secret>[^\s:/?#@\[\]]+(?::[^\s/?#]*)?|:[^\s/?#]+)@(?=[\w\[])"
)
# Keys and tokens by their issuer's prefix, most of which end in "-" or "_". Keys are looked
# for only where a "-" or "_" starts a long run of key characters, which prose seldom has, and
# then by the word before it. Lamplighter's own keys are "ll-" and 43 characters
# (lamplighter.credentials.KEY_PATTERN); shorter ones are caught too, cut or not.
_KEY_RUN: Final = {"-": re.compile(r"-[A-Za-z0-9_-]{10,}"), "_": re.compile(r"_[A-Za-z0-9_]{10,}")}
_SLACK = re.compile(r"xox[abposr]-[A-Za-z0-9-]{10,}")
_GITHUB = re.compile(r"gh[pousr]_[A-Za-z0-9]{30,}")
_STRIPE = re.compile(r"[sr]k_(?:live|test)_[A-Za-z0-9]{16,}")
_KEY_BY_WORD: Final[dict[str, dict[str, re.Pattern[str]]]] = {
    "-": {
        "ll": re.compile(r"ll-[A-Za-z0-9_-]{20,}"),
        "sk": re.compile(r"sk-[A-Za-z0-9_-]{20,}"),  # OpenAI, Anthropic (sk-ant-...)
        "glpat": re.compile(r"glpat-[A-Za-z0-9_-]{20,}"),  # GitLab
        **{f"xox{kind}": _SLACK for kind in "abposr"},
    },
    "_": {
        "sk": _STRIPE,
        "rk": _STRIPE,
        **{f"gh{kind}": _GITHUB for kind in "pousr"},
        "github": re.compile(r"github_pat_[A-Za-z0-9_]{30,}"),
        "hf": re.compile(r"hf_[A-Za-z0-9]{30,}"),  # Hugging Face
    },
}
# The rest: AWS access key ids, Google API keys, bearer tokens and basic credentials (the token
# only); JSON web tokens.
_CAPITAL_KEYS = re.compile(
    r"A[KS]IA[A-Z0-9]{16}|AIza[A-Za-z0-9_-]{35}"
    r"|Bearer[ \t]+(?P<bearer>[A-Za-z0-9._~+/-]{16,}=*)"
    r"|Authorization:[ \t]*Basic[ \t]+(?P<basic>[A-Za-z0-9+/]{8,}={0,2})"
)
_JWT = re.compile(r"eyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]*")
_BASE64URL_RUN = re.compile(r"[A-Za-z0-9_-]+")
# A value given to a password, secret, token or key: "password: hunter2", DB_PASSWORD=...,
# "api_key": "...", "my password is ...". Only the value is replaced. An unquoted value needs a
# digit or a symbol, and may not be followed by "(" or "[", so that code (``token = get()``,
# ``password: str``) keeps its names. Matched against the lowered text, which is several times
# faster than matching case-insensitively.
_ASSIGNED_SOURCE = (
    r"(?:pass(?:word|wd)?|pwd|secret(?:[_-]?key)?|token|api[_-]?key|access[_-]?key"
    r"|private[_-]?key)"
    r"[\"']?(?:[ \t]*[:=][ \t]*|[ \t]+is[ \t]+)"
    r"(?:(?P<quote>[\"'])(?P<quoted>(?!\[[a-z]+\])[^\"'\s]{4,})(?P=quote)"
    r"|(?P<bare>[^\s\"'`,;()\[\]{}<>]{6,})(?![\w(\[]))"
)
_ASSIGNED = re.compile(_ASSIGNED_SOURCE)
_ASSIGNED_ANY_CASE = re.compile(_ASSIGNED_SOURCE, re.IGNORECASE)
_ASSIGNED_HINTS: Final = ("pass", "pwd", "secret", "token", "key")
_DIGITS_AND_SYMBOLS: Final = frozenset("0123456789!#$%&*+/=?@^~")
_MASKS: Final = "*•●xX"


def _secrets(text: str, lowered: str) -> Iterator[Entity]:
    if "-----BEGIN" in text:
        for begin in _PEM_BEGIN.finditer(text):
            end = _PEM_END.search(text, begin.end("header"), begin.end("header") + _PEM_MAX)
            yield Entity("SECRET", begin.start(), begin.end() if end is None else end.end())
    # Single characters first: looking for one is several times faster than for a string.
    if "@" in text and "://" in text:
        for match in _URL_CREDENTIALS.finditer(text):
            yield Entity("SECRET", match.start("secret"), match.end("secret"))
    for separator, run_pattern in _KEY_RUN.items():
        if separator in text:
            for run in run_pattern.finditer(text):
                start = at = run.start()
                while start > 0 and at - start < 6 and text[start - 1].isalnum():
                    start -= 1
                key_pattern = _KEY_BY_WORD[separator].get(text[start:at])
                key = key_pattern.match(text, start) if key_pattern is not None else None
                if key is not None and _alone(text, start, key.end(), "-"):
                    yield Entity("SECRET", start, key.end())
    if ("A" in text and ("IA" in text or "AIza" in text)) or (
        "B" in text and ("Bearer" in text or "Basic" in text)
    ):
        for key in _CAPITAL_KEYS.finditer(text):
            if _alone(text, key.start(), key.end(), "-"):
                group = key.lastgroup or 0
                yield Entity("SECRET", key.start(group), key.end(group))
    if "J" in text and "eyJ" in text:
        position = text.find("eyJ")
        while position >= 0:
            token = _JWT.match(text, position)
            if token is not None and _alone(text, position, token.end(), "-"):
                yield Entity("SECRET", position, token.end())
                after = token.end()
            else:  # on past the characters that were no token: an "eyJ" among them starts none
                skipped = _BASE64URL_RUN.match(text, position)
                after = position if skipped is None else skipped.end()
            position = text.find("eyJ", max(position + 1, after))
    if any(hint in lowered for hint in _ASSIGNED_HINTS):
        # Lowering keeps every offset unless it changed the length ("İ" becomes two characters).
        same = len(lowered) == len(text)
        pattern, subject = (_ASSIGNED, lowered) if same else (_ASSIGNED_ANY_CASE, text)
        for match in pattern.finditer(subject):
            group = "quoted" if match["quoted"] is not None else "bare"
            value = match[group]
            if not value.strip(_MASKS) or (
                group == "bare" and not any(char in _DIGITS_AND_SYMBOLS for char in value)
            ):
                continue  # "********", or a name in code
            yield Entity("SECRET", match.start(group), match.end(group))


# --- E-mail addresses -----------------------------------------------------------------------

_EMAIL_DOMAIN = re.compile(r"(?:[^\W_](?:[\w-]{0,61}[^\W_])?\.)+[^\W\d_]{2,63}(?![\w-])")
_EMAIL_LOCAL: Final = frozenset(".%+-_'")
# Not addresses: "git@github.com:owner/repo" (a path follows the host), "icon@2x.png" (an
# image for screens of twice the density).
_PATH_AFTER_HOST = re.compile(r":\S")
_RETINA = re.compile(r"[0-9]x\.")


def _emails(text: str) -> Iterator[Entity]:
    """Found from each "@" outwards: the domain by pattern, the local part by walking back,
    which costs far less than a pattern that would try every word as a local part."""
    at = text.find("@")
    while at >= 0:
        start = at
        while start > 0 and (text[start - 1].isalnum() or text[start - 1] in _EMAIL_LOCAL):
            start -= 1
        while start < at and text[start] in ".'":
            start += 1
        domain = _EMAIL_DOMAIN.match(text, at + 1) if start < at else None
        if domain is not None:
            end = domain.end()
            if _PATH_AFTER_HOST.match(text, end) is None and _RETINA.match(text, at + 1) is None:
                yield Entity("EMAIL", start, end)
            at = end - 1
        at = text.find("@", at + 1)


# --- IBANs ----------------------------------------------------------------------------------

_IBAN = re.compile(r"[A-Z][A-Z][0-9][0-9](?:[ -]?[A-Z0-9]){11,30}")
# The length of each country's IBAN, from the SWIFT IBAN registry.
_IBAN_LENGTHS: Final = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22,
    "BR": 29, "BY": 28, "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DK": 18, "DO": 28,
    "EE": 20, "EG": 29, "ES": 24, "FI": 18, "FO": 18, "FR": 27, "GB": 22, "GE": 22, "GI": 23,
    "GL": 18, "GR": 27, "GT": 28, "HR": 21, "HU": 28, "IE": 22, "IL": 23, "IQ": 23, "IS": 26,
    "IT": 27, "JO": 30, "KW": 30, "KZ": 20, "LB": 28, "LC": 32, "LI": 21, "LT": 20, "LU": 20,
    "LV": 21, "MC": 27, "MD": 24, "ME": 22, "MK": 19, "MR": 27, "MT": 31, "MU": 30, "NL": 18,
    "NO": 15, "PK": 24, "PL": 28, "PS": 29, "PT": 25, "QA": 29, "RO": 24, "RS": 22, "SA": 24,
    "SC": 31, "SE": 24, "SI": 19, "SK": 24, "SM": 27, "ST": 25, "SV": 28, "TL": 23, "TN": 24,
    "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20,
}  # fmt: skip


_LETTER_VALUES: Final = str.maketrans(
    {chr(ord("A") + value): str(10 + value) for value in range(26)}
)
_NO_SEPARATORS: Final = str.maketrans("", "", " -")


def _iban_valid(compact: str) -> bool:
    """The ISO 13616 check: the country and check digits moved to the end, letters read as
    10 to 35, the number is 1 modulo 97."""
    return int((compact[4:] + compact[:4]).translate(_LETTER_VALUES)) % 97 == 1


# What comes before the first digits of an IBAN: country, check digits, groups of four.
_IBAN_START = re.compile(r"(?<![\w])[A-Z][A-Z](?:[0-9][0-9][ ]?(?:[A-Z0-9]{4}[ ]?)*)?$")


def _iban_span(match: re.Match[str]) -> tuple[int, int] | None:
    """The IBAN at the start of ``match``: exactly as many characters as its country's IBANs
    have (the pattern may have run on into the next word), checksum valid, standing alone."""
    text, start = match.string, match.start()
    length = _IBAN_LENGTHS.get(match[0][:2])
    compact = match[0].translate(_NO_SEPARATORS)
    if length is None or len(compact) < length or not _iban_valid(compact[:length]):
        return None
    end = start
    for _ in range(length):  # to just after the last of its characters
        end += 1 + (text[end] in " -")
    return (start, end) if _alone(text, start, end, "") else None


# --- Numbers: cards, IPv4 addresses, phone numbers ------------------------------------------

# A run of digits and the separators that numbers are written with, long enough to hold a phone
# number or an IPv4 address. The number types are looked for only inside these runs.
_NUMBERISH = re.compile(r"[+(0-9][0-9(). -]{5,}")
_DIGITS = re.compile(r"[0-9]+")
_SEPARATORS_GONE: Final = str.maketrans("", "", "+(). -")
_IPV4 = re.compile(r"[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}")
# What makes a dotted quad a version or a section number: "version 1.2.3.4", "v 1.2.3.4",
# "Python 3.11.7.1", "pkg==1.2.3.4", "section 2.5.1.3".
_VERSION_BEFORE = re.compile(
    r"(?i:\b(?:v|ver|version|release|build|rev|revision|firmware|fw|python|node|java|section"
    r"|chapter|clause|step)\.?[ \t]*[:=]?[ \t]*|§[ \t]*|[=~<>!]=[ \t]*|[\^~])$"
)
_PHONE = re.compile(
    r"\+[0-9]{1,3}(?:[ .-]?\([0-9]{1,4}\))?(?:[ .-]?[0-9]{1,5}){2,6}"  # +44 20 7946 0958
    r"|(?:1[ .-]?)?\([0-9]{3}\)[ .-]?[0-9]{3}[ .-][0-9]{4}"  # (415) 555-0132
    r"|\(0[0-9]{1,4}\)[ ]?[0-9]{3,4}[ .-]?[0-9]{3,4}"  # (020) 7946 0958
    r"|(?:1[ .-])?[0-9]{3}(?P<sep>[ .-])[0-9]{3}(?P=sep)[0-9]{4}"  # 415-555-0132, 415.555.0132
    r"|0[0-9]{1,4}(?:[ .-][0-9]{2,8}){1,4}"  # 020 7946 0958, 06 12 34 56 78 (a trunk prefix)
)
# A number given right after a word that says it is a phone number, however it is written.
_PHONE_WORDS: Final = ("phone", "tel", "mobile", "cell", "call", "fax", "whatsapp", "sms", "text",
                       "ring")  # fmt: skip
_PHONE_WORD_BEFORE = re.compile(  # in lower case
    rf"\b(?:{'|'.join(_PHONE_WORDS)})[a-z]*\.?:?[ \t]*"
    r"(?:(?:me|us|at|on|is|no\.?|number)[ \t:]*){0,3}$"
)
_DIALLED = re.compile(r"\+?\(?[0-9]+\)?(?:[ .-]?\(?[0-9]+\)?)*")


def _luhn(digits: str) -> bool:
    total = 0
    for index, char in enumerate(reversed(digits)):
        value = ord(char) - 48
        if index % 2:
            value = value * 2 - 9 if value > 4 else value * 2
        total += value
    return total % 10 == 0


def _card_network(digits: str) -> bool:
    """Whether the number starts as a card network's numbers do: 2221-2720 and 51-55
    Mastercard, 3 Amex, Diners and JCB, 4 Visa, 5 and 6 Maestro, Discover and UnionPay. One long
    number in ten passes the Luhn check by chance; this keeps most of those (timestamps, ids)."""
    return digits[0] in "3456" or (digits[0] == "2" and 2221 <= int(digits[:4]) <= 2720)


def _cards(text: str, groups: list[tuple[int, int]]) -> Iterator[Entity]:
    """Cards among the digit groups of one run: consecutive groups, one space or dash apart,
    13 to 19 digits together, every group but the last at least four digits long (4-4-4-4,
    4-6-5); the longest valid one from each group on."""
    index = 0
    while index < len(groups):
        first = groups[index][0]
        digits = ""
        candidates: list[tuple[int, str]] = []
        for last in range(index, len(groups)):
            start, end = groups[last]
            if last > index:
                gap = text[groups[last - 1][1] : start]
                if gap not in (" ", "-") or groups[last - 1][1] - groups[last - 1][0] < 4:
                    break
            digits += text[start:end]
            if len(digits) > 19:
                break
            if len(digits) >= 13:
                candidates.append((last, digits))
        for last, number in reversed(candidates):
            end = groups[last][1]
            if _card_network(number) and _luhn(number) and _alone(text, first, end):
                yield Entity("CARD", first, end)
                index = last
                break
        index += 1


def _ipv4_span(match: re.Match[str]) -> tuple[int, int] | None:
    text, start, end = match.string, match.start(), match.end()
    if any(int(octet) > 255 for octet in match[0].split(".")):
        return None
    if not _alone(text, start, end, ".-/", joiners_after=".-"):  # "Chrome/1.2.3.4", "10.0.0.0/8"
        return None
    if _VERSION_BEFORE.search(text, max(0, start - 24), start) is not None:
        return None
    return start, end


def _phone_span(match: re.Match[str]) -> tuple[int, int] | None:
    text, start, end = match.string, match.start(), match.end()
    digits = sum(char.isdigit() for char in match[0])
    if not 7 < digits <= 15 or not _alone(text, start, end):
        return None
    if start > 0 and text[start - 1] in "#$€£¥":  # order numbers, prices
        return None
    return start, end


def _numbers(text: str) -> Iterator[Entity]:
    """IBANs, cards, IPv4 addresses and phone numbers, looked for only in and around the runs of
    digits and separators that each of them holds (an IBAN's digits come in runs too)."""
    iban_end = 0
    for run in _NUMBERISH.finditer(text):
        start, end = run.span()
        digits = len(run[0].translate(_SEPARATORS_GONE))
        if digits < 4:
            continue
        found: list[Entity] = []
        # An IBAN's country and check digits, and a group or two of letters, can come before
        # its first run of digits; there is none where there is no capital letter.
        around = (max(iban_end, start - 40), min(len(text), end + 40))
        window = text[around[0] : around[1]]
        if window != window.lower():
            for span in _checked(_IBAN, text, _iban_span, *around):
                found.append(Entity("IBAN", *span))
                iban_end = span[1]
            if not found and _IBAN_START.search(text, around[0], start) is not None:
                continue  # the rest of an IBAN that fails its check, not a card or a phone number
        if "." in run[0]:
            found += (Entity("IP", *span) for span in _checked(_IPV4, text, _ipv4_span, start, end))
        if digits >= 13:
            found += _cards(text, [group.span() for group in _DIGITS.finditer(text, start, end)])
        if digits >= 8:
            found += (
                Entity("PHONE", *span) for span in _checked(_PHONE, text, _phone_span, start, end)
            )
        if not found and digits >= 7:
            found += _phone_after_word(text, start)
        yield from found


def _phone_after_word(text: str, start: int) -> Iterator[Entity]:
    """A number that only a preceding "phone", "call me on" and the like make a phone number."""
    before = text[max(0, start - 40) : start].lower()
    if (
        not any(word in before for word in _PHONE_WORDS)
        or _PHONE_WORD_BEFORE.search(before) is None
    ):
        return
    number = _DIALLED.match(text, start)
    if number is None:
        return
    end = number.end()
    if text[end - 1] == "(":
        end -= 1
    digits = sum(char.isdigit() for char in text[start:end])
    if 7 <= digits <= 15 and _alone(text, start, end):
        yield Entity("PHONE", start, end)


# --- IPv6 addresses -------------------------------------------------------------------------

_HEX_DIGITS_AND_COLON: Final = frozenset("0123456789abcdefABCDEF:")
# A colon within the first five characters: a long run of hex digits (a hash) fails at once.
_IPV6 = re.compile(r"(?:[0-9A-Fa-f]{1,4}:|:)[0-9A-Fa-f:]*(?:\.[0-9]{1,3}){0,3}")


def _ipv6_span(match: re.Match[str]) -> tuple[int, int] | None:
    """An IPv6 address, but not "::" or "1::2" (a Python slice) nor C++'s "a::b": at least one
    digit, and a group of three or more characters or three groups."""
    text, start, end = match.string, match.start(), match.end()
    if text[end - 1] == ":" and text[end - 2] != ":":
        end -= 1
    candidate = text[start:end]
    if (start > 0 and text[start - 1] == ":") or not _alone(text, start, end, ""):
        return None
    if "::" not in candidate and candidate.count(":") != 7:
        return None
    groups = [group for group in candidate.replace(".", ":").split(":") if group]
    if not any(char.isdigit() for char in candidate) or not (
        len(groups) >= 3 or any(len(group) >= 3 for group in groups)
    ):
        return None
    try:
        ipaddress.IPv6Address(candidate)
    except ValueError:
        return None
    return start, end


def _ipv6(text: str) -> Iterator[Entity]:
    """Written in full, an address has seven colons; shortened, it has a "::". Where code has
    "::" (C++, Rust) and few colons besides, only the runs of hex digits and colons around each
    "::" are tried."""
    if ":" not in text:
        return
    if text.count(":") >= 7:
        for run in _IPV6.finditer(text):  # runs of hex digits and colons
            span = _ipv6_span(run)
            if span is not None:
                yield Entity("IP", *span)
        return
    done = 0
    position = text.find("::")
    while position >= 0:
        start = position
        while start > done and text[start - 1] in _HEX_DIGITS_AND_COLON:
            start -= 1
        match = _IPV6.match(text, start)
        span = _ipv6_span(match) if match is not None else None
        if span is not None:
            yield Entity("IP", *span)
            done = span[1]
        position = text.find("::", max(position + 2, done))


# --- Street addresses -----------------------------------------------------------------------


def _either_case(words: str) -> str:
    """``Street|Rd`` as ``[Ss]treet|[Rr]d``: people write "221b baker street" too."""
    return "|".join(f"[{word[0]}{word[0].lower()}]{word[1:]}" for word in words.split("|"))


# A street's type, written out or abbreviated; only an abbreviation takes a full stop with it
# ("Baker St." is the street, "Baker Street." a street and the end of a sentence).
_STREET_TYPES = (
    "(?:"
    + _either_case(
        "Street|Avenue|Road|Boulevard|Lane|Drive|Court|Place|Square|Terrace|Way|Close"
        "|Crescent|Parkway|Highway|Row|Mews|Grove|Gardens|Circle|Trail|Walk"
    )
    + "|(?:"
    + _either_case("St|Ave|Rd|Blvd|Ln|Dr|Ct|Pl|Sq|Pkwy|Hwy|Cir")
    + ")\\.?)"
)
_FRENCH_TYPES = _either_case(
    "Rue|Avenue|Boulevard|Bd|Place|Allée|Impasse|Chemin|Quai|Cours|Route|Av\\."
)
# A capitalised word of a street's name ("Baker", "O'Connell", "St.", "Champs-Élysées": a full
# stop only after an abbreviation, not at the end of a sentence), and of a town's ("London",
# "Saint-Denis").
_CAPITALISED = r"(?:[A-ZÀ-ÖØ-Þ][^\W\d_]{0,2}\.|[A-ZÀ-ÖØ-Þ](?:[^\W\d_]|['\u2019-])*)"
_TOWN = r"[A-ZÀ-ÖØ-Þ][a-zß-öø-ÿ]+(?:[- ][A-ZÀ-ÖØ-Þ][a-zß-öø-ÿ]+)?"
_HOUSE = r"[0-9]{1,4}[a-zA-Z]?(?:[-/][0-9]{1,4}[a-zA-Z]?)?(?![\w])"
_UK_POSTCODE = r"[A-Z]{1,2}[0-9][A-Z0-9]?[ ][0-9][A-Z]{2}"
_POSTCODE_TOWN = rf"(?:,?[ ][0-9]{{4,5}}[ ]{_TOWN})?"
# "221B Baker Street", "1600 Pennsylvania Avenue NW, Washington, DC 20500", "12 rue de Rivoli".
_ADDRESS_NUMBER_FIRST = re.compile(
    # The look-behind, which skips numbers' later digits, comes after the first digit: at the
    # very start it would keep the engine from skipping ahead to the digits.
    rf"[0-9](?<![\w][0-9])[0-9]{{0,4}}[A-Za-z]?(?:-[0-9]{{1,5}}[A-Za-z]?)?"
    rf"(?:,?[ ](?:(?:{_CAPITALISED}|[0-9]{{1,3}}(?:st|nd|rd|th))[ ]){{1,4}}"
    rf"{_STREET_TYPES}(?![\w])(?:[ ](?:N|S|E|W|NE|NW|SE|SW)(?![\w]))?"
    rf"(?:,?[ ](?:Apt|Apartment|Suite|Ste|Unit|Flat|Floor|\#)\.?[ ]?[A-Za-z0-9-]+)?"
    rf"(?:,[ ]{_TOWN})?"
    rf"(?:,?[ ](?:[A-Z]{{2}}[ ][0-9]{{5}}(?:-[0-9]{{4}})?|{_UK_POSTCODE}))?"
    rf"|(?:[ ]?(?:bis|ter))?,?[ ](?:{_FRENCH_TYPES})[ ]"
    rf"(?:(?:de[ ]la|de[ ]l['\u2019]|du|des|de|d['\u2019]|la|le|les|l['\u2019])[ ]?)?"
    rf"{_CAPITALISED}(?:[ ](?:de[ ]|du[ ]|des[ ])?{_CAPITALISED})*{_POSTCODE_TOWN})"
    rf"(?![\w])"
)
# "Hauptstraße 5", "Berliner Str. 12", "Keizersgracht 123", "Via Roma 12", "Calle Mayor, 5".
_ADDRESS_NAME_FIRST = re.compile(
    rf"(?:(?:[A-ZÄÖÜ][a-zäöüß]+[ -])?(?:Straße|Strasse|Str\.|Allee|Platz|Weg|Gasse)"
    rf"|[A-ZÄÖÜ][a-zäöüß-]*(?:straße|strasse|str\.|weg|allee|platz|gasse|damm|straat|gracht"
    rf"|laan|plein|kade|singel|vej|gatan|gata|vägen|veien)"
    rf"|(?:Calle|Avenida|Avda\.|Paseo|Plaza|Via|Viale|Piazza|Corso|Largo|Rua|Travessa|Carrer)[ ]"
    rf"(?:(?:de|del|de[ ]la|dei|della|delle|degli|di|do|da|dos|das)[ ])*"
    rf"{_CAPITALISED}(?:[ ]{_CAPITALISED})*,?(?:[ ]n\.?º?)?)"
    rf"[ ]{_HOUSE}{_POSTCODE_TOWN}"
)


# Two patterns, not "[ \n][0-9]": one that starts with a single character is found by a much
# faster search than one that starts with a set of them.
_NUMBER_AFTER_SPACE = re.compile(r" [0-9]")
_NUMBER_AFTER_NEWLINE = re.compile(r"\n[0-9]")
_STREET_SUFFIXES: Final = (
    "straße", "strasse", "str.", "weg", "allee", "platz", "gasse", "damm", "straat", "gracht",
    "laan", "plein", "kade", "singel", "vej", "gatan", "gata", "vägen", "veien",
)  # fmt: skip
_STREET_WORDS: Final = (
    "Calle", "Avenida", "Avda.", "Paseo", "Plaza", "Via", "Viale", "Piazza", "Corso", "Largo",
    "Rua", "Travessa", "Carrer",
)  # fmt: skip


def _addresses(text: str) -> Iterator[Entity]:
    """Addresses that start with the house number, and those that end with it, looked for at
    each number that starts a line or follows a space. The second kind is tried only where the
    word before the number ends like a street's name ("-straße", "-gracht"), or is capitalised
    after a street word ("Via Roma 12")."""
    numbers = [match.start() + 1 for match in _NUMBER_AFTER_SPACE.finditer(text)]
    if "\n" in text:
        numbers += (match.start() + 1 for match in _NUMBER_AFTER_NEWLINE.finditer(text))
        numbers.sort()
    if text[:1].isdigit():
        numbers.insert(0, 0)
    done = 0
    for at in numbers:
        if at < done:
            continue
        match = _ADDRESS_NUMBER_FIRST.match(text, at)
        if match is not None and _alone(text, *match.span(), ""):
            yield Entity("ADDRESS", *match.span())
            done = match.end()
            continue
        if text[at - 1] != " ":
            continue
        before = text[max(0, at - 41) : at - 1].split()
        word = before[-1].rstrip(",") if before else ""
        window = max(done, at - 60)
        plausible = word.lower().endswith(_STREET_SUFFIXES) or (
            word.istitle()
            and word not in _NOT_NAMES
            and any(street in text[window:at] for street in _STREET_WORDS)
        )
        if not plausible:
            continue
        for match in _ADDRESS_NAME_FIRST.finditer(text, window, min(len(text), at + 60)):
            if match.start() < at < match.end() and _alone(text, *match.span(), ""):
                yield Entity("ADDRESS", *match.span())
                done = match.end()


# --- Person names ---------------------------------------------------------------------------

# Given names common in the places Lamplighter's users write from, written for this module.
# Names that are also everyday or technical words (Will, May, Mark, Ruby, Julia, Max, Hugo,
# Jordan, Victoria, Claude...) are left out: capitalised at the start of a sentence, they would
# be taken for names far more often than they are names.
_GIVEN_NAMES_TEXT = """
    Aaron Abdul Abigail Adam Adrian Agnieszka Ahmed Aisha Alan Albert Alejandro Alessandro
    Alessia Alex Alexander Alexandra Alexis Alice Alicia Alison Amanda Amelia Amit Amy Ana
    Ananya Anastasia Anders Andrea Andreas Andrew Andrzej Andy Angela Anil Anita Anja Ann Anna
    Anne Anthony Antoine Antonio Arjun Arthur Ashley Astrid Aurélie Ava Barbara Beatriz Becky
    Ben Benjamin Bernard Beth Betty Birgit Bob Bradley Brandon Brenda Brian Bruno Camille Carlos
    Carmen Carol Caroline Catherine Charles Charlie Charlotte Chiara Chloe Chloé Chris Christina
    Christine Christoph Christophe Christopher Claire Claudia Connor Cristina Cynthia Dan Daniel
    Daniela Danielle Dave David Deborah Deepak Denise Dennis Diana Diane Dieter Dmitri Dominik
    Donna Dorothy Douglas Dylan Edward Eleanor Elena Elijah Elisa Elizabeth Ella Ellie Emily
    Emma Eric Erik Ethan Eugene Evelyn Fatima Federica Felix Fernando Finn Florian Francesca
    Francesco Francisco François Fred Gabriel Gabriela George Gerald Giovanni Giulia Giuseppe
    Greg Gregory Guillaume Hannah Hans Harold Harry Hassan Heather Heike Helen Helena Henry
    Hiroshi Ibrahim Ingrid Isaac Isabel Isabella Isabelle Ivan Jacob Jacqueline Jake James Jan
    Jane Janet Janice Jason Javier Jean Jeff Jeffrey Jen Jennifer Jenny Jens Jeremy Jess Jessica
    Jim Joan Joanna Joe Johannes John Jonas Jonathan Jorge Joseph Josh Joshua José Joyce Juan
    Judith Julie Julien Jürgen Karen Karin Katarzyna Kate Katharina Katherine Kathleen Kathryn
    Katie Kavita Kayla Keith Kelly Kenji Kenneth Kevin Kimberly Klaus Kyle Larry Lars Laura
    Lauren Laurent Lea Leah Leon Leonie Liam Linda Lisa Liz Lorenzo Lori Louis Luca Lucas Lucy
    Lucía Luis Lukas Madison Manon Manuel Marco Margaret Maria Marie Marilyn Marta Martha Martin
    Martina Mary Mathieu Matt Matteo Matthew Megan Mehmet Mei Melissa Michael Michel Michelle
    Miguel Mikael Mike Mohammed Molly Monika Muhammad Nancy Natalie Natasha Nathalie Nathan Neha
    Nicholas Nick Nicolas Nicole Niklas Nils Noah Olga Oliver Olivia Omar Pablo Pamela Patricia
    Patrick Paul Paula Pedro Pete Peter Petra Philip Philippe Pierre Piotr Pooja Priya Rachel
    Rahul Raymond Rebecca Richard Robert Roberto Rohan Ronald Russell Ruth Ryan Sabine Sam
    Samantha Samuel Sandra Sanjay Sara Sarah Scott Sean Sebastian Sergei Sergio Sharon Silvia
    Simon Sofia Sofía Sophia Sophie Stefan Stefano Stephanie Stephen Steve Steven Susan Sven
    Svetlana Takeshi Teresa Theresa Thomas Tim Timothy Tobias Tom Tomasz Tony Ursula Uwe
    Valentina Vicky Vikram Vincent Walter Wei William Wolfgang Yuki Yusuf Zachary Zoe
"""
_GIVEN_NAMES: Final = frozenset(_GIVEN_NAMES_TEXT.split())
# Capitalised words that follow a name or a greeting without being a name.
_NOT_NAMES_TEXT = """
    A An And Are As At But By Dear Do For From Hello Hey Hi How I If In Is It My No Not Of On Or
    Our She So That The Their There They This To We What When Where Who Why With You Your
    All Again Both Colleagues Customer Customers Everybody Everyone Folks Friends Guys Hiring
    Madam Manager Sir Sirs Support Team Thanks Regards Best Cheers Sincerely Lamplighter
    Mr Mrs Ms Mx Miss Dr Prof Dame Herr Frau Mme Mlle
    Monday Tuesday Wednesday Thursday Friday Saturday Sunday January February March June July
    September October November December Street Road Avenue
"""
_NOT_NAMES: Final = frozenset(_NOT_NAMES_TEXT.split())
_NAME_WORD = r"(?:[A-Z]['\u2019])?[A-Z][a-zà-öø-ÿ]+(?:[A-Z][a-zà-öø-ÿ]+)?(?:-[A-Z][a-zà-öø-ÿ]+)?"
_FULL_NAME = rf"{_NAME_WORD}(?:[ ](?:[A-Z]\.[ ])?{_NAME_WORD}){{0,2}}(?![\w])"
_HONORIFICS: Final = ("Mrs", "Mr", "Ms", "Mx", "Miss", "Dr", "Prof", "Sir", "Dame", "Herr", "Frau",
                      "Mme", "Mlle")  # fmt: skip
_CLOSINGS: Final = (
    "Dear", "Best regards", "Kind regards", "Warm regards", "Regards", "Sincerely",
    "Yours sincerely", "Yours truly", "Yours faithfully", "Cordialement", "Mit freundlichen Grüßen",
    "Viele Grüße", "Saludos", "Cordiali saluti",
)  # fmt: skip
# "My name is ...", in the languages Lamplighter's users write most. Capitalised, these are cues
# like the others; in lower case they are looked for only where the lowered text has a hint.
_INTRODUCTIONS: Final = (
    "my name is", "my name's", "name:", "call me", "me llamo", "je m'appelle", "ich heiße",
    "mi chiamo", "mein Name ist",
)  # fmt: skip
_INTRODUCTION_HINTS: Final = ("name", "call me", "amo", "appelle", "ß")
# "I'm ..." is a weak cue: "I'm Sorry", "I'm British". A name after it needs two words ("I'm
# Siobhan Kelly"), a listed given name ("I'm Anna"), or to be what an apposition describes
# ("I'm Ali, a nurse": how people introduce themselves in custom instructions).
_WEAK_CUES: Final = frozenset(("I'm", "I\u2019m", "I am"))
_CUES: Final = frozenset(
    (
        *_HONORIFICS,
        *_CLOSINGS,
        *(phrase[0].upper() + phrase[1:] for phrase in _INTRODUCTIONS),
        *_WEAK_CUES,
    )
)
_HONORIFIC = rf"(?:{'|'.join(_HONORIFICS)})\.?[ ]"
# What may stand between a cue and the name: "Dr. Jane", "Regards,\nJohn", "Dear Mr Brown".
_GAP = rf"[,.!:]?[ \t]*(?:\r?\n[ \t]*)?(?:--?[ \t]*)?(?:{_HONORIFIC})?"
_NAME_INTRODUCED = re.compile(
    f"(?:{'|'.join(map(re.escape, _INTRODUCTIONS))})[ \t]*(?P<name>{_FULL_NAME})"
)
_APPOSITION = re.compile(r",[ \t]+(?:a|an|the)[ \t]")
# Words that make the capitalised words around them a place: "San Francisco", "Albert Hall".
_PLACE_BEFORE: Final = ("San ", "Santa ", "Santo ", "São ", "St. ", "St ", "Saint ", "Sainte ")
_PLACE_WORDS: Final = frozenset((
    "Airport", "Bay", "Bridge", "Cathedral", "Center", "Centre", "Church", "College", "County",
    "Court", "Drive", "Foundation", "Gardens", "Hall", "Hospital", "Institute", "Island", "Lake",
    "Lane", "Museum", "Park", "Place", "River", "Road", "School", "Square", "Stadium", "Station",
    "Street", "Theater", "Theatre", "University",
))  # fmt: skip


_Trie: TypeAlias = dict[str, "_Trie"]


def _alternation(words: Iterable[str]) -> str:
    """A regular expression matching any of ``words``, as a trie: one branch per first letter,
    so the engine tries a handful of branches per capital letter, not hundreds."""
    root: _Trie = {}
    for word in words:
        node = root
        for char in word:
            node = node.setdefault(char, {})
        node[""] = {}

    def pattern(node: _Trie) -> str:
        branches = [
            re.escape(char) + pattern(child) for char, child in sorted(node.items()) if char
        ]
        if "" in node:
            return f"(?:{'|'.join(branches)})?" if branches else ""
        return branches[0] if len(branches) == 1 else f"(?:{'|'.join(branches)})"

    return pattern(root)


# A listed given name or a cue (an honorific, an introduction, a greeting or a sign-off), and
# the capitalised words after it. One pattern for both, with all the words in one trie, so that
# the engine looks at the text once, skipping ahead to the capitals that start one of them.
_NAME_LEAD = re.compile(
    rf"(?P<lead>{_alternation([*_GIVEN_NAMES, *_CUES])})(?:-[A-Z][a-z]+)?(?![\w])"
    rf"(?P<gap>{_GAP})(?P<name>{_FULL_NAME})?"
)


def _name_span(match: re.Match[str], group: str) -> Entity | None:
    """The name in ``group``, cut before its first word that is not a name."""
    start = match.start(group)
    end = start
    for word in match[group].split(" "):
        if word in _NOT_NAMES:
            break
        end += len(word) + (end > start)
    return Entity("NAME", start, end) if end > start else None


def _names(text: str, lowered: str) -> Iterator[Entity]:
    for match in _NAME_LEAD.finditer(text):
        start = match.start()
        if match["lead"] not in _GIVEN_NAMES:  # a cue: the name is what follows it
            entity = _name_span(match, "name") if match["name"] is not None else None
            if entity is None or not _alone(text, start, entity.end, ""):
                continue
            name = text[entity.start : entity.end]
            weak = match["lead"] in _WEAK_CUES and " " not in name and name not in _GIVEN_NAMES
            if weak and not _APPOSITION.match(text, entity.end):
                continue
            yield entity
            continue
        # A given name, and its surname (with any middle name) when a space separates them.
        end = match.start("gap")
        if match["name"] is not None and match["gap"] == " ":
            if any(word in _PLACE_WORDS for word in match["name"].split(" ")):
                continue  # "Albert Hall"
            entity = _name_span(match, "name")
            end = end if entity is None else entity.end
        if text.endswith(_PLACE_BEFORE, 0, start):
            continue  # "San Francisco"
        if _alone(text, start, end, "'\u2019-", joiners_after="-"):  # not "O'Neil", but "Anna's"
            yield Entity("NAME", start, end)
    if any(hint in lowered for hint in _INTRODUCTION_HINTS):
        for match in _NAME_INTRODUCED.finditer(text):
            entity = _name_span(match, "name")
            if entity is not None and _alone(text, match.start(), entity.end, ""):
                yield entity
