"""Server-to-server push (spec §7): run a pushed step, then forward it to the next node or deliver it.

A pushed step is one-way. Errors travel to the connection that opened the session on the node
that noticed them, so the client hears about every failure on one of its own connections; an
error that a downstream node sends back on a push link is relayed the same way.

A node dials only next hops that :class:`~swarmnode.server.push_routes.PushRoutes` lets through
(§7.5), seals every frame of a push link to the next node's announced key (§7.6: a relay or anyone
on the path sees ciphertext), keeps at most ``push_max_links`` links open, and reads what comes
back on a link within its frame limit (§6.3).
"""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
import logging
from collections import OrderedDict
from dataclasses import dataclass

from websockets.asyncio.client import ClientConnection, connect

from swarmnode.protocol import Error, ProtocolError, Step, StepResult, decode, encode
from swarmnode.protocol.framing import message_bound
from swarmnode.server.push_routes import NextHop, PushRoutes, RouteRefused
from swarmnode.trust.secure_channel import ChannelError, SecureChannel, client_handshake, finish_handshake

log = logging.getLogger("swarmnode.push")

MIN_KEY_LEN = 16


@dataclass
class _Entry:
    key: str
    owner: object  # the websocket that opened the session


class PushLink:
    """One node's sealed connection to the next node of push routes (spec §7.6).

    Args:
        ws: the open websocket to the next node.
        channel: the secure channel agreed with the key the next node announced.
    """

    def __init__(self, ws: ClientConnection, channel: SecureChannel, public_key: str = "") -> None:
        self.ws = ws
        self.channel = channel
        self.public_key = public_key  # the key the next node proved it holds
        self._lock = asyncio.Lock()  # sealed frames must leave in the order of their sequence numbers

    @classmethod
    async def open(cls, hop: NextHop, max_frame_bytes: int, timeout: float) -> PushLink:
        """Dial the checked address of ``hop`` and prove it holds the announced key.

        Raises:
            OSError, TimeoutError, websockets errors: unreachable.
            ChannelError: whatever answers does not hold the node's key.
        """
        max_size = message_bound(max_frame_bytes)  # the next node only sends errors back (§7.3)
        async with asyncio.timeout(timeout):
            # host/port: the address PushRoutes checked; proxy=None: never detour through an environment proxy.
            ws = await connect(
                hop.url,
                host=hop.address,
                port=hop.port,
                proxy=None,
                max_size=max_size,
                compression=None,
                ping_interval=None,
            )
            try:
                hello, pending = client_handshake(hop.public_key)
                await ws.send(hello)
                channel = finish_handshake(pending, await ws.recv(), max_plaintext=max_frame_bytes)
            except BaseException:
                await ws.close()
                raise
        return cls(ws, channel, hop.public_key)

    @property
    def is_open(self) -> bool:
        """Whether frames can still be sent on it."""
        return self.ws.state.name == "OPEN" and not self.channel.dead

    async def send(self, frame: bytes) -> None:
        """Seal and send one frame."""
        async with self._lock:
            await self.ws.send(self.channel.seal(frame))

    async def close(self) -> None:
        """Close the websocket."""
        await self.ws.close()


class PushRelay:
    """The push side of one node.

    Args:
        node: the serving :class:`~swarmnode.server.node.Node` (its ``dispatch`` runs the steps).
        connect_timeout: seconds to reach the next node.
    """

    def __init__(self, node, connect_timeout: float = 5.0, routes: PushRoutes | None = None) -> None:
        self.node = node
        self.connect_timeout = connect_timeout
        self.routes = routes or PushRoutes(node)
        self.max_links = max(1, node.config.push_max_links)
        self._sessions: dict[str, _Entry] = {}
        self._links: OrderedDict[str, PushLink] = OrderedDict()  # least recently used first
        self._readers: dict[str, asyncio.Task] = {}
        self._tasks: set[asyncio.Task] = set()

    def register(self, session_id: str, key: str, owner: object) -> None:
        """Accept pushed steps for a session opened with a push key (spec §7.1)."""
        for sid in [s for s in self._sessions if s not in self.node.pool.sessions]:
            del self._sessions[sid]  # closed or evicted sessions
        if len(key) >= MIN_KEY_LEN:
            self._sessions[session_id] = _Entry(key, owner)

    async def _tell(self, owner, error: Error) -> None:
        try:
            await owner.send(encode(error))
        except Exception as exc:  # the client is gone too: nothing more to do
            log.info("cannot report a push error to the session's owner: %s", exc)

    def accept(self, msg: Step) -> Error | None:
        """Check a step carrying a push key: ``None`` when it may run, else the error for its sender."""
        entry = self._sessions.get(msg.session_id)
        if entry is None or not hmac.compare_digest(entry.key, msg.push_key):
            return Error(
                id=msg.id, code="unknown_session", message="no push session with that key", session_id=msg.session_id
            )
        return None

    def start(self, msg: Step) -> None:
        """Run an accepted pushed step in the background: a push link carries many sessions' steps, which
        must not wait for each other (they batch together in the scheduler)."""
        task = asyncio.create_task(self.run(msg))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def run(self, msg: Step) -> None:
        """Run an accepted pushed step, then forward it or deliver its result (errors go to the owner)."""
        entry = self._sessions.get(msg.session_id)
        if entry is None:  # closed since it was accepted
            return None
        try:
            reply = await self.node.dispatch(dataclasses.replace(msg, push_key="", route=()), entry.owner)
        except ProtocolError as exc:
            await self._tell(
                entry.owner, Error(id=msg.id, code=exc.code, message=exc.message, session_id=msg.session_id)
            )
            return None
        except Exception:  # a backend failure: the cache may be partly written (spec §4.3)
            log.exception("internal error in a pushed step")  # the details stay here; the client gets the code
            self.node.pool.close(msg.session_id)
            await self._tell(
                entry.owner,
                Error(id=msg.id, code="internal", message="internal error on the node", session_id=msg.session_id),
            )
            return None
        assert isinstance(reply, StepResult)
        if not msg.route:
            await self._tell_result(entry.owner, reply)
            return None
        nxt = msg.route[0]
        url = nxt.partition("#")[0]  # an entry may name the node's key after '#' (§7.2)
        forward = Step(
            id=msg.id,
            session_id=msg.session_id,
            position=msg.position,
            hidden=reply.hidden,
            push_key=msg.push_key,
            route=tuple(msg.route[1:]),
            skip_signature=msg.skip_signature,
        )
        try:
            link = await self._link(nxt)
            await link.send(encode(forward))
        except RouteRefused as exc:  # §7.5: never dialled
            log.info("refusing to push to %s", exc)
            error = Error(id=msg.id, code="push_refused", message=str(exc), session_id=msg.session_id)
            await self._tell(entry.owner, error)
        except Exception as exc:
            log.info("push to %s failed: %s", url, exc)
            self._drop(url)
            await self._tell(entry.owner, Error(id=msg.id, code="push_failed", message=url, session_id=msg.session_id))
        return None

    async def _tell_result(self, owner, reply: StepResult) -> None:
        try:
            await owner.send(encode(reply))
        except Exception as exc:
            log.info("cannot deliver a pushed step's result: %s", exc)

    async def _link(self, entry: str) -> PushLink:
        """The open link to a route ``entry``'s node, dialled if needed (evicting the least recently used
        one past the cap).

        Raises:
            RouteRefused: a next hop this node does not dial (§7.5).
            OSError, TimeoutError, ChannelError, websockets errors: it cannot be reached or is not that node.
        """
        url, _, named_key = entry.partition("#")
        link = self._links.get(url)
        if link is not None and link.is_open:
            if named_key and named_key != link.public_key:
                raise RouteRefused(url, "the route names other keys than the node this link reaches")
            self._links.move_to_end(url)
            return link
        hop = await self.routes.check(entry)
        link = await PushLink.open(hop, self.node.limits.max_frame_bytes, self.connect_timeout)
        old = self._links.get(url)
        if old is not None:  # a concurrent step dialled it too: keep one
            self._drop(url)
            self._spawn(old.close())
        self._links[url] = link
        self._readers[url] = asyncio.create_task(self._read_errors(url, link))
        while len(self._links) > self.max_links:
            lru = next(iter(self._links))
            evicted = self._links[lru]
            self._drop(lru)
            self._spawn(evicted.close())
        return link

    def _spawn(self, coro) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _drop(self, url: str) -> None:
        self._links.pop(url, None)
        task = self._readers.pop(url, None)
        if task is not None:
            task.cancel()

    async def _read_errors(self, url: str, link: PushLink) -> None:
        """Relay errors that the next node sends back on a push link to our own session owner (§7.3)."""
        try:
            async for frame in link.ws:
                try:
                    msg = decode(link.channel.open(frame), self.node.limits)
                except ProtocolError:
                    continue
                except ChannelError as exc:  # not from the key holder, or out of order: this link is done
                    log.info("closing the push link to %s: %s", url, exc)
                    break
                if isinstance(msg, Error) and msg.session_id in self._sessions:
                    owner = self._sessions[msg.session_id].owner
                    await self._tell(owner, dataclasses.replace(msg, message=f"{url}: {msg.message}"[:4000]))
        except Exception:
            pass
        finally:
            if self._links.get(url) is link:
                self._links.pop(url, None)
                self._readers.pop(url, None)
                self._spawn(link.close())

    async def close(self) -> None:
        """Close every push link (and stop pushed steps still running)."""
        for task in list(self._tasks):
            task.cancel()
        for url in list(self._links):
            link = self._links.get(url)
            self._drop(url)
            if link is not None:
                await link.close()
