"""A blocking connection to one node, speaking the wire protocol request by request."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable
from typing import TypeVar

from swarmnode.client.wsclient import BlockingWebSocket, MessageTooBig
from swarmnode.discovery.peers import PeerInfo
from swarmnode.protocol import Error, Info, InfoReply, Limits, Message, ProtocolError, decode, encode
from swarmnode.protocol.framing import message_bound
from swarmnode.protocol.relay import relay_key_id
from swarmnode.trust.secure_channel import ChannelError, SecureChannel, client_handshake, finish_handshake, key_id

T = TypeVar("T")

# Suites to offer, best first; every node must accept the last one (what WebCrypto can do, spec §10.2).
SUITE_PREFERENCE = ("x25519-chacha20poly1305", "x25519-aes256gcm")


class RemoteError(Exception):
    """A node answered with an Error message, or broke the protocol, or went away.

    Attributes:
        url: the node.
        code: the protocol error code (``unavailable`` when the node is unreachable).
    """

    def __init__(self, url: str, code: str, message: str) -> None:
        super().__init__(f"{url}: {code}: {message}")
        self.url = url
        self.code = code
        self.message = message


class RemoteSpan:
    """One websocket to one node, read by the thread that waits for a reply (no reader thread).
    Not thread-safe: one request at a time.

    Args:
        url: the node's ``ws://`` URL from its ready line or the tracker, or a relay address
            ``R/<key_id>`` (spec §9).
        timeout: seconds to wait for connecting and for each reply.
        public_key: the node's announced keys (tracker or an earlier ``info``), for encryption.
        secure: end-to-end encryption (spec §10). ``None`` (default): on for relay addresses, off for
            direct URLs. Without ``public_key`` the node's ``info`` is asked first, and for a relay
            address its keys must hash to the address's key id.

    Raises:
        RemoteError: ``unavailable`` when the node cannot be reached; ``bad_key`` or a handshake
            error code when the node cannot prove it holds the announced key.
    """

    def __init__(self, url: str, timeout: float = 60.0, *, public_key: str = "", secure: bool | None = None) -> None:
        self.url = url
        self.timeout = timeout
        self.reused = False  # taken from a SpanPool rather than opened for its current user
        self.peer_key = ""  # the node key the secure channel was agreed with ("" when not secure)
        self._clean = True  # every request so far got its reply: no late frame can still arrive
        self._next_id = 1
        self._channel: SecureChannel | None = None
        self.key_id = relay_key_id(url)
        # A reply is as big as the request that caused it (the same hidden states' shape), and a request
        # over the protocol's default frame limit is refused by a default node: a bigger reply is never
        # read (spec §6.4).
        self._limits = Limits()
        try:
            max_size = message_bound(self._limits.max_frame_bytes)
            self._ws = BlockingWebSocket(url, open_timeout=timeout, max_size=max_size)
        except Exception as exc:
            raise RemoteError(url, "unavailable", f"cannot connect ({type(exc).__name__}: {exc})") from None
        if secure if secure is not None else self.key_id is not None:
            try:
                self._secure(public_key)
            except BaseException:
                self.close()
                raise

    @property
    def secure(self) -> bool:
        """True once frames are end-to-end encrypted."""
        return self._channel is not None

    def _check_key(self, public_key: str) -> None:
        if self.key_id is not None:
            try:
                ok = key_id(public_key) == self.key_id
            except ValueError:
                ok = False
            if not ok:
                raise RemoteError(self.url, "bad_key", "the node's keys do not match the key id in its relay address")

    def _secure(self, public_key: str) -> None:
        if not public_key:
            public_key = self.info().public_key
        self._check_key(public_key)
        self.peer_key = public_key
        for suite in SUITE_PREFERENCE:
            try:
                self._channel = self._handshake(public_key, suite)
                return
            except RemoteError as exc:
                # A node that lacks a suite (a browser has no ChaCha20) says so in the clear; try the next.
                if (
                    exc.code != "bad_handshake"
                    or "unsupported suite" not in exc.message
                    or suite == SUITE_PREFERENCE[-1]
                ):
                    raise

    def _handshake(self, public_key: str, suite: str) -> SecureChannel:
        try:
            hello, pending = client_handshake(public_key, suite, request_id=self._next_id)
        except ValueError as exc:
            raise RemoteError(self.url, "bad_key", str(exc)) from None
        self._next_id += 1
        try:
            self._ws.send(hello, timeout=self.timeout)
            frame = self._ws.recv(timeout=self.timeout)
        except TimeoutError:
            raise RemoteError(self.url, "timeout", "no secure_ready in time") from None
        except MessageTooBig as exc:
            raise RemoteError(self.url, "bad_reply", f"reply refused unread: {exc}") from None
        except Exception as exc:
            raise RemoteError(self.url, "unavailable", f"connection lost ({type(exc).__name__})") from None
        try:
            return finish_handshake(pending, frame, max_plaintext=self._limits.max_frame_bytes)
        except ChannelError as exc:
            raise RemoteError(self.url, exc.code, exc.message) from None

    def _send_frame(self, data: bytes) -> None:
        self._ws.send(self._channel.seal(data) if self._channel is not None else data, timeout=self.timeout)

    def request(self, message: Message, timeout: float | None = None) -> Message:
        """Send a request and wait for its reply.

        Raises:
            RemoteError: an Error reply (its code), a garbled reply, a timeout or a dropped link.
        """
        message = dataclasses.replace(message, id=self._next_id)
        self._next_id += 1
        self._clean = False  # until the reply is in
        try:
            self._send_frame(encode(message))
            frame = self._ws.recv(timeout=self.timeout if timeout is None else timeout)
        except TimeoutError:
            raise RemoteError(self.url, "timeout", "no reply in time") from None
        except MessageTooBig as exc:
            raise RemoteError(self.url, "bad_reply", f"reply refused unread: {exc}") from None
        except Exception as exc:
            raise RemoteError(self.url, "unavailable", f"connection lost ({type(exc).__name__})") from None
        self._clean = True
        reply = self._parse(frame)
        if reply.id != message.id:
            raise RemoteError(self.url, "bad_reply", f"reply id {reply.id} for request {message.id}")
        return reply

    def send(self, message: Message, request_id: int | None = None) -> int:
        """Send a request without waiting for a reply (server-to-server push, spec §7); return its id.

        Raises:
            RemoteError: ``unavailable`` when the link is down.
        """
        if request_id is None:
            request_id = self._next_id
            self._next_id += 1
        self._clean = False  # replies to sent messages come whenever they come: never pooled again
        try:
            self._send_frame(encode(dataclasses.replace(message, id=request_id)))
        except Exception as exc:
            raise RemoteError(self.url, "unavailable", f"connection lost ({type(exc).__name__})") from None
        return request_id

    def receive(self, timeout: float) -> Message | None:
        """The next frame from the node, or ``None`` if none arrives within ``timeout`` seconds.

        Raises:
            RemoteError: an Error frame (its code), a garbled frame or a dropped link.
        """
        try:
            frame = self._ws.recv(timeout=timeout)
        except TimeoutError:
            return None
        except MessageTooBig as exc:
            raise RemoteError(self.url, "bad_reply", f"frame refused unread: {exc}") from None
        except Exception as exc:
            raise RemoteError(self.url, "unavailable", f"connection lost ({type(exc).__name__})") from None
        return self._parse(frame)

    def _parse(self, frame: bytes | str) -> Message:
        """Decode a node's frame (opening it first on a secure channel); an Error frame or a garbled one
        becomes a RemoteError."""
        if self._channel is not None:
            try:
                frame = self._channel.open(frame)
            except ChannelError as exc:  # altered, replayed or reordered on the way, or the node gave up
                raise RemoteError(self.url, exc.code, exc.message) from None
        try:
            reply = decode(frame, self._limits)
        except ProtocolError as exc:
            raise RemoteError(self.url, "bad_reply", exc.message) from None
        if isinstance(reply, Error):
            raise RemoteError(self.url, reply.code, reply.message)
        return reply

    def info(self) -> PeerInfo:
        """Ask the node what it serves (for a relay address, its keys must match the address)."""
        reply = self.request(Info())
        if not isinstance(reply, InfoReply):
            raise RemoteError(self.url, "bad_reply", f"expected info_reply, got {reply.TYPE}")
        self._check_key(reply.public_key)
        return PeerInfo.from_reply(self.url, reply)

    def close(self) -> None:
        """Close the websocket (the node frees this connection's sessions)."""
        try:
            self._ws.close()
        except Exception:
            pass

    def reusable(self) -> bool:
        """Whether the connection can carry another session: open, every request answered, nothing unread."""
        return self._clean and self._ws.idle()


class SpanPool:
    """Idle connections to nodes, kept for the next session (like an HTTP client's keep-alive pool).

    Every generation opens a session on each node of its route; without a pool that is a TCP connect,
    a websocket handshake (and for relayed nodes an end-to-end key agreement, spec §10) per node, per
    generation. A connection goes back to the pool only after a clean close of its session (every
    request answered, nothing unread), and one that went stale meanwhile (the node restarted) is
    replaced by a fresh one (see :meth:`open`).

    Args:
        per_node: idle connections kept per node (and encryption setting) at most.
        idle_s: an idle connection older than this is closed instead of reused.
    """

    def __init__(self, per_node: int = 8, idle_s: float = 30.0) -> None:
        self.per_node = per_node
        self.idle_s = idle_s
        self._idle: dict[tuple, list[tuple[RemoteSpan, float]]] = {}
        self._lock = threading.Lock()
        self.opened = 0
        self.reused = 0

    @staticmethod
    def _key(url: str, secure: bool | None) -> tuple:
        return url, secure if secure is not None else relay_key_id(url) is not None

    def take(self, url: str, timeout: float = 60.0, *, public_key: str = "", secure: bool | None = None) -> RemoteSpan:
        """An idle connection to ``url`` (``span.reused`` is then True: if its first request fails with
        ``unavailable``, the node may have dropped it while idle, which :meth:`open` handles), else a new
        one. A secure connection is reused only if it was agreed with ``public_key`` (when one is given).

        Raises:
            RemoteError: as :class:`RemoteSpan`.
        """
        key = self._key(url, secure)
        now = time.monotonic()
        while True:
            with self._lock:
                idle = self._idle.get(key)
                span, since = idle.pop() if idle else (None, 0.0)
            if span is None:
                break
            same_key = not public_key or not span.secure or span.peer_key == public_key
            if now - since <= self.idle_s and same_key and span.reusable():
                span.timeout = timeout
                span.reused = True
                self.reused += 1
                return span
            span.close()
        span = RemoteSpan(url, timeout, public_key=public_key, secure=secure)
        self.opened += 1
        return span

    def open(
        self,
        url: str,
        timeout: float,
        first: Callable[[RemoteSpan], T],
        *,
        public_key: str = "",
        secure: bool | None = None,
    ) -> tuple[RemoteSpan, T]:
        """A pooled (or new) connection to ``url`` with ``first(span)`` run on it; if a reused connection
        turns out to have been dropped while idle (``unavailable``: the node restarted), a fresh one
        instead. The caller owns the connection: :meth:`give` it back or close it.

        Raises:
            RemoteError: as ``first`` or :class:`RemoteSpan` (the connection is then closed).
        """
        span = self.take(url, timeout, public_key=public_key, secure=secure)
        try:
            try:
                return span, first(span)
            except RemoteError as exc:
                if not span.reused or exc.code != "unavailable":
                    raise
            span.close()
            span = RemoteSpan(url, timeout, public_key=public_key, secure=secure)
            self.opened += 1
            return span, first(span)
        except BaseException:
            span.close()
            raise

    def use(self, url: str, timeout: float, fn: Callable[[RemoteSpan], T]) -> T:
        """``fn(span)`` on a pooled connection to ``url`` (see :meth:`open`), given back afterwards."""
        span, result = self.open(url, timeout, fn)
        self.give(span)
        return result

    def give(self, span: RemoteSpan, secure: bool | None = None) -> None:
        """Keep ``span`` (taken with this ``secure``) for a later :meth:`take`, or close it if it is unfit."""
        if not span.reusable():
            span.close()
            return
        key = self._key(span.url, secure)
        with self._lock:
            idle = self._idle.setdefault(key, [])
            idle.append((span, time.monotonic()))
            extra = idle[: max(0, len(idle) - self.per_node)]
            del idle[: len(extra)]
        for old, _ in extra:
            old.close()

    def clear(self) -> None:
        """Close every idle connection."""
        with self._lock:
            spans = [span for idle in self._idle.values() for span, _ in idle]
            self._idle.clear()
        for span in spans:
            span.close()


POOL = SpanPool()
"""The process's pool of idle node connections, shared by every session of every client object."""
