"""The node: loads its span and serves it over a websocket (spec §2-§6).

The node decodes frames and routes each request to its handler (:mod:`swarmnode.server.handlers`);
prompt-prefix reuse lives in :class:`~swarmnode.runtime.prefix.PrefixTracker`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import ssl
import sys
from concurrent.futures import ThreadPoolExecutor

import torch
from websockets.asyncio.server import ServerConnection, serve
from websockets.http11 import Request, Response

from swarmnode.models import Checkpoint, load_span
from swarmnode.protocol import Error, InfoReply, Message, ProtocolError, Step, decode, encode
from swarmnode.protocol.framing import message_bound
from swarmnode.runtime import CachePool
from swarmnode.runtime.planning import TORCH_DTYPES, build_backend, resolve_device, resolve_precision
from swarmnode.runtime.prefix import PrefixStore, PrefixTracker
from swarmnode.runtime.scheduler import Scheduler
from swarmnode.server.config import WS_PATH, NodeConfig
from swarmnode.server.connections import ConnectionsPerAddress
from swarmnode.server.corruption import Corruptor
from swarmnode.server.dht_announce import start_announcers
from swarmnode.server.handlers import HANDLERS
from swarmnode.server.logs import configure_logging
from swarmnode.server.metrics import NodeMetrics
from swarmnode.server.placement import choose_blocks
from swarmnode.server.push import PushRelay
from swarmnode.server.receipts import ReceiptOutbox, start_outbox
from swarmnode.server.relay_hub import RELAY_SUFFIX, RelayHub, RelayLimits
from swarmnode.server.secure_conn import SecureConnection
from swarmnode.server.signals import stop_on_signals
from swarmnode.server.throughput import Throughput, node_throughput
from swarmnode.server.weights import object_routes, open_weights
from swarmnode.trust.identity import NodeIdentity
from swarmnode.trust.secure_channel import ChannelError, is_handshake_frame
from swarmnode.version import __version__

log = logging.getLogger("swarmnode.node")

# Seconds a stopping node spends on its goodbyes (receipts flushed, relay detached, the portal told) and
# on closing its clients' connections, so that SIGTERM always ends it soon even when a peer stays silent.
SHUTDOWN_GRACE_S = 5.0
# Longest lone decoding step a node runs on its event loop instead of its compute thread (Scheduler.inline_s).
INLINE_S = 0.02
#: What a peer is told about a failure inside the node (spec §5): the details go to the node's log only.
INTERNAL_MESSAGE = "internal error on the node (details are in its log)"


class Node:
    """A node serving blocks [start, end) of one model.

    Args:
        config: the node's configuration.
    """

    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        self.limits = config.limits
        if config.num_threads:
            torch.set_num_threads(config.num_threads)
        self.weights = open_weights(config)  # a checkpoint, or a checkout of a trusted manifest (cold join)
        config = self.config = self.weights.config  # its span fixed when the cold join chose one
        self.checkpoint = Checkpoint(self.weights.path)
        self.model_name = self.weights.name
        self.device = resolve_device(config.device)
        self.precision, precision_reason = resolve_precision(self.device, config.dtype)
        self.start, self.end, self.capacity = choose_blocks(
            config, self.checkpoint, self.model_name, self.device, self.precision
        )
        self.hidden_size = self.checkpoint.hidden_size
        load_dtype = TORCH_DTYPES.get(self.precision, torch.float32)  # int8 spans load fp32, then quantize
        span = load_span(self.checkpoint, self.start, self.end, load_dtype, self.device)
        self.weights.record_loaded(self.start, self.end)  # the blocks' hashes, reported in Info (spec §4.10)
        self.backend, backend_reason = build_backend(
            span,
            self.device,
            self.precision,
            config.backend,
            config.num_threads,
            config.small_step_threads,
            machine_lock=config.machine_lock,
        )
        log.info(
            "precision %s (%s); backend %s (%s)", self.precision, precision_reason, self.backend.name, backend_reason
        )
        self.backend_reason = backend_reason
        self.pool = CachePool(config.cache_tokens, config.idle_timeout)
        self.max_session_length = min(
            self.limits.max_session_length,
            int(getattr(self.checkpoint.config, "max_position_embeddings", 1 << 30)),
        )
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="compute")
        self.scheduler = Scheduler(
            self.backend,
            self._executor,
            max_batch=config.max_batch,
            prefill_chunk=config.prefill_chunk,
            batch_window=config.batch_window,
            machine_lock=config.machine_lock,
            # A node relaying for others keeps its event loop free: a lone step run inline there would
            # hold up every relayed frame for as long as the step takes.
            inline_s=0.0 if config.relay_capacity > 0 else INLINE_S,
        )
        # Runs sessions' steps, reusing recent prompts of sessions with the same salt (spec §4.9; backends that can).
        store = (
            PrefixStore(config.prefix_cache_tokens)
            if config.prefix_cache_tokens > 0 and hasattr(self.backend, "import_prefix")
            else None
        )
        self.prefixes = PrefixTracker(self.scheduler, self.backend, store, self.pool.sessions)
        # Signs what the node serves and agrees session keys (announced as Info.public_key).
        self.identity = NodeIdentity.load_or_create(config.identity) if config.identity else NodeIdentity.generate()
        self.url = ""
        self.state = "online"  # "draining" while about to move (spec §4.8)
        self.throughput = Throughput()  # measured after start (spec §4.7)
        self.push = PushRelay(self)
        # Test/demo only (hidden flag): perturb a fraction of step outputs, then sign them as usual.
        self.corruptor = (
            Corruptor(config.corrupt_fraction, seed=config.corrupt_seed) if config.corrupt_fraction else None
        )
        self.moving_to: tuple[int, int] | None = None
        self.receipts: ReceiptOutbox | None = None  # countersigned receipts to the portal (spec §8.4)
        # Relays (spec §9): a hub when this node relays for others, a link when it is reached through one.
        self.relay_hub = (
            RelayHub(lambda: self.url + RELAY_SUFFIX, RelayLimits(capacity=config.relay_capacity))
            if config.relay_capacity > 0
            else None
        )
        self.relay_link = None
        self._stopped: asyncio.Future | None = None
        self._stop_requested = False
        self.connections = ConnectionsPerAddress(config.max_connections_per_ip)  # direct ones (§6.5)
        self.metrics = NodeMetrics(self, config.metrics)  # GET /metrics on this port (server/metrics.py)

    @property
    def address(self) -> str:
        """Where clients reach this node: its relay address while relayed (spec §9; "" while between relays)."""
        return self.relay_link.address if self.relay_link is not None else self.url

    # -- message handling ---------------------------------------------------------------

    def info(self, request_id: int = 0) -> InfoReply:
        """What this node serves, for :class:`Info` requests and announcements."""
        return InfoReply(
            id=request_id,
            model=self.model_name,
            start_block=self.start,
            end_block=self.end,
            num_blocks=self.checkpoint.num_blocks,
            hidden_size=self.hidden_size,
            dtype=self.precision,
            backend=self.backend.name,
            device=self.device,
            version=__version__,
            cache_tokens_left=self.pool.tokens_left,
            max_session_length=self.max_session_length,
            open_sessions=len(self.pool.sessions),
            throughput=self.throughput.decode,
            prefill_throughput=self.throughput.prefill,
            state=self.state,
            public_key=self.identity.public_key,
            **self.weights.reported(),
        )

    async def handle_frame(self, frame: bytes | str, owner: object) -> Message | None:
        """Turn one incoming frame into exactly one reply; never raises for peer input.

        Args:
            frame: one websocket message (spec §2).
            owner: the connection it came on (sessions belong to it, §1.3).

        Returns:
            The reply; ``None`` for a pushed step, which answers on its own (§7).
        """
        request_id = 0
        session_id = ""
        try:
            msg = decode(frame, self.limits)
            request_id = msg.id
            session_id = getattr(msg, "session_id", "")
            if isinstance(msg, Step) and msg.push_key:  # server-to-server push (spec §7)
                refused = self.push.accept(msg)
                if refused is None:  # runs on its own: the link's next frames must not wait for it
                    self.push.start(msg)
                return refused
            return await self.dispatch(msg, owner)
        except ProtocolError as exc:
            return Error(id=request_id, code=exc.code, message=exc.message, session_id=session_id)
        except Exception:  # a bug or a backend failure: this session's cache is suspect
            # The details (paths, shapes, library versions) stay in our log: a peer learns only the code.
            log.exception("internal error while handling a request", extra=_ids(session_id, request_id))
            if session_id:
                self.pool.close(session_id)
            return Error(id=request_id, code="internal", message=INTERNAL_MESSAGE, session_id=session_id)

    async def dispatch(self, msg: Message, owner: object) -> Message:
        """The reply of the handler for ``msg``'s type (pushed steps, already accepted, come here too)."""
        handler = HANDLERS.get(type(msg))
        if handler is None:  # a reply sent as a request (spec §4.6)
            raise ProtocolError("unexpected_message", f"a node does not accept {msg.TYPE!r} messages")
        return await handler(self, msg, owner)

    # -- networking -----------------------------------------------------------------------

    async def _connection(self, ws: ServerConnection) -> None:
        path = getattr(getattr(ws, "request", None), "path", WS_PATH).split("?")[0]
        if self.relay_hub is not None and path.startswith(WS_PATH + RELAY_SUFFIX):
            await self.relay_hub.handle(ws, path[len(WS_PATH + RELAY_SUFFIX) :])
            return
        ip = _remote_ip(ws)  # None through a relay: the relay hub bounds its own connections
        if ip is not None and not self.connections.admit(ip):
            await self.connections.refuse(ws, ip)
            return
        conn = ws  # becomes a SecureConnection after a secure_hello (spec §10)
        try:
            async for frame in ws:
                self.metrics.received(frame)
                if conn is not ws:
                    frame = conn.open(frame)
                elif is_handshake_frame(frame):
                    conn = await SecureConnection.accept(ws, self.identity, frame, self.limits.max_frame_bytes) or ws
                    continue
                reply = await self.handle_frame(frame, conn)
                if reply is not None:
                    data = encode(reply)
                    self.metrics.replied(reply, len(data))
                    await conn.send(data)
        except ChannelError as exc:  # tampered, replayed or reordered: this connection is done
            log.warning("closing a secure connection: %s", exc)
            try:
                await ws.send(encode(Error(code=exc.code, message=exc.message)))
                await ws.close()
            except Exception:
                pass
        except Exception as exc:  # a dropped connection must never take the node down
            log.info("connection ended: %s", exc)
        finally:
            if ip is not None:
                self.connections.release(ip)
            closed = self.pool.close_owned_by(ws) + (self.pool.close_owned_by(conn) if conn is not ws else 0)
            if closed:
                log.info("freed %d session(s) of a closed connection", closed)

    def _check_path(self, connection: ServerConnection, request: Request) -> Response | None:
        if (metrics := self.metrics.respond(connection, request)) is not None:
            return metrics
        path = request.path.split("?")[0]
        relay_path = WS_PATH + RELAY_SUFFIX
        if self.relay_hub is not None and (path == relay_path or path.startswith(relay_path + "/")):
            return None
        if path != WS_PATH:
            return connection.respond(404, f"this node serves {WS_PATH}\n")
        return None

    async def _reap(self) -> None:
        while True:
            await asyncio.sleep(min(5.0, self.config.idle_timeout / 2))
            for sid in self.pool.evict_idle():
                log.info("evicted idle session %s", sid, extra=_ids(sid))

    async def serve(self, ready: asyncio.Future | None = None) -> None:
        """Listen until cancelled; print the ready line once listening."""
        tls = tls_context(self.config.tls_cert, self.config.tls_key)  # None: plain ws:// (spec §1.1)
        async with serve(
            self._connection,
            self.config.host,
            self.config.port,
            # A frame plus room for a seal and a relay envelope; bigger messages are never read (§6.3).
            max_size=message_bound(self.limits.max_frame_bytes),
            compression=None,  # float bytes do not compress; deflate would only cost CPU
            process_request=object_routes(self.weights, self.limits.max_frame_bytes, self._check_path),
            ping_interval=20,
            ping_timeout=60,
            close_timeout=SHUTDOWN_GRACE_S / 2,  # a client that never answers our close does not hold us up
            ssl=tls,
        ) as server:
            port = next(iter(server.sockets)).getsockname()[1]
            host = self.config.public_host or self.config.host
            self.url = f"{'wss' if tls else 'ws'}://{host}:{port}{WS_PATH}"
            reaper = asyncio.create_task(self._reap())
            line = {
                "event": "ready",
                "url": self.url,
                "model": self.model_name,
                "start_block": self.start,
                "end_block": self.end,
                "backend": self.backend.name,
                "device": self.device,
                "dtype": self.precision,
                "pid": os.getpid(),
            }
            print(json.dumps(line), flush=True)
            if ready is not None:
                ready.set_result(self.url)
            loop = asyncio.get_running_loop()
            if self.config.measure_throughput:
                self.throughput = await self.scheduler.run_exclusive(node_throughput, self)
            from swarmnode.server.relay_link import start_relaying

            self.relay_link = await start_relaying(self)  # None while directly reachable (spec §9.3)
            announcer = start_announcers(self)  # None unless --portal or --dht was given
            self.receipts = start_outbox(self)  # likewise
            rebalancer = None
            if self.config.rebalance_interval > 0:
                from swarmnode.server.rebalance import rebalance_loop

                rebalancer = asyncio.create_task(rebalance_loop(self))
            self._stopped = loop.create_future()
            if self._stop_requested:  # stopped while starting up
                self._stopped.set_result(None)
            try:
                await self._stopped
            finally:
                reaper.cancel()
                if rebalancer is not None:
                    rebalancer.cancel()
                await self._say_goodbye(announcer)

    async def _say_goodbye(self, announcer) -> None:
        """Close push links, flush receipts, detach from the relay and leave the portal, all at once and
        within :data:`SHUTDOWN_GRACE_S` (a silent portal or relay must not keep a stopping node alive)."""
        goodbyes = [self.push.close()]
        if self.receipts is not None:
            goodbyes.append(self.receipts.close(flush_timeout=SHUTDOWN_GRACE_S / 2))
        if self.relay_link is not None:
            goodbyes.append(self.relay_link.stop())
        if announcer is not None:
            goodbyes.append(announcer.close())
        try:
            async with asyncio.timeout(SHUTDOWN_GRACE_S):
                await asyncio.gather(*goodbyes, return_exceptions=True)
        except TimeoutError:
            log.warning("stopping: goodbyes unfinished after %.0f s (a silent portal or relay)", SHUTDOWN_GRACE_S)

    def stop(self) -> None:
        """Stop serving gracefully (SIGTERM): :meth:`serve` says its goodbyes and returns."""
        self._stop_requested = True
        if self._stopped is not None and not self._stopped.done():
            self._stopped.set_result(None)

    def request_move(self, start: int, end: int) -> None:
        """Stop serving so that :func:`run_node` restarts the node on blocks ``[start, end)``."""
        self.moving_to = (start, end)
        if self._stopped is not None and not self._stopped.done():
            self._stopped.set_result(None)


def tls_context(cert: str | None, key: str | None) -> ssl.SSLContext | None:
    """The server-side TLS context for ``--tls-cert``/``--tls-key`` (PEM files); ``None`` without them.

    Raises:
        OSError, ssl.SSLError: unreadable or mismatched files.
    """
    if not cert:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    return context


def _ids(session_id: str = "", request_id: int = 0) -> dict:
    """The ids a log event carries as fields (JSON log lines): the session and the peer's request number."""
    return {"session_id": session_id or None, "request_id": request_id or None}


def _remote_ip(ws) -> str | None:
    """The peer's IP address of a direct websocket; ``None`` for a relayed connection (no socket of its own)."""
    try:
        address = ws.remote_address
    except AttributeError:
        return None
    return str(address[0]) if address else None


def run_node(config: NodeConfig) -> None:
    """Load the span and serve it in the foreground until interrupted."""
    configure_logging(config.log_format)  # text, or one JSON event per line (--log-format json)

    def _terminate(signum, frame):  # SIGTERM (systemd, LocalSwarm.stop) leaves as gracefully as Ctrl-C
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _terminate)
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:  # started in the background of a script
        signal.signal(signal.SIGINT, signal.default_int_handler)
    node = Node(config)
    try:
        import uvloop  # optional speed-up (the 'speed' extra); not available on Windows

        runner = uvloop.run
    except ImportError:
        runner = asyncio.run

    async def main() -> None:
        # From here on SIGTERM asks the loop to stop the node; raising KeyboardInterrupt inside the running
        # loop (the handler above, fine while loading) could land in any callback and strand the cleanup.
        # Windows' loops lack add_signal_handler: stop_on_signals falls back to signal.signal there.
        with stop_on_signals(asyncio.get_running_loop(), node.stop):
            await node.serve()

    try:
        runner(main())
    except KeyboardInterrupt:
        pass
    if node.moving_to is None:
        log.info("stopped")
    if node.moving_to is not None:  # rebalancing: start over on the new span, same port
        from swarmnode.server.rebalance import restart_args

        port = int(node.url.rsplit(":", 1)[1].split("/", 1)[0]) if node.url else config.port
        args = restart_args(sys.argv[1:], node.moving_to, port)
        log.info("moving to blocks %d:%d: restarting", *node.moving_to)
        os.execv(sys.executable, [sys.executable, "-m", "swarmnode", *args])
