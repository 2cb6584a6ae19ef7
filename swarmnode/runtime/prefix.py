"""Prompt prefixes a node has already run, reused by later sessions of the same client.

Chats start from the same system prompt, and every turn of a conversation sends the previous
turns again. A node keeps what it computed for recent first prompts, and for whole sessions when
they are closed (first prompt, then every step after it: a chat turn's prompt and its answer) —
the span's keys and values and its outputs, position by position — and, when a new session's first
prompt begins with the same input rows, copies those in and runs only the rest.

A prefix is found by the bytes of the node's *inputs* (hidden states), hashed position by
position in a chain (the hash at position ``i`` covers rows ``0..i``), so the keys and values
reused are the ones this node computed from exactly those inputs: a client cannot plant results
for others. Entries are keyed by a salt the client chooses (``OpenSession.prefix_salt``, spec
§4.9): only sessions with the same salt share prefixes, so another client cannot learn from
timing what someone else sent. An empty salt opts out.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass

from swarmnode.protocol import WireTensor


def chain_hashes(salt: str, hidden: WireTensor, after: bytes | None = None) -> list[bytes]:
    """The hash of rows ``0..i`` of a ``(1, T, H)`` tensor for every ``i`` (salted, dtype included).

    ``after``: the chain hash of the rows before these (a session's later steps continue its chain).
    """
    _, t, _ = hidden.shape
    row = len(hidden.data) // t
    h = after or hashlib.blake2b(f"{salt}\0{hidden.dtype}\0{hidden.shape[2]}".encode(), digest_size=16).digest()
    out = []
    view = memoryview(hidden.data)
    for i in range(t):
        h = hashlib.blake2b(h + view[i * row : (i + 1) * row], digest_size=16).digest()
        out.append(h)
    return out


@dataclass
class Prefix:
    """What a node computed for one first prompt: its chain hashes, its keys/values (backend-specific,
    from ``export_prefix``) and its output rows."""

    hashes: list[bytes]
    kv: object
    output: WireTensor

    @property
    def tokens(self) -> int:
        """Positions held."""
        return len(self.hashes)


class PrefixStore:
    """Recent first prompts, least recently used dropped first, holding at most ``max_tokens`` positions.

    Args:
        max_tokens: positions kept in all (0: keep nothing).
    """

    def __init__(self, max_tokens: int) -> None:
        self.max_tokens = max_tokens
        self._entries: OrderedDict[int, Prefix] = OrderedDict()
        self._by_hash: dict[bytes, int] = {}  # chain hash at position i -> key of an entry holding positions 0..i
        self._next = 0
        self.tokens = 0
        self.hits = 0
        self.reused_tokens = 0

    def longest(self, hashes: list[bytes], most: int) -> tuple[Prefix, int] | None:
        """The entry sharing the longest prefix with ``hashes`` (at most ``most`` positions) and its length."""
        for n in range(min(most, len(hashes)), 0, -1):
            key = self._by_hash.get(hashes[n - 1])
            if key is not None:  # every mapped key is held (dropping an entry unmaps it)
                self._entries.move_to_end(key)
                self.hits += 1
                self.reused_tokens += n
                return self._entries[key], n
        return None

    def add(self, prefix: Prefix) -> None:
        """Keep ``prefix`` (dropping the least recently used entries to stay within the budget)."""
        if prefix.tokens > self.max_tokens or prefix.tokens == 0:
            return
        known = self._by_hash.get(prefix.hashes[-1])
        if known is not None and self._entries[known].tokens == prefix.tokens:
            self._entries.move_to_end(known)  # the same prompt again
            return
        while self.tokens + prefix.tokens > self.max_tokens and self._entries:
            self._drop(next(iter(self._entries)))
        key = self._next
        self._next += 1
        self._entries[key] = prefix
        self.tokens += prefix.tokens
        covered = set()
        for h in prefix.hashes:
            old = self._by_hash.get(h)
            if old is not None:
                covered.add(old)
            self._by_hash[h] = key  # a later entry with the same prefix takes it over
        for old in covered:  # an entry the new one extends (a session's first prompt) is of no more use
            if self._by_hash.get(self._entries[old].hashes[-1]) == key:
                self._drop(old)

    def _drop(self, key: int) -> None:
        entry = self._entries.pop(key)
        self.tokens -= entry.tokens
        for h in entry.hashes:
            if self._by_hash.get(h) == key:
                del self._by_hash[h]

    def __len__(self) -> int:
        return len(self._entries)
