"""A relay (spec §9): nodes behind NAT attach over an outbound websocket; clients reach them through it.

A node started with ``--relay-capacity N`` carries one (``swarmnode relay`` runs one alone). Paths,
under the relay's base URL ``R`` (``ws://HOST:PORT/layerswarm/v1/relay``):

* ``R`` — a node attaches: ``relay_hello`` → ``relay_challenge`` → ``relay_proof`` →
  ``relay_registered`` (or ``error``), then ``relay_open`` / ``relay_data`` / ``relay_close``.
* ``R/<key_id>`` — a client talks to the attached node ``key_id`` with the ordinary node protocol;
  each websocket message is forwarded as opaque bytes (end-to-end encrypted by the client, §10).

The relay never parses what clients and nodes say to each other. Limits: per-node and per-relay
token buckets for bytes and frames (forwarding waits, so senders slow down instead of memory
growing), a bounded queue per client connection (a client that does not read is disconnected),
a frame size limit and a node capacity.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from websockets.asyncio.server import ServerConnection

from swarmnode.protocol import Error, ProtocolError, encode
from swarmnode.protocol import relay as envelope
from swarmnode.relaying import TokenBucket, check_dial_back, serves_privately, throttle
from swarmnode.trust.identity import parse_public_key, verify_signature
from swarmnode.trust.secure_channel import key_id as make_key_id
from swarmnode.trust.secure_channel import random_bytes

log = logging.getLogger("swarmnode.relay")

RELAY_SUFFIX = "/relay"


@dataclass(frozen=True)
class RelayLimits:
    """What one relay allows (spec §9.6)."""

    capacity: int = 16  # nodes attached at once
    max_frame_bytes: int = 64 * 1024 * 1024  # one client frame (the envelope adds a few bytes)
    node_bytes_per_s: float = 256 * 1024 * 1024  # both directions of one node's traffic; 0 = unlimited
    node_frames_per_s: float = 5000.0
    relay_bytes_per_s: float = 1024 * 1024 * 1024  # everything through this relay
    relay_frames_per_s: float = 50000.0
    client_queue_frames: int = 64  # frames waiting for one slow client before it is disconnected
    clients_per_node: int = 256
    handshake_timeout_s: float = 10.0
    dial_back_timeout_s: float = 3.0
    # Dial back private, loopback and link-local addresses (spec §9.3)? None (auto): only when the relay itself
    # serves on such an address (a LAN swarm, tests on loopback), as push does (``push_private``). A relay on the
    # open network then never lets a stranger's node make it probe the relay's own network.
    allow_private_peers: bool | None = None


@dataclass
class _Client:
    conn: int
    ws: object
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)
    writer: asyncio.Task | None = None


@dataclass
class _Attached:
    key_id: str
    public_key: str
    ws: object
    bytes_bucket: TokenBucket
    frames_bucket: TokenBucket
    clients: dict[int, _Client] = field(default_factory=dict)
    since: float = field(default_factory=time.time)


class RelayHub:
    """The relay's state: attached nodes and the client connections to each.

    Args:
        base_url: the relay's public base URL ``R`` (a callable when known only once listening).
        limits: capacity and rate limits.
        authorize: optional check of a node's ``relay_hello`` (the portal checks the node token);
            returns an error message to refuse, or ``None``.
    """

    def __init__(
        self,
        base_url: str | Callable[[], str],
        limits: RelayLimits | None = None,
        authorize: Callable[[dict], Awaitable[str | None]] | None = None,
    ) -> None:
        self._base = base_url
        self.limits = limits or RelayLimits()
        self.authorize = authorize
        self.nodes: dict[str, _Attached] = {}
        self._conn_ids = itertools.count(1)
        lim = self.limits
        self.bytes_bucket = TokenBucket(lim.relay_bytes_per_s)
        self.frames_bucket = TokenBucket(lim.relay_frames_per_s)
        self.stats = {"frames": 0, "bytes": 0, "throttled_s": 0.0, "dropped_clients": 0, "unknown_target": 0}

    @property
    def base_url(self) -> str:
        """``R``: nodes attach here; ``R/<key_id>`` reaches an attached node."""
        return self._base() if callable(self._base) else self._base

    def allows_private(self) -> bool:
        """Whether dial-backs may go to private addresses (``RelayLimits.allow_private_peers``; auto: see there)."""
        if self.limits.allow_private_peers is not None:
            return self.limits.allow_private_peers
        return serves_privately(urlsplit(self.base_url).hostname or "")

    def load(self) -> dict:
        """Announced load: attached nodes, capacity, open client connections (spec §9.5)."""
        return {
            "nodes": len(self.nodes),
            "capacity": self.limits.capacity,
            "clients": sum(len(a.clients) for a in self.nodes.values()),
            **self.stats,
        }

    async def handle(self, ws: ServerConnection, rest: str) -> None:
        """Serve one websocket at ``R`` + ``rest`` (``""``: a node attaches; ``/<key_id>``: a client)."""
        if rest in ("", "/"):
            await self.attach(ws)
        else:
            await self.client(ws, rest.strip("/"))

    # -- nodes ---------------------------------------------------------------------------------

    async def _refuse(self, ws, code: str, message: str, request_id: int = 0) -> None:
        try:
            await ws.send(envelope.pack("error", id=request_id, code=code, message=message, conn=-1))
            await ws.close(1008, code)
        except Exception:
            pass

    async def _handshake(self, ws) -> _Attached | None:
        lim = self.limits
        async with asyncio.timeout(lim.handshake_timeout_s):
            hello = envelope.unpack(await ws.recv(), 64 * 1024, {"relay_hello", "relay_status"})
            if hello["type"] == "relay_status":  # a node choosing among relays asks for our load (§9.5)
                load = self.load()
                await ws.send(
                    envelope.pack(
                        "relay_load",
                        id=hello["id"],
                        nodes=load["nodes"],
                        capacity=load["capacity"],
                        clients=load["clients"],
                    )
                )
                await ws.close()
                return None
            try:
                keys = parse_public_key(hello["public_key"])
            except ValueError as exc:
                await self._refuse(ws, "bad_field", f"public_key: {exc}", hello["id"])
                return None
            if self.authorize is not None:
                refusal = await self.authorize(hello)
                if refusal:
                    await self._refuse(ws, "unauthorized", refusal, hello["id"])
                    return None
            kid = make_key_id(keys)
            if kid not in self.nodes and len(self.nodes) >= lim.capacity:
                await self._refuse(ws, "relay_full", f"this relay carries {lim.capacity} nodes already", hello["id"])
                return None
            nonce = random_bytes(32)
            base = self.base_url
            await ws.send(envelope.pack("relay_challenge", id=hello["id"], nonce=nonce, relay=base))
            proof = envelope.unpack(await ws.recv(), 64 * 1024, {"relay_proof"})
            if not verify_signature(keys, proof["signature"], envelope.proof_message(nonce, base, hello["public_key"])):
                await self._refuse(ws, "bad_proof", "signature does not match the announced ed25519 key", hello["id"])
                return None
        reachable = "unchecked"
        if hello["dial_back"]:
            peer = (getattr(ws, "remote_address", None) or (None,))[0]  # only this address is dialled back
            ok = await check_dial_back(
                hello["dial_back"], hello["public_key"], lim.dial_back_timeout_s, peer, self.allows_private()
            )
            reachable = "yes" if ok else "no"
        old = self.nodes.get(kid)
        if old is not None:  # the same key re-attached (a reconnect): the newer link wins
            log.info("node %s re-attached; closing its previous link", kid)
            await self._detach(old)
        attached = _Attached(
            kid,
            hello["public_key"],
            ws,
            TokenBucket(lim.node_bytes_per_s),
            TokenBucket(lim.node_frames_per_s),
        )
        self.nodes[kid] = attached
        await ws.send(
            envelope.pack(
                "relay_registered",
                id=hello["id"],
                address=f"{base}/{kid}",
                key_id=kid,
                reachable=reachable,
                nodes=len(self.nodes),
                capacity=lim.capacity,
            )
        )
        log.info("node %s attached (%d/%d), reachable directly: %s", kid, len(self.nodes), lim.capacity, reachable)
        return attached

    async def attach(self, ws) -> None:
        """A node's link: authenticate it, then forward its frames to its clients until it goes."""
        try:
            attached = await self._handshake(ws)
        except (TimeoutError, ProtocolError) as exc:
            code = getattr(exc, "code", "timeout")
            await self._refuse(ws, code, str(exc) or "handshake timed out")
            return
        except Exception as exc:
            log.info("relay handshake ended: %s", exc)
            return
        if attached is None:
            return
        try:
            await self._node_frames(attached)
        except Exception as exc:
            log.info("node %s link ended: %s", attached.key_id, exc)
        finally:
            if self.nodes.get(attached.key_id) is attached:
                await self._detach(attached)

    async def _node_frames(self, attached: _Attached) -> None:
        lim = self.limits
        ws = attached.ws
        async for frame in ws:
            try:
                msg = envelope.unpack(frame, lim.max_frame_bytes + 1024, {"relay_data", "relay_close", "error"})
            except ProtocolError as exc:
                await ws.send(envelope.pack("error", code=exc.code, message=exc.message, conn=-1))
                continue
            client = attached.clients.get(msg.get("conn", -1))
            if msg["type"] == "error":
                log.info("node %s says: %s %s", attached.key_id, msg["code"], msg["message"][:200])
                continue
            if client is None:
                if msg["type"] == "relay_data":  # the client went away meanwhile, or a made-up conn
                    await ws.send(
                        envelope.pack(
                            "error", code="unknown_target", message="no such client connection", conn=msg["conn"]
                        )
                    )
                continue
            if msg["type"] == "relay_close":
                self._end_client(client)
                continue
            data = msg["data"]
            await self._throttle(attached, len(data))
            if client.queue.qsize() >= lim.client_queue_frames:
                log.info("client %d of node %s does not read: disconnecting it", client.conn, attached.key_id)
                self.stats["dropped_clients"] += 1
                attached.clients.pop(client.conn, None)
                self._end_client(client)
                await ws.send(envelope.pack("relay_close", conn=client.conn, reason="client buffer full"))
                continue
            client.queue.put_nowait(data)

    async def _throttle(self, attached: _Attached, size: int) -> None:
        self.stats["frames"] += 1
        self.stats["bytes"] += size
        waited = await throttle(
            (attached.bytes_bucket, size),
            (attached.frames_bucket, 1),
            (self.bytes_bucket, size),
            (self.frames_bucket, 1),
        )
        self.stats["throttled_s"] += waited

    async def _detach(self, attached: _Attached) -> None:
        if self.nodes.get(attached.key_id) is attached:
            del self.nodes[attached.key_id]
        for client in list(attached.clients.values()):
            self._end_client(client)
        attached.clients.clear()
        try:
            await attached.ws.close(1001, "detached")
        except Exception:
            pass
        log.info("node %s detached", attached.key_id)

    # -- clients -------------------------------------------------------------------------------

    def _end_client(self, client: _Client) -> None:
        client.queue.put_nowait(None)

    async def _write(self, client: _Client) -> None:
        try:
            while True:
                data = await client.queue.get()
                if data is None:
                    break
                await client.ws.send(data)
        except Exception:
            pass
        finally:
            try:
                await client.ws.close(1001, "node gone")
            except Exception:
                pass

    async def client(self, ws, kid: str) -> None:
        """A client of the node ``kid``: forward its frames to the node, and the node's back (§9.4)."""
        lim = self.limits
        attached = self.nodes.get(kid)
        if attached is None:
            await self._unknown_target(ws, kid)
            return
        if len(attached.clients) >= lim.clients_per_node:
            await ws.send(encode(Error(code="relay_full", message=f"node {kid} has too many clients")))
            await ws.close(1013, "too many clients")
            return
        client = _Client(next(self._conn_ids), ws)
        attached.clients[client.conn] = client
        client.writer = asyncio.create_task(self._write(client))
        try:
            await attached.ws.send(envelope.pack("relay_open", conn=client.conn))
            async for frame in ws:
                if self.nodes.get(kid) is not attached or client.conn not in attached.clients:
                    break  # the node went away or dropped this client
                if isinstance(frame, str):
                    frame = frame.encode()  # the node answers bad_frame; the relay does not judge
                await self._throttle(attached, len(frame))
                await self.to_node(attached, client.conn, frame)
        except Exception as exc:
            log.info("client %d of node %s ended: %s", client.conn, kid, exc)
        finally:
            if attached.clients.pop(client.conn, None) is not None:
                self._end_client(client)
                try:
                    await attached.ws.send(envelope.pack("relay_close", conn=client.conn, reason="client left"))
                except Exception:
                    pass
            await client.writer

    async def to_node(self, attached: _Attached, conn: int, frame: bytes) -> None:
        """Forward one client frame to its node (the one place a test relay can misbehave)."""
        await attached.ws.send(envelope.pack_data(conn, frame))

    async def _unknown_target(self, ws, kid: str) -> None:
        """Answer every frame for a node that is not attached with an ``unknown_target`` error."""
        self.stats["unknown_target"] += 1
        error = encode(Error(code="unknown_target", message=f"no node {kid[:64]!r} is attached to this relay"))
        try:
            async for _frame in ws:
                await ws.send(error)
        except Exception:
            pass


async def serve_relay(
    host: str,
    port: int,
    limits: RelayLimits | None = None,
    public_host: str | None = None,
    ready: asyncio.Future | None = None,
    hub_class: type[RelayHub] | None = None,
) -> None:
    """Run a relay alone (``swarmnode relay``) until cancelled; print a JSON ready line once listening.

    ``ready`` receives the :class:`RelayHub` (of ``hub_class``, default :class:`RelayHub`).
    """
    import json
    import os

    from websockets.asyncio.server import serve

    from swarmnode.server.config import WS_PATH

    limits = limits or RelayLimits()
    prefix = WS_PATH + RELAY_SUFFIX
    state: dict = {}
    hub = (hub_class or RelayHub)(lambda: state["base"], limits)

    def check_path(connection, request):
        path = request.path.split("?")[0]
        if path != prefix and not path.startswith(prefix + "/"):
            return connection.respond(404, f"this relay serves {prefix}\n")
        return None

    async def handler(ws):
        await hub.handle(ws, ws.request.path.split("?")[0][len(prefix) :])

    async with serve(
        handler,
        host,
        port,
        max_size=limits.max_frame_bytes + 1024,
        compression=None,
        process_request=check_path,
        ping_interval=20,
        ping_timeout=60,
    ) as server:
        bound = next(iter(server.sockets)).getsockname()[1]
        state["base"] = f"ws://{public_host or host}:{bound}{prefix}"
        print(json.dumps({"event": "ready", "url": state["base"], "relay": True, "pid": os.getpid()}), flush=True)
        if ready is not None:
            ready.set_result(hub)
        await asyncio.Future()
