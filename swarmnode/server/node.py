"""The node: loads its span and serves it over a websocket (spec §2-§6)."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import torch
from websockets.asyncio.server import ServerConnection, serve
from websockets.http11 import Request, Response

from swarmnode import __version__
from swarmnode.models import Checkpoint, load_span, resolve_model
from swarmnode.models.registry import model_name
from swarmnode.protocol import (
    DTYPE_SIZES,
    CloseSession,
    Error,
    Forward,
    ForwardResult,
    Info,
    InfoReply,
    Message,
    OpenSession,
    ProtocolError,
    SessionClosed,
    SessionOpened,
    Step,
    StepResult,
    WireTensor,
    check_hidden,
    check_open_session,
    decode,
    encode,
    result_digest,
)
from swarmnode.protocol.signing import encode_signature
from swarmnode.runtime import CachePool
from swarmnode.runtime.planning import (
    TORCH_DTYPES,
    DoesNotFit,
    build_backend,
    default_memory_budget,
    parse_bytes,
    plan_memory,
    resolve_device,
    resolve_precision,
)
from swarmnode.runtime.prefix import Prefix, PrefixStore, chain_hashes
from swarmnode.runtime.scheduler import Scheduler, concat_tokens, slice_tokens
from swarmnode.server.announce import start_announcer
from swarmnode.server.config import WS_PATH, NodeConfig, parse_blocks
from swarmnode.server.corruption import Corruptor
from swarmnode.server.push import PushRelay
from swarmnode.server.receipts import ReceiptOutbox, start_outbox
from swarmnode.server.relay_hub import RELAY_SUFFIX, RelayHub, RelayLimits
from swarmnode.server.secure_conn import SecureConnection
from swarmnode.server.throughput import Throughput, node_throughput
from swarmnode.trust.identity import NodeIdentity
from swarmnode.trust.receipts import ReceiptError, countersign
from swarmnode.trust.secure_channel import ChannelError, is_handshake_frame

log = logging.getLogger("swarmnode.node")

# Seconds a stopping node spends on its goodbyes (receipts flushed, relay detached, the portal told) and
# on closing its clients' connections, so that SIGTERM always ends it soon even when a peer stays silent.
SHUTDOWN_GRACE_S = 5.0
# Longest lone decoding step a node runs on its event loop instead of its compute thread (Scheduler.inline_s).
INLINE_S = 0.02
# Open sessions together keep at most this many times --prefix-cache-tokens output rows for the prefix store.
TRACKED_ROWS_FACTOR = 4


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
        path = resolve_model(config.model)
        self.checkpoint = Checkpoint(path)
        self.model_name = model_name(config.model)
        self.device = resolve_device(config.device)
        self.precision, precision_reason = resolve_precision(self.device, config.dtype)
        self.start, self.end = self._choose_blocks()
        self.hidden_size = self.checkpoint.hidden_size
        load_dtype = TORCH_DTYPES.get(self.precision, torch.float32)  # int8 spans load fp32, then quantize
        span = load_span(self.checkpoint, self.start, self.end, load_dtype, self.device)
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
        # Recent first prompts, reused by later sessions with the same salt (spec §4.9; backends that can).
        self.prefixes = (
            PrefixStore(config.prefix_cache_tokens)
            if config.prefix_cache_tokens > 0 and hasattr(self.backend, "import_prefix")
            else None
        )
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
        self._tracked_rows = 0  # output rows sessions keep for the prefix store (see _track)

    def _choose_blocks(self) -> tuple[int, int]:
        """The span to serve: ``--blocks``, or ``--num-blocks`` from block 0, within ``--max-memory``."""
        config, num = self.config, self.checkpoint.num_blocks
        plan = None
        if config.max_memory or config.num_blocks == "auto":
            budget = parse_bytes(config.max_memory) if config.max_memory else default_memory_budget(self.device)
            # Prompt prefixes kept for reuse (§4.9) take room like cache tokens (ONNX Runtime on CPU only).
            reuse = config.prefix_cache_tokens if self.device == "cpu" and config.backend != "torch" else 0
            plan = plan_memory(self.checkpoint, self.precision, budget, config.cache_tokens + reuse)
        self.capacity = min(num, plan.max_blocks if plan else int(config.num_blocks or num))
        if config.blocks == "auto" or (not config.blocks and (config.portal or config.peers)):
            from swarmnode.server.placement import auto_blocks

            start, end = auto_blocks(self.model_name, num, self.capacity, config.portal, list(config.peers))
        elif config.blocks:
            start, end = parse_blocks(config.blocks, num)
        elif config.num_blocks:
            count = plan.max_blocks if config.num_blocks == "auto" else int(config.num_blocks)
            start, end = 0, min(num, count)
        else:
            start, end = 0, num
        if plan is not None and end - start > plan.max_blocks:
            raise DoesNotFit(f"blocks {start}:{end} do not fit: {plan.explain(end - start)}")
        return start, end

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
        )

    async def handle_frame(self, frame: bytes | str, owner: object) -> Message | None:
        """Turn one incoming frame into exactly one reply (none for a pushed step); never raises for peer input."""
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
            if isinstance(msg, OpenSession) and self.state == "draining":
                raise ProtocolError("out_of_cache", "this node is draining (about to move): open the session elsewhere")
            reply = await self._dispatch(msg, owner)
            if isinstance(msg, OpenSession) and msg.push_key:
                self.push.register(msg.session_id, msg.push_key, owner)
            return reply
        except ProtocolError as exc:
            return Error(id=request_id, code=exc.code, message=exc.message, session_id=session_id)
        except Exception as exc:  # a bug or a backend failure: this session's cache is suspect
            log.exception("internal error while handling a request")
            if session_id:
                self.pool.close(session_id)
            return Error(id=request_id, code="internal", message=f"{type(exc).__name__}: {exc}", session_id=session_id)

    async def _dispatch(self, msg: Message, owner: object) -> Message:
        if isinstance(msg, Step):
            state = self.pool.get(msg.session_id, owner)
            hidden = check_hidden(msg.hidden, self.hidden_size, self.limits)
            if state.busy:  # pushed steps run concurrently (spec §7): one step per session at a time
                raise ProtocolError(
                    "bad_position", f"step at position {msg.position} while another step of the session runs"
                )
            if msg.position != state.position:
                raise ProtocolError(
                    "bad_position",
                    f"step at position {msg.position} but the session's cache holds {state.position}",
                )
            new_len = state.position + hidden.shape[1]
            if new_len > state.max_length:
                raise ProtocolError(
                    "session_full",
                    f"{new_len} tokens would exceed the session's max_length {state.max_length}",
                )
            started = time.perf_counter()
            state.busy = True
            try:
                out, cached = await self._run_step(state, hidden)
            finally:
                state.busy = False
            if self.corruptor is not None:
                out = self.corruptor.maybe_perturb(out)
            state.position = new_len
            state.served_tokens += hidden.shape[0] * hidden.shape[1]  # B x T (spec §8.2)
            compute_us = int((time.perf_counter() - started) * 1e6)
            # Signing costs ~0.1-0.3 ms a hop: only for clients that check signatures (audits, §11.2).
            signature = self._sign("step", msg.session_id, msg.position, hidden, out) if not msg.skip_signature else ""
            return StepResult(
                id=msg.id,
                session_id=msg.session_id,
                position=new_len,
                hidden=out,
                compute_us=compute_us,
                signature=signature,
                cached_tokens=cached,
            )
        if isinstance(msg, OpenSession):
            check_open_session(msg, self.limits)
            if msg.dtype not in DTYPE_SIZES:
                raise ProtocolError("bad_dtype", f"dtype {msg.dtype!r} not allowed")
            if msg.max_length > self.max_session_length:
                raise ProtocolError(
                    "bad_field", f"max_length {msg.max_length} exceeds this node's {self.max_session_length}"
                )
            state = self.pool.open(msg.session_id, msg.max_length, self.backend.new_cache(), owner)
            state.prefix_salt = msg.prefix_salt
            self.scheduler.opened(state.cache)
            return SessionOpened(id=msg.id, session_id=msg.session_id, cache_tokens_left=self.pool.tokens_left)
        if isinstance(msg, Forward):
            hidden = check_hidden(msg.hidden, self.hidden_size, self.limits)
            started = time.perf_counter()
            out = await self.scheduler.forward(hidden)
            compute_us = int((time.perf_counter() - started) * 1e6)
            return ForwardResult(
                id=msg.id, hidden=out, compute_us=compute_us, signature=self._sign("forward", "", 0, hidden, out)
            )
        if isinstance(msg, CloseSession):
            state = self.pool.get(msg.session_id, owner)
            served = state.served_tokens
            self._keep_session(state)
            self.pool.close(msg.session_id)
            signature, why = self._countersign(msg, served) if msg.receipt else ("", "")
            return SessionClosed(
                id=msg.id, session_id=msg.session_id, tokens=served, node_signature=signature, receipt_error=why
            )
        if isinstance(msg, Info):
            return self.info(msg.id)
        raise ProtocolError("unexpected_message", f"a node does not accept {msg.TYPE!r} messages")

    def _countersign(self, msg: CloseSession, served: int) -> tuple[str, str]:
        """Spec §8.3: ``(node_signature, "")`` for a receipt this node stands by, else ``("", why)``."""
        try:
            signed = countersign(
                self.identity,
                msg.receipt,
                msg.client_signature,
                session_id=msg.session_id,
                model=self.model_name,
                start_block=self.start,
                end_block=self.end,
                served=served,
            )
        except ReceiptError as exc:
            log.info("not countersigning the receipt of session %s: %s", msg.session_id, exc)
            return "", str(exc)
        if self.receipts is not None:
            self.receipts.put(signed)
        return signed.node_signature, ""

    async def _run_step(self, state, hidden: WireTensor) -> tuple[WireTensor, int]:
        """Run a step; a first prompt starts from the longest prefix an earlier session with the same salt
        sent (spec §4.9) and is kept for later ones. Returns the output and the positions reused."""
        fresh = state.position == 0
        store = self.prefixes
        if not (fresh and store is not None and state.prefix_salt and hidden.shape[0] == 1 and hidden.shape[1] > 1):
            out = await self.scheduler.step(hidden, state.cache, fresh=fresh)
            self._track(state, hidden, out)
            return out, 0
        hashes = chain_hashes(state.prefix_salt, hidden)
        found = store.longest(hashes, hidden.shape[1] - 1)  # at least one position is computed
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
            self._tracked_rows += len(hashes)
        return out, reused

    def _track(self, state, hidden: WireTensor, out: WireTensor) -> None:
        """Extend a session's chain of input hashes and its output rows by a later step, so that the
        whole session can be kept as a prefix when it closes (a chat's next turn starts with this one)."""
        if state.prefix_hashes is None:
            return
        new = hidden.shape[1]
        if (
            hidden.shape[0] != 1
            or len(state.prefix_hashes) + new > self.prefixes.max_tokens  # would not fit the store
            or not self._room_to_track(new)
        ):
            self._tracked_rows = max(0, self._tracked_rows - len(state.prefix_hashes))
            state.prefix_hashes, state.prefix_outputs = None, []  # stop tracking this session
            return
        state.prefix_hashes.extend(chain_hashes(state.prefix_salt, hidden, after=state.prefix_hashes[-1]))
        state.prefix_outputs.append(out)
        self._tracked_rows += new

    def _room_to_track(self, rows: int) -> bool:
        """Whether all sessions together may track ``rows`` more output rows (at most
        :data:`TRACKED_ROWS_FACTOR` x the prefix store's positions, so a crowd of long sessions cannot
        fill the memory). The count is recomputed from the open sessions when it nears the limit (sessions
        that ended without a close are not subtracted as they go)."""
        limit = TRACKED_ROWS_FACTOR * self.prefixes.max_tokens
        if self._tracked_rows + rows > limit:
            self._tracked_rows = sum(len(s.prefix_hashes or ()) for s in self.pool.sessions.values())
        return self._tracked_rows + rows <= limit

    def _keep_session(self, state) -> None:
        """Keep a closing session's positions as a prefix for later sessions with its salt (spec §4.9)."""
        hashes = state.prefix_hashes
        if hashes is None:
            return
        self._tracked_rows = max(0, self._tracked_rows - len(hashes))
        state.prefix_hashes, state.prefix_outputs, outputs = None, [], state.prefix_outputs
        if len(outputs) < 2 or state.busy or len(hashes) != state.position:
            return  # nothing beyond its first prompt (kept already), or a step still running
        self.prefixes.add(Prefix(hashes, self.backend.export_prefix(state.cache, len(hashes)), concat_tokens(outputs)))

    def _sign(self, kind: str, session_id: str, position: int, inputs, output) -> str:
        """Sign the digest of a result (spec §11): who computed what from what."""
        digest = result_digest(kind, session_id, position, self.start, self.end, inputs, output)
        return encode_signature(self.identity.sign(digest.to_bytes()))

    # -- networking -----------------------------------------------------------------------

    async def _connection(self, ws: ServerConnection) -> None:
        path = getattr(getattr(ws, "request", None), "path", WS_PATH).split("?")[0]
        if self.relay_hub is not None and path.startswith(WS_PATH + RELAY_SUFFIX):
            await self.relay_hub.handle(ws, path[len(WS_PATH + RELAY_SUFFIX) :])
            return
        conn = ws  # becomes a SecureConnection after a secure_hello (spec §10)
        try:
            async for frame in ws:
                if conn is not ws:
                    frame = conn.open(frame)
                elif is_handshake_frame(frame):
                    conn = await SecureConnection.accept(ws, self.identity, frame) or ws
                    continue
                reply = await self.handle_frame(frame, conn)
                if reply is not None:
                    await conn.send(encode(reply))
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
            closed = self.pool.close_owned_by(ws) + (self.pool.close_owned_by(conn) if conn is not ws else 0)
            if closed:
                log.info("freed %d session(s) of a closed connection", closed)

    def _check_path(self, connection: ServerConnection, request: Request) -> Response | None:
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
                log.info("evicted idle session %s", sid)

    async def serve(self, ready: asyncio.Future | None = None) -> None:
        """Listen until cancelled; print the ready line once listening."""
        async with serve(
            self._connection,
            self.config.host,
            self.config.port,
            # Frames between 1x and 2x get a clear Error reply; + 1 KiB for a relay envelope (spec §9).
            max_size=2 * self.limits.max_frame_bytes + 1024,
            compression=None,  # float bytes do not compress; deflate would only cost CPU
            process_request=self._check_path,
            ping_interval=20,
            ping_timeout=60,
            close_timeout=SHUTDOWN_GRACE_S / 2,  # a client that never answers our close does not hold us up
        ) as server:
            port = next(iter(server.sockets)).getsockname()[1]
            host = self.config.public_host or self.config.host
            self.url = f"ws://{host}:{port}{WS_PATH}"
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
            announcer = start_announcer(self)  # None unless --portal and --token were given
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


def run_node(config: NodeConfig) -> None:
    """Load the span and serve it in the foreground until interrupted."""
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")

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
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, node.stop)
        await node.serve()

    try:
        runner(main())
    except KeyboardInterrupt:
        pass
    if node.moving_to is not None:  # rebalancing: start over on the new span, same port
        from swarmnode.server.rebalance import restart_args

        port = int(node.url.rsplit(":", 1)[1].split("/", 1)[0]) if node.url else config.port
        args = restart_args(sys.argv[1:], node.moving_to, port)
        log.info("moving to blocks %d:%d: restarting", *node.moving_to)
        os.execv(sys.executable, [sys.executable, "-m", "swarmnode", *args])
