"""A blocking websocket client that reads in the calling thread.

``websockets.sync`` reads every connection on a background thread and hands each message to the
caller through a queue: two thread wake-ups per reply, ~0.15 ms a hop on a small cloud VM, and one
more thread per node contending for the GIL. A client sending one request and waiting for its reply
needs neither, so this client drives websockets' Sans-I/O protocol (``websockets.client.
ClientProtocol``: handshake, framing, pings and closing stay the library's) on a blocking socket,
from whichever thread sends and receives.

While nobody reads, the node's keepalive pings would go unanswered and the node would drop the
connection (and its sessions); one shared :class:`_KeepAlive` thread therefore reads every idle
connection every few seconds, which answers them.
"""

from __future__ import annotations

import collections
import socket
import ssl
import threading
import time
import weakref

from websockets.client import ClientProtocol
from websockets.exceptions import InvalidHandshake, PayloadTooBig
from websockets.frames import Frame, Opcode
from websockets.http11 import Response
from websockets.protocol import State
from websockets.uri import parse_uri

READ_BYTES = 1 << 20


class ConnectionLost(ConnectionError):
    """The connection closed (by either side) or broke."""


class MessageTooBig(ConnectionLost):
    """The peer sent a message over ``max_size``: the connection was closed (code 1009) without reading it."""


class BlockingWebSocket:
    """One client websocket; every call blocks its caller. One thread at a time uses it (a lock
    enforces that; the keepalive thread only reads while nobody else does).

    Args:
        url: ``ws://`` or ``wss://`` URL.
        open_timeout: seconds for the TCP connection, TLS and the opening handshake.
        max_size: largest message accepted (``None``: no limit); a bigger one is never read into
            memory: it fails the connection, and :meth:`recv` raises :class:`MessageTooBig`.

    Raises:
        OSError, TimeoutError: the connection could not be opened.
        websockets.exceptions.InvalidHandshake: the server refused the websocket handshake.
    """

    def __init__(self, url: str, open_timeout: float = 10.0, max_size: int | None = None) -> None:
        uri = parse_uri(url)
        self._lock = threading.Lock()
        self._messages: collections.deque[bytes | str] = collections.deque()
        self._fragments: list[bytes] = []
        self._fragment_text = False
        self._closed = False
        deadline = time.monotonic() + open_timeout
        sock = socket.create_connection((uri.host, uri.port), timeout=open_timeout)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if uri.secure:
                sock = ssl.create_default_context().wrap_socket(sock, server_hostname=uri.host)
            self._sock = sock
            self._protocol = ClientProtocol(uri, max_size=max_size)
            self._protocol.send_request(self._protocol.connect())
            self._flush()
            self._handshake(deadline)
        except BaseException:
            sock.close()
            raise
        _KeepAlive.watch(self)

    def _handshake(self, deadline: float) -> None:
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not self._read(left, pump=False):
                raise TimeoutError("no handshake response in time")
            events = self._protocol.events_received()
            for i, event in enumerate(events):
                if isinstance(event, Response):
                    if self._protocol.handshake_exc is not None:
                        raise self._protocol.handshake_exc
                    if self._protocol.state is not State.OPEN:
                        raise InvalidHandshake(f"handshake refused (HTTP {event.status_code})")
                    self._pump(events[i + 1 :])  # frames that came with the response
                    return
            if self._closed:
                raise ConnectionLost("closed during the opening handshake")

    # -- I/O (lock held) ------------------------------------------------------------------

    def _flush(self) -> None:
        for data in self._protocol.data_to_send():
            if data:
                self._sock.sendall(data)
            else:  # the protocol half-closes after a closing handshake
                try:
                    self._sock.shutdown(socket.SHUT_WR)
                except OSError:
                    pass

    def _read(self, timeout: float, pump: bool = True) -> bool:
        """Read what arrives within ``timeout`` seconds (0: only what is there); False on a timeout."""
        try:
            self._sock.settimeout(timeout if timeout > 0 else 0.0)
            data = self._sock.recv(READ_BYTES)
        except (TimeoutError, BlockingIOError, ssl.SSLWantReadError):
            return False
        except OSError:
            data = b""
        if data:
            self._protocol.receive_data(data)
        else:
            self._protocol.receive_eof()
            self._closed = True
        if pump:
            self._pump()
        return True

    def _pump(self, events: list | None = None) -> None:
        """Collect whole messages from the frames received; answer pings and closes (the protocol
        queued the replies)."""
        for event in self._protocol.events_received() if events is None else events:
            if not isinstance(event, Frame):
                continue
            if event.opcode in (Opcode.TEXT, Opcode.BINARY):
                self._fragments, self._fragment_text = [event.data], event.opcode is Opcode.TEXT
            elif event.opcode is Opcode.CONT:
                self._fragments.append(event.data)
            else:
                continue
            if event.fin:
                data = b"".join(self._fragments)
                self._messages.append(data.decode() if self._fragment_text else data)
                self._fragments = []
        # A failed connection (a message over max_size, a protocol violation) is done at once: the
        # protocol discards what else arrives, and a peer that never closes must not keep us waiting.
        if self._protocol.state is State.CLOSED or self._protocol.parser_exc is not None:
            self._closed = True
        try:
            self._flush()
        except OSError:
            self._closed = True

    # -- public API -----------------------------------------------------------------------

    def send(self, data: bytes, timeout: float | None = None) -> None:
        """Send one binary message.

        Raises:
            ConnectionLost: the connection is closed or broke.
        """
        with self._lock:
            if self._closed or self._protocol.state is not State.OPEN:
                raise ConnectionLost("the connection is closed")
            self._protocol.send_binary(data)
            try:
                self._sock.settimeout(timeout)
                self._flush()
            except OSError as exc:
                self._closed = True
                raise ConnectionLost(f"send failed ({type(exc).__name__})") from None

    def recv(self, timeout: float | None = None) -> bytes | str:
        """The next message; waits up to ``timeout`` seconds (``None``: forever, 0: only if there).

        Raises:
            TimeoutError: nothing arrived in time.
            MessageTooBig: the next message was over ``max_size``.
            ConnectionLost: the connection closed before a message arrived.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            while not self._messages:
                if self._closed:
                    if isinstance(self._protocol.parser_exc, PayloadTooBig):
                        raise MessageTooBig(str(self._protocol.parser_exc))
                    raise ConnectionLost("the connection is closed")
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0 and not self._read(0.0):
                    raise TimeoutError("no message in time")
                if left is None or left > 0:
                    self._read(left if left is not None else 3600.0)
            return self._messages.popleft()

    def keepalive(self) -> None:
        """Read whatever is waiting without blocking (answers pings), unless another thread is busy
        with the connection."""
        if self._closed or not self._lock.acquire(blocking=False):
            return
        try:
            while not self._closed and self._read(0.0):
                pass
        except Exception:
            self._closed = True
        finally:
            self._lock.release()

    @property
    def closed(self) -> bool:
        """True once the connection closed or broke."""
        return self._closed

    def idle(self) -> bool:
        """Open, with no message waiting unread: fit to carry the next request (reads what arrived first)."""
        self.keepalive()
        return not self._closed and not self._messages and not self._fragments

    def close(self) -> None:
        """Start the closing handshake and drop the connection (the node frees its sessions)."""
        with self._lock:
            if not self._closed and self._protocol.state is State.OPEN:
                try:
                    self._protocol.send_close()
                    self._sock.settimeout(1.0)
                    self._flush()
                except OSError:
                    pass
            self._closed = True
            try:
                self._sock.close()
            except OSError:
                pass


class _KeepAlive:
    """One daemon thread that reads every open client connection now and then (see the module docstring)."""

    interval_s = 5.0
    _conns: weakref.WeakSet[BlockingWebSocket] = weakref.WeakSet()
    _thread: threading.Thread | None = None
    _guard = threading.Lock()
    _poke = threading.Event()

    @classmethod
    def watch(cls, conn: BlockingWebSocket) -> None:
        with cls._guard:
            cls._conns.add(conn)
            if cls._thread is None or not cls._thread.is_alive():
                cls._thread = threading.Thread(target=cls._run, name="websocket-keepalive", daemon=True)
                cls._thread.start()
        cls._poke.set()  # a round now (and the interval read afresh)

    @classmethod
    def _run(cls) -> None:
        while True:
            cls._poke.wait(cls.interval_s)
            cls._poke.clear()
            with cls._guard:
                conns = [c for c in cls._conns if not c.closed]
            for conn in conns:
                conn.keepalive()
