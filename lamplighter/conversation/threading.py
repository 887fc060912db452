"""How a stateless request (a list of messages) lands in the stored conversation tree.

Each stored node carries the hash of the whole path from the root to it, so the request's
messages can be matched against everything a user has stored with one indexed lookup:

- a request whose messages extend a stored path continues that conversation;
- a request whose history equals a stored path up to the last assistant answer makes the new
  answer a sibling of the stored one (a regeneration);
- a request that differs at some message branches there (an edit): the differing message
  becomes a sibling of the stored one at that position.

Pure functions only; the store does the lookups.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Sequence
from dataclasses import dataclass

ROOT_HASH = ""


@dataclass(frozen=True)
class Turn:
    role: str
    content: str
    # Tool use: an assistant turn's calls (OpenAI's ``tool_calls`` list as compact JSON), or
    # the id of the call a "tool" turn answers.
    tool_calls: str | None = None
    tool_call_id: str | None = None


def node_hash(parent_hash: str, turn: Turn) -> str:
    """The hash of a path, given the hash of the path to its parent and its last turn.

    Fields are length-prefixed so that no two different paths can be spelled the same way. A
    turn's tool calls or call id take part only when it has them, so that the hashes of every
    path stored before tool use existed stay the same.
    """
    digest = hashlib.sha256()
    parts: tuple[str, ...] = (parent_hash, turn.role, turn.content)
    if turn.tool_calls is not None or turn.tool_call_id is not None:
        parts += (turn.tool_calls or "", turn.tool_call_id or "")
    for part in parts:
        data = part.encode()
        digest.update(len(data).to_bytes(8, "big"))
        digest.update(data)
    return digest.hexdigest()


def path_hashes(turns: Sequence[Turn]) -> list[str]:
    """``result[i]`` is the hash of the path ``turns[: i + 1]``."""
    hashes: list[str] = []
    parent = ROOT_HASH
    for turn in turns:
        parent = node_hash(parent, turn)
        hashes.append(parent)
    return hashes


def stored_prefix(
    hashes: Sequence[str], known: Collection[str], turns: Sequence[Turn] | None = None
) -> int:
    """How many leading turns of a request are already stored.

    ``known`` holds the path hashes among ``hashes`` the store has for this user. Every stored node
    was created under its parent, so if the path to turn ``i`` is stored, so is every shorter one;
    the answer is one past the deepest match. A match of system messages only is no match: most
    clients open every chat with the same system prompt, and those chats are not one tree.
    """
    for index in range(len(hashes) - 1, -1, -1):
        if hashes[index] in known:
            if turns is not None and all(t.role == "system" for t in turns[: index + 1]):
                return 0
            return index + 1
    return 0


def title_from(turns: Sequence[Turn], limit: int = 80) -> str:
    """A first title for a conversation: the start of its first user message, on one line."""
    for turn in turns:
        if turn.role == "user" and turn.content.strip():
            words = " ".join(turn.content.split())
            return words if len(words) <= limit else words[: limit - 1].rstrip() + "…"
    return "New conversation"
