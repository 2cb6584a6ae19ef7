"""A node's side of a relay (spec §9): the reachability check and the outbound link it serves clients through.

With ``--relay auto`` the node attaches to its first relay candidate asking it to dial back the
node's own URL (§9.3). Reachable: the node detaches and announces its direct URL. Not: it keeps
the link and announces ``R/<key_id>``. ``--relay always`` skips the check, ``never`` skips relays.

Each client connection the relay opens becomes a :class:`RelayedConnection`, which looks like a
websocket to :meth:`Node._connection`, so relayed clients get exactly the protocol direct ones get
(end-to-end encryption, §10, included). When the relay goes away the link attaches to the next
candidate and the node's address changes; the announcer re-registers it, and clients fail over.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Collection
from urllib.parse import urlsplit

from websockets.asyncio.client import ClientConnection, connect

from swarmnode.protocol import ProtocolError
from swarmnode.protocol import relay as envelope
from swarmnode.relaying import serves_privately
from swarmnode.relaying.choice import may_send_token, order_by_load, portal_relay, relay_candidates, relay_directory
from swarmnode.server.blocking import run_blocking

log = logging.getLogger("swarmnode.relay_link")

MAX_PENDING_FRAMES = 64  # a client may only have one request in flight (§1.3): 64 is generous


class RelayRefused(Exception):
    """The relay refused to attach us (``code``: ``unauthorized``, ``relay_full``, ``bad_proof``, ...)."""

    def __init__(self, url: str, code: str, message: str) -> None:
        super().__init__(f"{url}: {code}: {message}")
        self.code = code


class RelayedConnection:
    """One client's connection through the relay, as :meth:`Node._connection` sees it.

    Iterating yields the client's frames; :meth:`send` sends one frame back through the relay.
    """

    def __init__(self, link: RelayLink, conn: int) -> None:
        self.link = link
        self.conn = conn
        self.closed = False
        self._queue: asyncio.Queue = asyncio.Queue()

    def feed(self, data: bytes | None) -> bool:
        """Queue a frame from the client (``None``: the client left); False when the client floods us."""
        if data is not None and self._queue.qsize() >= MAX_PENDING_FRAMES:
            return False
        self._queue.put_nowait(data)
        return True

    def __aiter__(self) -> RelayedConnection:
        return self

    async def __anext__(self) -> bytes:
        data = await self._queue.get()
        if data is None:
            self.closed = True
            raise StopAsyncIteration
        return data

    async def send(self, data: bytes) -> None:
        """Send one frame to the client.

        Raises:
            ConnectionError: the client left or the relay link is down.
        """
        if self.closed:
            raise ConnectionError("the relayed client left")
        await self.link.send_data(self.conn, data)

    async def close(self) -> None:
        """Close this client's connection at the relay."""
        if not self.closed:
            self.closed = True
            self.feed(None)
            await self.link.send_close(self.conn, "closed by the node")


class RelayLink:
    """Keeps a node attached to one of ``candidates``, moving to the next one when its relay dies.

    Args:
        node: the serving :class:`~swarmnode.server.node.Node` (its ``identity``, ``url`` and ``_connection``).
        candidates: returns relay base URLs to try, best first.
        token: the node token, sent in ``relay_hello`` only to a relay in ``token_relays`` reached over TLS or on
            loopback (:func:`may_send_token`): any other relay gets an empty token and only the signed proof.
        token_relays: the portal's own relay URL(s); the token is the node's credential for its owner's account,
            so a relay run by a stranger must never see it.
        on_address: called with the node's relayed address after each attach, ``""`` after a detach.
        ranked: returns the relays to try at each (re)attach, best first (default: ``candidates()``).
    """

    def __init__(
        self,
        node,
        candidates: Callable[[], list[str]],
        token: str = "",
        on_address: Callable[[str], None] | None = None,
        retry_s: float = 1.0,
        ranked: Callable[[], Awaitable[list[str]]] | None = None,
        token_relays: Collection[str] = (),
    ) -> None:
        self.node = node
        self.candidates = candidates
        self.token = token
        self.token_relays = {r.rstrip("/") for r in token_relays}  # grows as the portal's directory names its relay
        self.on_address = on_address
        self.retry_s = retry_s
        self.ranked = ranked  # candidates ordered by announced load; None: candidates() as given
        self.address = ""
        self.relay = ""
        self._ws: ClientConnection | None = None
        self._conns: dict[int, RelayedConnection] = {}
        self._tasks: set[asyncio.Task] = set()

    async def attach(self, relay: str, dial_back: str = "") -> tuple[ClientConnection, dict]:
        """Open a link to ``relay`` and authenticate (§9.2).

        Returns:
            The link and the ``relay_registered`` reply.

        Raises:
            RelayRefused: an ``error`` reply, or ``wrong_relay``: the challenge names another relay than ``relay``
                (we sign nothing). OSError, TimeoutError, websockets errors: unreachable.
        """
        limit = self.node.limits.max_frame_bytes + 1024
        ws = await asyncio.wait_for(
            connect(relay, max_size=limit, compression=None, ping_interval=20, ping_timeout=60), 10.0
        )
        try:
            public_key = self.node.identity.public_key
            token = self.token if may_send_token(relay, self.token_relays) else ""
            hello = envelope.pack("relay_hello", id=1, public_key=public_key, token=token, dial_back=dial_back)
            await ws.send(hello)
            challenge = self._expect(relay, await asyncio.wait_for(ws.recv(), 10.0), "relay_challenge")
            if not envelope.same_relay(challenge["relay"], relay):
                # A relay passing on another relay's challenge wants our signature to attach as us over there.
                raise RelayRefused(relay, "wrong_relay", f"the challenge names {challenge['relay'][:200]!r}")
            message = envelope.proof_message(challenge["nonce"], challenge["relay"], public_key)
            await ws.send(envelope.pack("relay_proof", id=1, signature=self.node.identity.sign(message)))
            # The relay may spend its dial-back timeout before it answers.
            registered = self._expect(relay, await asyncio.wait_for(ws.recv(), 20.0), "relay_registered")
        except BaseException:
            await ws.close()
            raise
        return ws, registered

    @staticmethod
    def _expect(relay: str, frame, kind: str) -> dict:
        msg = envelope.unpack(frame, 64 * 1024, {kind, "error"})
        if msg["type"] == "error":
            raise RelayRefused(relay, msg["code"], msg["message"])
        return msg

    async def check_reachable(self) -> bool | None:
        """Ask the first relay that answers to dial back our URL (§9.3); ``None`` if no relay answered."""
        for relay in self.candidates():
            try:
                ws, registered = await self.attach(relay, dial_back=self.node.url)
            except Exception as exc:
                log.info("reachability check via %s failed: %s", relay, exc)
                continue
            await ws.close()
            return registered["reachable"] == "yes"
        return None

    async def run(self) -> None:
        """Stay attached to some relay until cancelled."""
        failures = 0
        while True:
            tried = False
            relays = await self.ranked() if self.ranked is not None else self.candidates()
            for relay in relays:
                tried = True
                try:
                    ws, registered = await self.attach(relay)
                except Exception as exc:
                    log.warning("cannot attach to relay %s: %s", relay, exc)
                    continue
                failures = 0
                self._ws, self.relay, self.address = ws, relay, registered["address"]
                log.info("attached to relay %s as %s", relay, self.address)
                print(json.dumps({"event": "relayed", "address": self.address, "relay": relay}), flush=True)
                if self.on_address:
                    self.on_address(self.address)
                try:
                    await self._serve(ws)
                except Exception as exc:
                    log.warning("relay link to %s lost: %s", relay, exc)
                finally:
                    self._drop_all()
                    self._ws, self.address = None, ""
                    if self.on_address:
                        self.on_address("")
            failures += 1
            if not tried:
                log.error("no relay to attach to")
            await asyncio.sleep(min(self.retry_s * 2 ** min(failures, 5), 30.0))

    async def _serve(self, ws: ClientConnection) -> None:
        limit = self.node.limits.max_frame_bytes + 1024
        async for frame in ws:
            try:
                msg = envelope.unpack(frame, limit, {"relay_open", "relay_data", "relay_close", "error"})
            except ProtocolError as exc:
                log.info("relay sent a bad frame: %s", exc)
                continue
            kind, conn = msg["type"], msg.get("conn", -1)
            if kind == "relay_open":
                rc = RelayedConnection(self, conn)
                self._conns[conn] = rc
                task = asyncio.create_task(self._client(rc))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            elif kind == "relay_data":
                rc = self._conns.get(conn)
                if rc is None:
                    error = envelope.pack("error", code="unknown_target", message="no such connection", conn=conn)
                    await ws.send(error)
                elif not rc.feed(msg["data"]):
                    log.info("relayed client %d floods us: closing it", conn)
                    self._conns.pop(conn, None)
                    await rc.close()
            elif kind == "relay_close":
                rc = self._conns.pop(conn, None)
                if rc is not None:
                    rc.feed(None)
            else:
                log.info("relay error: %s %s", msg["code"], msg["message"][:200])

    async def _client(self, rc: RelayedConnection) -> None:
        try:
            await self.node._connection(rc)
        finally:
            if self._conns.pop(rc.conn, None) is not None and not rc.closed:
                rc.closed = True
                await self.send_close(rc.conn, "session over")

    def _drop_all(self) -> None:
        for rc in self._conns.values():
            rc.feed(None)
            rc.closed = True
        self._conns.clear()

    async def send_data(self, conn: int, data: bytes) -> None:
        """Send one frame to client ``conn`` through the relay."""
        ws = self._ws
        if ws is None:
            raise ConnectionError("not attached to a relay")
        await ws.send(envelope.pack_data(conn, data))

    async def send_close(self, conn: int, reason: str) -> None:
        """Tell the relay to close client ``conn`` (best effort)."""
        ws = self._ws
        if ws is None:
            return
        try:
            await ws.send(envelope.pack("relay_close", conn=conn, reason=reason))
        except Exception:
            pass

    async def close(self) -> None:
        """Detach."""
        self._drop_all()
        if self._ws is not None:
            await self._ws.close()


class RelayTask(RelayLink):
    """A :class:`RelayLink` running in the background (:func:`start_relaying`)."""

    task: asyncio.Task | None = None

    async def wait_attached(self, timeout: float) -> bool:
        """Wait until the link is attached somewhere (True) or ``timeout`` passes (False)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not self.address and loop.time() < deadline:
            await asyncio.sleep(0.05)
        return bool(self.address)

    async def stop(self) -> None:
        """Stop re-attaching and detach."""
        if self.task is not None:
            self.task.cancel()
            try:
                await self.task
            except (asyncio.CancelledError, Exception):
                pass
        await self.close()


async def start_relaying(node) -> RelayTask | None:
    """Decide direct or relayed (``--relay auto|always|never``, §9.3); attach when relayed.

    Returns:
        The running link, or ``None`` when the node is reached directly.
    """
    mode = getattr(node.config, "relay", "auto")
    candidates = relay_candidates(node.config)
    if mode == "never" or not candidates:
        if mode == "always":
            log.error("--relay always needs --relays or --portal: serving directly only")
        return None
    portal = getattr(node.config, "portal", None)

    async def ranked() -> list[str]:  # every (re)attach: the relays known now, least loaded first
        known = list(candidates)
        if portal:
            listed = await run_blocking(relay_directory, portal)
            # The portal's own relay may have a public URL of its own (RELAY_PUBLIC_URL): it too gets the token.
            link.token_relays.update(r["url"] for r in listed if r["kind"] == "portal")
            known += [r["url"] for r in listed if r["url"] not in known and r["url"] != node_relay and dialable(r)]
        return await order_by_load(known)

    node_relay = node.url + "/relay"  # never attach to ourselves
    private_ok = serves_privately(urlsplit(node.url).hostname or "")

    def dialable(listed: dict) -> bool:  # a stranger may list a private address as a relay: not for a public node
        return listed["kind"] == "portal" or private_ok or not serves_privately(urlsplit(listed["url"]).hostname or "")

    token = getattr(node.config, "token", None) or ""
    own = [portal_relay(portal)] if portal else []
    link = RelayTask(node, lambda: candidates, token=token, ranked=ranked, token_relays=own)
    if mode == "auto":
        reachable = await link.check_reachable()
        if reachable is None:
            log.warning("no relay answered the reachability check: assuming %s is reachable", node.url)
            return None
        if reachable:
            log.info("reachable directly at %s", node.url)
            return None
        log.info("%s is not reachable from outside: serving through a relay", node.url)
    link.task = asyncio.create_task(link.run(), name="relay-link")
    await link.wait_attached(15.0)
    return link
