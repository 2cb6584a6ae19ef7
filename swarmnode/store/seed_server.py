"""A plain HTTP/1.1 server for a seeder that runs alone (``swarmnode seed``): the same requests and answers
as a node's port (answered by a :class:`~swarmnode.store.seeding.Seeder`), but connections stay open from one request
to the next, and pieces go from the object's file to the socket with ``sendfile`` (no copy in Python).

Bounded like the node: a request's head is at most ``MAX_HEAD`` bytes and must arrive within
``HEAD_TIMEOUT_S``; only ``GET`` without a body is served; at most ``MAX_CONNECTIONS`` connections at once
(more are closed at once) and at most the seeder's ``concurrency`` pieces being sent (429 beyond that). A
request it cannot parse gets a 400 and the connection closes; nothing a peer sends ends the server.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any
from urllib.parse import urlsplit

from websockets.datastructures import Headers
from websockets.http11 import Response

__all__ = ["HEAD_TIMEOUT_S", "MAX_CONNECTIONS", "MAX_HEAD", "busy_response", "error_response", "response", "serve_http"]

log = logging.getLogger(__name__)

MAX_HEAD = 8192  # bytes of request line and headers
HEAD_TIMEOUT_S = 30.0  # a connection idle (or dribbling its head) this long is closed
MAX_CONNECTIONS = 256


def response(status: int, reason: str, body: bytes, content_type: str) -> Response:
    """An answer with ``body`` (never cached)."""
    headers = Headers(
        [("Content-Type", content_type), ("Content-Length", str(len(body))), ("Cache-Control", "no-store")]
    )
    return Response(status, reason, headers, body)


def error_response(status: int, reason: str, message: str) -> Response:
    """A JSON error answer: ``{"error": message}``."""
    return response(status, reason, json.dumps({"error": message}).encode(), "application/json")


def busy_response() -> Response:
    """The 429 answer of a seeder sending as many pieces as it will at once."""
    return error_response(429, "Too Many Requests", "this node is sending as many pieces as it will at once")


def _head(response: Response, length: int, keep_alive: bool) -> bytes:
    lines = [f"HTTP/1.1 {response.status_code} {response.reason_phrase}"]
    lines += [f"{k}: {v}" for k, v in response.headers.raw_items() if k.lower() not in ("content-length", "connection")]
    lines += [f"Content-Length: {length}", f"Connection: {'keep-alive' if keep_alive else 'close'}", "", ""]
    return "\r\n".join(lines).encode("latin-1")


def _parse(head: bytes) -> tuple[str, bool] | None:
    """The path and whether the connection may stay open, or None for a request this server does not take."""
    try:
        lines = head.decode("latin-1").split("\r\n")
    except UnicodeDecodeError:  # latin-1 decodes any byte; kept for clarity
        return None
    parts = lines[0].split(" ")
    if len(parts) != 3 or parts[0] != "GET" or parts[2] not in ("HTTP/1.1", "HTTP/1.0") or not parts[1].startswith("/"):
        return None
    keep_alive = parts[2] == "HTTP/1.1"
    for line in lines[1:]:
        name, _, value = line.partition(":")
        name, value = name.strip().lower(), value.strip().lower()
        if name in ("content-length", "transfer-encoding") and value not in ("", "0"):
            return None  # a GET with a body: not ours to read
        if name == "connection":
            keep_alive = keep_alive and value != "close" or value == "keep-alive"
    return parts[1], keep_alive


class _Server:
    def __init__(self, seeder: Any) -> None:  # a seeding.Seeder (not imported: seeding imports this module)
        self.seeder = seeder
        self.connections = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            if self.connections <= MAX_CONNECTIONS:
                while await self._one(reader, writer):
                    pass
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
            pass  # the peer went away, or broke the limits
        except Exception:  # noqa: BLE001 (one bad connection must not end the server)
            log.exception("seeder connection failed")
        finally:
            self.connections -= 1
            writer.close()

    async def _one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Answer one request; whether the connection stays open for another."""
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HEAD_TIMEOUT_S)
        except asyncio.IncompleteReadError as exc:
            if exc.partial:
                raise
            return False  # closed between requests
        request = _parse(head)
        if request is None:
            await self._send(writer, error_response(400, "Bad Request", "only GET requests without a body"), False)
            return False
        path, keep_alive = request
        parts = urlsplit(path)
        wanted = self.seeder.piece(parts)  # None for a request other than an object's
        if isinstance(wanted, tuple):
            return await self._send_piece(writer, wanted, keep_alive)
        answer = wanted if wanted is not None else await self.seeder.answer(path)
        if answer is None:
            answer = error_response(404, "Not Found", "only object requests are served here")
        await self._send(writer, answer, keep_alive)
        return keep_alive

    async def _send(self, writer: asyncio.StreamWriter, response: Response, keep_alive: bool) -> None:
        writer.write(_head(response, len(response.body), keep_alive) + response.body)
        await writer.drain()

    async def _send_piece(self, writer: asyncio.StreamWriter, wanted: tuple[str, int, int], keep_alive: bool) -> bool:
        digest, offset, length = wanted
        seeder = self.seeder
        if seeder.slots.locked():
            await self._send(writer, busy_response(), keep_alive)
            return keep_alive
        async with seeder.slots:
            file = seeder.open_object(digest)
            if file is None:
                await self._send(writer, error_response(404, "Not Found", "the object went away"), keep_alive)
                return keep_alive
            with file:
                writer.write(_head(_PIECE, length, keep_alive))
                if length:
                    await asyncio.get_running_loop().sendfile(writer.transport, file, offset, length)
                await writer.drain()
        seeder.sent(length)
        return keep_alive


_PIECE = Response(
    200, "OK", Headers([("Content-Type", "application/octet-stream"), ("Cache-Control", "no-store")]), b""
)


async def serve_http(seeder: Any, host: str, port: int, ready=None) -> None:
    """Serve ``seeder``'s requests on ``host:port`` until cancelled (``ready(port)`` once listening)."""
    server = await asyncio.start_server(_Server(seeder).handle, host, port, limit=MAX_HEAD)
    async with server:
        if ready is not None:
            ready(server.sockets[0].getsockname()[1])
        await asyncio.Future()
