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
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from swarmnode.protocol import WireTensor
from swarmnode.runtime.cache import SessionState
from swarmnode.runtime.chunks import concat_tokens, slice_tokens

if TYPE_CHECKING:
    from swarmnode.runtime.scheduler import Scheduler

# Open sessions together keep at most this many times the store's positions as output rows for it.
TRACKED_ROWS_FACTOR = 4


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


class PrefixTracker:
    """A node's prompt-prefix reuse (spec §4.9): runs its sessions' steps, reusing and keeping prefixes.

    A first prompt starts from the longest prefix an earlier session with the same salt sent and is
    kept for later ones. Later steps of the session extend its chain of input hashes and output rows
    (*tracking*), so that the whole session is kept when it closes: a chat's next turn starts with
    this one. Without a store (a bit-exact backend, or ``--prefix-cache-tokens 0``) it only runs steps.

    Args:
        scheduler: runs the steps on the span.
        backend: the span's backend (``import_prefix`` / ``export_prefix`` of its caches).
        store: where prefixes are kept; ``None``: no reuse.
        sessions: the node's open sessions (its pool's), to recount the rows they track.
    """

    def __init__(
        self, scheduler: Scheduler, backend: Any, store: PrefixStore | None, sessions: Mapping[str, SessionState]
    ) -> None:
        self.scheduler = scheduler
        self.backend = backend
        self.store = store
        self.sessions = sessions
        # Output rows that open sessions keep for the store; sessions that end without a close are not
        # subtracted as they go, so the count is an upper bound (recounted in _room_to_track).
        self.tracked_rows = 0

    async def step(self, state: SessionState, hidden: WireTensor) -> tuple[WireTensor, int]:
        """Run one step of a session; a first prompt reuses the longest known prefix of its salt.

        Args:
            state: the session (its cache is appended to).
            hidden: the step's inputs ``(B, T, H)``.

        Returns:
            The output ``(B, T, H)`` and how many leading positions were reused (``cached_tokens``).
        """
        fresh = state.position == 0
        store = self.store
        # Only a single sequence's first prompt of two or more rows can share a prefix: at least one
        # position is always computed.
        if not (fresh and store is not None and state.prefix_salt and hidden.shape[0] == 1 and hidden.shape[1] > 1):
            out = await self.scheduler.step(hidden, state.cache, fresh=fresh)
            self._track(state, hidden, out)
            return out, 0
        hashes = chain_hashes(state.prefix_salt, hidden)
        found = store.longest(hashes, hidden.shape[1] - 1)
        if found is None:
            out, reused = await self.scheduler.step(hidden, state.cache, fresh=True), 0
        else:
            entry, reused = found
            self.backend.import_prefix(state.cache, entry.kv, reused)
            rest = await self.scheduler.step(slice_tokens(hidden, reused, hidden.shape[1]), state.cache)
            out = concat_tokens([slice_tokens(entry.output, 0, reused), rest])
        store.add(Prefix(hashes, self.backend.export_prefix(state.cache, hidden.shape[1]), out))
        if self._room_to_track(len(hashes)):  # continued by later steps (_track)
            state.prefix_hashes, state.prefix_outputs = hashes, [out]
            self.tracked_rows += len(hashes)
        return out, reused

    def keep(self, state: SessionState) -> None:
        """Keep a closing session's positions as a prefix for later sessions with its salt (spec §4.9).

        Call it before the session's cache is freed.
        """
        hashes = state.prefix_hashes
        if hashes is None:
            return
        self.tracked_rows = max(0, self.tracked_rows - len(hashes))
        state.prefix_hashes, state.prefix_outputs, outputs = None, [], state.prefix_outputs
        if len(outputs) < 2 or state.busy or len(hashes) != state.position:
            return  # nothing beyond its first prompt (kept already), or a step still running
        self.store.add(Prefix(hashes, self.backend.export_prefix(state.cache, len(hashes)), concat_tokens(outputs)))

    def _track(self, state: SessionState, hidden: WireTensor, out: WireTensor) -> None:
        """Extend a tracked session's chain of input hashes and its output rows by a later step."""
        if state.prefix_hashes is None:
            return
        new = hidden.shape[1]
        if (
            hidden.shape[0] != 1
            or len(state.prefix_hashes) + new > self.store.max_tokens  # would not fit the store
            or not self._room_to_track(new)
        ):
            self.tracked_rows = max(0, self.tracked_rows - len(state.prefix_hashes))
            state.prefix_hashes, state.prefix_outputs = None, []  # stop tracking this session
            return
        state.prefix_hashes.extend(chain_hashes(state.prefix_salt, hidden, after=state.prefix_hashes[-1]))
        state.prefix_outputs.append(out)
        self.tracked_rows += new

    def _room_to_track(self, rows: int) -> bool:
        """Whether all sessions together may track ``rows`` more output rows: at most
        :data:`TRACKED_ROWS_FACTOR` x the store's positions, so a crowd of long sessions cannot fill the
        memory. Near the limit the count is recomputed from the open sessions."""
        limit = TRACKED_ROWS_FACTOR * self.store.max_tokens
        if self.tracked_rows + rows > limit:
            self.tracked_rows = sum(len(s.prefix_hashes or ()) for s in self.sessions.values())
        return self.tracked_rows + rows <= limit
