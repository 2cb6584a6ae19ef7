"""A delaying TCP proxy: emulates a wide-area link in front of a node on loopback.

This machine's kernel has no ``netem`` qdisc, so latency and bandwidth are emulated in user space:
every chunk read from one side is delivered to the other after a fixed one-way delay, and, with a
bandwidth cap, no faster than the cap allows (chunks queue behind each other as on a real link).
Only loopback addresses are accepted, and each direction buffers a bounded number of bytes
(reading pauses while the queue is full).
"""

from __future__ import annotations

import asyncio
import ipaddress
import threading
import time
from collections import deque
from dataclasses import dataclass


def _check_loopback(host: str) -> None:
    if host == "localhost":
        return
    if not ipaddress.ip_address(host).is_loopback:
        raise ValueError(f"the delay proxy only works on loopback, not {host!r}")


@dataclass(frozen=True)
class LinkShape:
    """One emulated link."""

    one_way_delay_s: float = 0.0  # added in each direction, so RTT grows by twice this
    bandwidth_bytes_per_s: float | None = None  # per direction; None = unlimited
    max_buffer_bytes: int = 8 * 1024 * 1024  # per direction; reading pauses above it


class _Pipe:
    """One direction of one connection: read, hold for the delay (and the bandwidth), write."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, proxy: DelayProxy) -> None:
        self.reader, self.writer, self.proxy = reader, writer, proxy
        self.queue: deque[tuple[float, bytes]] = deque()
        self.queued = 0
        self.wire_free_at = 0.0  # when the emulated link finishes sending what is queued
        self.more = asyncio.Event()
        self.room = asyncio.Event()
        self.room.set()
        self.eof = False

    async def pump_in(self) -> None:
        try:
            while True:
                await self.room.wait()
                data = await self.reader.read(65536)
                shape = self.proxy.shape  # read per chunk: tests may degrade a link mid-run
                if not data:
                    break
                now = time.monotonic()
                start = max(now, self.wire_free_at)
                bw = shape.bandwidth_bytes_per_s
                self.wire_free_at = start + (len(data) / bw if bw else 0.0)
                self.queue.append((self.wire_free_at + shape.one_way_delay_s, data))
                self.queued += len(data)
                if self.queued >= shape.max_buffer_bytes:
                    self.room.clear()
                self.more.set()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self.eof = True
            self.more.set()

    async def pump_out(self) -> None:
        try:
            while True:
                if not self.queue:
                    if self.eof:
                        break
                    self.more.clear()
                    await self.more.wait()
                    continue
                due, data = self.queue[0]
                wait = due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                self.queue.popleft()
                self.queued -= len(data)
                if self.queued < self.proxy.shape.max_buffer_bytes:
                    self.room.set()
                self.writer.write(data)
                await self.writer.drain()
        except ConnectionError:
            pass
        finally:
            try:
                self.writer.close()
            except Exception:
                pass


class DelayProxy:
    """Listen on ``127.0.0.1:port`` and forward to ``target_host:target_port`` through an emulated link.

    Runs its own event loop in a daemon thread, so synchronous tests can use it. Use as a context
    manager, or :meth:`start` / :meth:`stop`.

    Args:
        target_port: the node's port.
        shape: delay and bandwidth of the link (assign ``proxy.shape`` to change it for new data).
        target_host: the node's loopback address.
    """

    def __init__(self, target_port: int, shape: LinkShape, target_host: str = "127.0.0.1") -> None:
        _check_loopback(target_host)
        self.target = (target_host, target_port)
        self.shape = shape
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.AbstractServer | None = None

    def url_for(self, node_url: str) -> str:
        """``node_url`` with this proxy's port instead of the node's."""
        head, rest = node_url.split("://", 1)
        hostport, _, path = rest.partition("/")
        host = hostport.rsplit(":", 1)[0]
        return f"{head}://{host}:{self.port}/{path}"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        pipes = [_Pipe(reader, up_writer, self), _Pipe(up_reader, writer, self)]
        jobs = [asyncio.ensure_future(f()) for p in pipes for f in (p.pump_in, p.pump_out)]
        try:
            await asyncio.gather(*jobs, return_exceptions=True)
        except asyncio.CancelledError:
            pass  # the proxy is stopping: end quietly (asyncio's server callback inspects this task)
        finally:
            for job in jobs:
                job.cancel()
            for w in (writer, up_writer):
                w.close()

    async def _serve(self, ready: threading.Event) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        ready.set()
        async with self._server:
            await self._server.serve_forever()

    def start(self) -> DelayProxy:
        """Start listening (returns once the port is known)."""
        ready = threading.Event()
        self._loop = asyncio.new_event_loop()

        def run() -> None:
            loop = self._loop
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self._serve(ready))
            except asyncio.CancelledError:
                pass
            finally:  # let every cancelled connection finish unwinding, then close the loop
                pending = asyncio.all_tasks(loop)
                for task in pending:
                    task.cancel()
                loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
                loop.close()

        self._thread = threading.Thread(target=run, name=f"delay-proxy-{self.target[1]}", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("the delay proxy did not start")
        return self

    def stop(self) -> None:
        """Close the listener and every proxied connection."""
        loop = self._loop
        if loop is None:
            return

        def shutdown() -> None:
            if self._server is not None:
                self._server.close()
            for task in asyncio.all_tasks(loop):
                task.cancel()

        loop.call_soon_threadsafe(shutdown)
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._loop = None

    def __enter__(self) -> DelayProxy:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
