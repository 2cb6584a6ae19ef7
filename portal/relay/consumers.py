"""The portal's relay (spec §9): ``/ws/relay`` for node links, ``/ws/relay/<key_id>`` for their clients.

Thin adapters: frames are parsed by ``swarmnode.protocol.relay``, decisions are made by
``portal.relay.relaying``. A client's consumer and its node's consumer may live on different daphne
workers: they talk through the channel layer (Redis in production), whose per-channel capacity
bounds what waits for a slow reader (a full channel drops that client, never grows memory).
"""

from __future__ import annotations

import asyncio

from channels.db import database_sync_to_async
from channels.exceptions import ChannelFull
from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings
from django.http.request import split_domain_port, validate_host

from portal.relay import relaying
from swarmnode.protocol import Error, ProtocolError, encode
from swarmnode.protocol import relay as envelope
from swarmnode.relaying import TokenBucket, check_dial_back, throttle
from swarmnode.trust.identity import parse_public_key, verify_signature
from swarmnode.trust.secure_channel import key_id as make_key_id
from swarmnode.trust.secure_channel import random_bytes

HANDSHAKE_FRAME_BYTES = 64 * 1024
HANDSHAKE_TIMEOUT_S = 10.0


def _relay_base(scope: dict) -> str | None:
    """The name this relay signs challenges with (spec §9.2), or ``None`` for a Host that is not ours.

    A name taken from any Host header would let a relay run by an attacker, dialled by a node, open a link
    here with ``Host: <its own host>``, pass our challenge on as if it were its own and attach as that node.
    So the name is ``RELAY_PUBLIC_URL``, or a Host the operator lists in ``ALLOWED_HOSTS``.
    """
    if settings.RELAY_PUBLIC_URL:
        return settings.RELAY_PUBLIC_URL.rstrip("/")
    headers = dict(scope.get("headers") or [])
    host = headers.get(b"host", b"").decode("latin-1") or "localhost"
    allowed = settings.ALLOWED_HOSTS or (["localhost", "127.0.0.1", "[::1]"] if settings.DEBUG else [])
    if not validate_host(split_domain_port(host)[0], allowed):
        return None
    scheme = "wss" if scope.get("scheme") in ("wss", "https") else "ws"
    return f"{scheme}://{host}/ws/relay"


class NodeLinkConsumer(AsyncWebsocketConsumer):
    """``/ws/relay``: a node behind NAT attaches (hello, challenge, proof), then multiplexes its clients."""

    async def connect(self) -> None:
        self.stage = "hello"
        self.hello: dict = {}
        self.nonce = b""
        self.key_id = ""
        self.clients: dict[str, int] = {}  # client consumer channel -> conn id
        self.conns: dict[int, str] = {}
        self.dropped: set[str] = set()
        self.next_conn = 1
        self.bytes_bucket = TokenBucket(settings.RELAY_NODE_BYTES_PER_S)
        self.frames_bucket = TokenBucket(settings.RELAY_NODE_FRAMES_PER_S)
        await self.accept()
        self.deadline = asyncio.create_task(self._handshake_deadline())

    async def _handshake_deadline(self) -> None:
        """A link that has not attached within the handshake timeout is closed (spec §9.2)."""
        await asyncio.sleep(HANDSHAKE_TIMEOUT_S)
        if self.stage != "attached":
            await self._refuse("timeout", "no complete handshake in time")

    async def _refuse(self, code: str, message: str) -> None:
        await self.send(bytes_data=envelope.pack("error", id=self.hello.get("id", 0), code=code, message=message))
        await self.close(code=1008)

    async def receive(self, text_data=None, bytes_data=None) -> None:
        frame = bytes_data if bytes_data is not None else text_data
        try:
            if self.stage == "hello":
                first = envelope.unpack(frame, HANDSHAKE_FRAME_BYTES, {"relay_hello", "relay_status"})
                await (self._status(first) if first["type"] == "relay_status" else self._hello(first))
            elif self.stage == "proof":
                await self._proof(envelope.unpack(frame, HANDSHAKE_FRAME_BYTES, {"relay_proof"}))
            elif self.stage == "attached":
                allowed = {"relay_data", "relay_close", "error"}
                await self._from_node(envelope.unpack(frame, settings.RELAY_MAX_FRAME_BYTES + 1024, allowed))
        except ProtocolError as exc:
            if self.stage == "attached":
                await self.send(bytes_data=envelope.pack("error", code=exc.code, message=exc.message, conn=-1))
            else:
                await self._refuse(exc.code, exc.message)

    async def _status(self, request: dict) -> None:
        """A node choosing among relays asks for the load (spec §9.5)."""
        load = await database_sync_to_async(relaying.relay_load)()
        await self.send(bytes_data=envelope.pack("relay_load", id=request["id"], clients=0, **load))
        await self.close()

    async def _hello(self, hello: dict) -> None:
        self.hello = hello
        try:
            kid = make_key_id(parse_public_key(hello["public_key"]))
        except ValueError as exc:
            await self._refuse("bad_field", f"public_key: {exc}")
            return
        try:
            self.token = await database_sync_to_async(relaying.authorize_node)(hello["token"], hello["public_key"], kid)
        except relaying.RelayRefusal as exc:
            await self._refuse(exc.code, exc.message)
            return
        base = _relay_base(self.scope)
        if base is None:
            await self._refuse("bad_host", "this relay is not known by that host name (ALLOWED_HOSTS)")
            return
        self.key_id = kid
        self.base = base
        self.nonce = random_bytes(32)
        self.stage = "proof"
        await self.send(bytes_data=envelope.pack("relay_challenge", id=hello["id"], nonce=self.nonce, relay=self.base))

    async def _proof(self, proof: dict) -> None:
        public_key = self.hello["public_key"]
        message = envelope.proof_message(self.nonce, self.base, public_key)
        if not verify_signature(parse_public_key(public_key), proof["signature"], message):
            await self._refuse("bad_proof", "signature does not match the announced ed25519 key")
            return
        reachable = "unchecked"
        if self.hello["dial_back"]:
            peer = (self.scope.get("client") or (None,))[0]  # the visitor behind our proxies (portal.middleware)
            timeout, private_ok = settings.RELAY_DIAL_BACK_TIMEOUT, settings.ALLOW_PRIVATE_PEERS
            ok = await check_dial_back(self.hello["dial_back"], public_key, timeout, peer, private_ok)
            reachable = "yes" if ok else "no"
        old = await database_sync_to_async(relaying.attach)(self.key_id, public_key, self.token, self.channel_name)
        if old and old != self.channel_name:  # the same key re-attached: the older link goes
            await self._layer_send(old, {"type": "relay.replaced"})
        self.stage = "attached"
        load = await database_sync_to_async(relaying.relay_load)()
        await self.send(
            bytes_data=envelope.pack(
                "relay_registered",
                id=self.hello["id"],
                address=f"{self.base}/{self.key_id}",
                key_id=self.key_id,
                reachable=reachable,
                nodes=load["nodes"],
                capacity=load["capacity"],
            )
        )

    async def _layer_send(self, channel: str, message: dict) -> bool:
        try:
            await self.channel_layer.send(channel, message)
            return True
        except ChannelFull:
            return False

    async def _from_node(self, msg: dict) -> None:
        if msg["type"] == "error":
            return
        channel = self.conns.get(msg["conn"])
        if channel is None:
            if msg["type"] == "relay_data":
                error = envelope.pack(
                    "error", code="unknown_target", message="no such client connection", conn=msg["conn"]
                )
                await self.send(bytes_data=error)
            return
        if msg["type"] == "relay_close":
            self._forget(channel)
            await self._layer_send(channel, {"type": "relay.close"})
            return
        await throttle((self.bytes_bucket, len(msg["data"])), (self.frames_bucket, 1))
        if not await self._layer_send(channel, {"type": "relay.deliver", "data": msg["data"]}):
            self._forget(channel)  # the client does not read: drop it rather than buffer
            self.dropped.add(channel)
            await self.send(bytes_data=envelope.pack("relay_close", conn=msg["conn"], reason="client buffer full"))

    def _forget(self, channel: str) -> None:
        conn = self.clients.pop(channel, None)
        self.conns.pop(conn, None)

    # -- from client consumers (channel layer) -----------------------------------------------------

    async def relay_client_open(self, event: dict) -> None:
        """A client connected to ``/ws/relay/<our key id>``."""
        if self.stage != "attached":
            await self._layer_send(event["client"], {"type": "relay.close"})
            return
        conn = self.next_conn
        self.next_conn += 1
        self.clients[event["client"]] = conn
        self.conns[conn] = event["client"]
        await self.send(bytes_data=envelope.pack("relay_open", conn=conn))

    async def relay_client_frame(self, event: dict) -> None:
        """One frame from a client: forward it as ``relay_data``."""
        conn = self.clients.get(event["client"])
        if conn is None:
            await self._layer_send(event["client"], {"type": "relay.close"})
            return
        await throttle((self.bytes_bucket, len(event["data"])), (self.frames_bucket, 1))
        await self.send(bytes_data=envelope.pack_data(conn, event["data"]))

    async def relay_client_closed(self, event: dict) -> None:
        """A client went away."""
        conn = self.clients.get(event["client"])
        self._forget(event["client"])
        if conn is not None:
            await self.send(bytes_data=envelope.pack("relay_close", conn=conn, reason="client left"))

    async def relay_replaced(self, event: dict) -> None:
        """The same node attached again elsewhere: this older link closes."""
        self.key_id = ""  # the row belongs to the new link now
        await self.close(code=1001)

    async def disconnect(self, code: int) -> None:
        self.deadline.cancel()
        if self.stage == "attached" and self.key_id:
            await database_sync_to_async(relaying.detach)(self.key_id, self.channel_name)
        for channel in list(self.clients):
            await self._layer_send(channel, {"type": "relay.close"})
        self.clients.clear()
        self.conns.clear()


class RelayClientConsumer(AsyncWebsocketConsumer):
    """``/ws/relay/<key_id>``: a client of an attached node; frames pass through unread (end-to-end encrypted)."""

    async def connect(self) -> None:
        self.key_id = self.scope["url_route"]["kwargs"]["key_id"]
        self.node = await database_sync_to_async(relaying.node_channel)(self.key_id)
        await self.accept()
        if self.node is not None:
            await self.channel_layer.send(self.node, {"type": "relay.client_open", "client": self.channel_name})

    async def receive(self, text_data=None, bytes_data=None) -> None:
        data = bytes_data if bytes_data is not None else (text_data or "").encode()
        if self.node is None:
            message = f"no node {self.key_id[:64]!r} is attached to this relay"
            await self.send(bytes_data=encode(Error(code="unknown_target", message=message)))
            return
        if len(data) > settings.RELAY_MAX_FRAME_BYTES:
            await self.send(bytes_data=encode(Error(code="frame_too_large", message="frame exceeds the relay's limit")))
            return
        try:
            await self.channel_layer.send(
                self.node, {"type": "relay.client_frame", "client": self.channel_name, "data": data}
            )
        except ChannelFull:
            await self.send(bytes_data=encode(Error(code="unavailable", message="the node's relay link is congested")))
            await self.close(code=1013)

    async def relay_deliver(self, event: dict) -> None:
        """A frame from the node."""
        await self.send(bytes_data=event["data"])

    async def relay_close(self, event: dict) -> None:
        """The node closed this connection or went away."""
        self.node = None
        await self.close(code=1001)

    async def disconnect(self, code: int) -> None:
        if self.node is not None:
            try:
                await self.channel_layer.send(self.node, {"type": "relay.client_closed", "client": self.channel_name})
            except ChannelFull:
                pass
            self.node = None
        await asyncio.sleep(0)
