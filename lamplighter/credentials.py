"""Secrets: password hashing (argon2id) and API keys (random, shown once, stored as a hash)."""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from zxcvbn import zxcvbn

KEY_PREFIX = "ll-"
# What an API key may be used for: chat (/v1), feedback (/api/feedback), admin (/api/admin).
SCOPES = ("chat", "feedback", "admin")
# A key as it appears in text: the prefix and 43 URL-safe base64 characters (256 bits).
KEY_PATTERN = re.compile(r"ll-[A-Za-z0-9_-]{43}(?![A-Za-z0-9_-])")

_hasher = PasswordHasher()


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(password_hash: str, password: str) -> bool:
    try:
        return _hasher.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


MIN_PASSWORD_LENGTH = 8
# zxcvbn's scale: 0 too guessable, 1 very guessable, 2 somewhat guessable, 3 safely
# unguessable, 4 very unguessable. 2 refuses common passwords and their simple variations
# ("password123", "qwertyuiop", "iloveyou1") without demanding symbols.
MIN_PASSWORD_SCORE = 2


def password_problem(password: str, *, related: tuple[str, ...] = ()) -> str | None:
    """Why a new password is refused, or None. ``related`` are words an attacker would try
    first (the email address)."""
    if len(password) < MIN_PASSWORD_LENGTH:
        return f"Passwords must be at least {MIN_PASSWORD_LENGTH} characters."
    if len(password) > 1024:
        return "Passwords can be at most 1024 characters."
    # The email's parts too: "ada.lovelace2026" is weak for ada.lovelace@example.org.
    words = {part for text in related for part in re.split(r"[@._+-]", text) if part}
    # zxcvbn's cost grows with length; the first 100 characters tell enough.
    verdict = zxcvbn(password[:100], user_inputs=[*related, *sorted(words)])
    if verdict["score"] >= MIN_PASSWORD_SCORE:
        return None
    feedback = verdict["feedback"]
    advice = " ".join(part for part in [feedback["warning"], *feedback["suggestions"]] if part)
    return f"That password is too easy to guess. {advice}".strip()


def new_password() -> str:
    return secrets.token_urlsafe(18)


@dataclass(frozen=True)
class NewKey:
    secret: str  # shown to its owner once, never stored
    prefix: str
    key_hash: str


def hash_key(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def new_api_key() -> NewKey:
    secret = KEY_PREFIX + secrets.token_urlsafe(32)
    return NewKey(secret=secret, prefix=secret[:10], key_hash=hash_key(secret))
