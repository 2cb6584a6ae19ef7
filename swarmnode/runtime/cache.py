"""Sessions and the node's KV-cache budget, counted in tokens (one token = one position of one row in every block).

A session reserves ``max_length`` tokens when it opens, so a step can never run the node out
of memory halfway: a session that does not fit is refused up front with ``out_of_cache``. A
session's first step sets how many rows (sequences, ``B``) its cache holds, and each row takes
``max_length`` tokens of its own: a first step of more rows than the budget holds is refused with
``out_of_cache`` before anything runs (counting only ``max_length`` would let one 64-row session
take 64 times what the budget says).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from swarmnode.protocol import ProtocolError


class OutOfCache(ProtocolError):
    """The node's cache budget cannot hold another session of that length."""

    def __init__(self, wanted: int, left: int, rows: int = 1) -> None:
        of_rows = f" ({rows} rows)" if rows > 1 else ""
        super().__init__("out_of_cache", f"session needs {wanted} cache tokens{of_rows} but only {left} are free")


@dataclass
class SessionState:
    """One inference session on this node."""

    session_id: str
    max_length: int  # positions of each row; rows x max_length tokens are reserved in the budget
    cache: Any  # backend-specific KV cache
    owner: object  # the connection that opened it; its sessions die with it
    position: int = 0  # tokens already in the cache
    served_tokens: int = 0  # positions run through the span, B x T summed over steps (usage receipts, spec §8.2)
    last_used: float = field(default_factory=time.monotonic)
    busy: bool = False  # a step is running (pushed steps run concurrently, spec §7)
    prefix_salt: str = ""  # shares first-prompt prefixes with sessions of the same salt (spec §4.9)
    # Chain hashes and output rows of every position so far, kept when the session closes (§4.9); None: not kept.
    prefix_hashes: list | None = None
    prefix_outputs: list = field(default_factory=list)
    rows: int = 1  # sequences (B) in the cache: 1 until the first step sets it, then fixed

    @property
    def reserved(self) -> int:
        """Tokens of the budget this session holds: ``rows x max_length``."""
        return self.rows * self.max_length


class CachePool:
    """Tracks open sessions against a token budget, and evicts idle ones.

    Args:
        budget_tokens: total tokens of KV cache the node will hold across sessions.
        idle_timeout: seconds after which an unused session is closed.
    """

    def __init__(self, budget_tokens: int, idle_timeout: float = 300.0) -> None:
        self.budget_tokens = budget_tokens
        self.idle_timeout = idle_timeout
        self.sessions: dict[str, SessionState] = {}

    @property
    def tokens_left(self) -> int:
        """Tokens not reserved by any session."""
        return self.budget_tokens - sum(s.reserved for s in self.sessions.values())

    def open(self, session_id: str, max_length: int, cache: Any, owner: object) -> SessionState:
        """Reserve room and register a session.

        Raises:
            ProtocolError: ``session_exists`` when the id is taken.
            OutOfCache: not enough free tokens.
        """
        if session_id in self.sessions:
            raise ProtocolError("session_exists", f"session {session_id!r} is already open")
        if max_length > self.tokens_left:
            raise OutOfCache(max_length, self.tokens_left)
        state = SessionState(session_id, max_length, cache, owner)
        self.sessions[session_id] = state
        return state

    def set_rows(self, state: SessionState, rows: int) -> None:
        """Reserve ``rows x max_length`` tokens for ``state`` instead of what it holds now.

        Only before its first step has run: the cache's rows are fixed from then on.

        Raises:
            ProtocolError: ``bad_shape`` when the session's cache already holds another number of rows.
            OutOfCache: the budget cannot hold that many rows (the session keeps what it had).
        """
        if rows == state.rows:
            return
        if state.position:
            raise ProtocolError(
                "bad_shape", f"a step of {rows} rows, but the session holds {state.rows} (set by its first step)"
            )
        left = self.tokens_left + state.reserved  # what this session holds is free for its own resize
        if rows * state.max_length > left:
            raise OutOfCache(rows * state.max_length, left, rows)
        state.rows = rows

    def get(self, session_id: str, owner: object) -> SessionState:
        """The session, if this connection owns it.

        Raises:
            ProtocolError: ``unknown_session`` (never opened, closed, expired, or someone else's).
        """
        state = self.sessions.get(session_id)
        if state is None or state.owner is not owner:
            raise ProtocolError("unknown_session", f"no open session {session_id!r} on this connection")
        state.last_used = time.monotonic()
        return state

    def close(self, session_id: str) -> None:
        """Drop a session and free its cache."""
        self.sessions.pop(session_id, None)

    def close_owned_by(self, owner: object) -> int:
        """Close every session of a connection that went away; return how many."""
        ids = [sid for sid, s in self.sessions.items() if s.owner is owner]
        for sid in ids:
            self.close(sid)
        return len(ids)

    def evict_idle(self, now: float | None = None) -> list[str]:
        """Close sessions unused for longer than ``idle_timeout``; return their ids."""
        now = time.monotonic() if now is None else now
        ids = [sid for sid, s in self.sessions.items() if now - s.last_used > self.idle_timeout]
        for sid in ids:
            self.close(sid)
        return ids
