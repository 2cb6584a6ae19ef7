"""Server-to-server push (spec §7): run a pushed step, then forward it to the next node or deliver it.

A pushed step is one-way. Errors travel to the connection that opened the session on the node
that noticed them, so the client hears about every failure on one of its own connections; an
error that a downstream node sends back on a push link is relayed the same way.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
import logging
from dataclasses import dataclass

from websockets.asyncio.client import ClientConnection, connect

from swarmnode.protocol import Error, ProtocolError, Step, StepResult, decode, encode
from swarmnode.protocol.framing import message_bound

log = logging.getLogger("swarmnode.push")

MIN_KEY_LEN = 16


@dataclass
class _Entry:
    key: str
    owner: object  # the websocket that opened the session


class PushRelay:
    """The push side of one node.

    Args:
        node: the serving :class:`~swarmnode.server.node.Node` (its ``dispatch`` runs the steps).
        connect_timeout: seconds to reach the next node.
    """

    def __init__(self, node, connect_timeout: float = 5.0) -> None:
        self.node = node
        self.connect_timeout = connect_timeout
        self._sessions: dict[str, _Entry] = {}
        self._links: dict[str, ClientConnection] = {}
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
        except Exception as exc:  # a backend failure: the cache may be partly written (spec §4.3)
            log.exception("internal error in a pushed step")
            self.node.pool.close(msg.session_id)
            await self._tell(
                entry.owner, Error(id=msg.id, code="internal", message=str(exc)[:500], session_id=msg.session_id)
            )
            return None
        assert isinstance(reply, StepResult)
        if not msg.route:
            await self._tell_result(entry.owner, reply)
            return None
        nxt = msg.route[0]
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
        except Exception as exc:
            log.info("push to %s failed: %s", nxt, exc)
            self._drop(nxt)
            await self._tell(entry.owner, Error(id=msg.id, code="push_failed", message=nxt, session_id=msg.session_id))
        return None

    async def _tell_result(self, owner, reply: StepResult) -> None:
        try:
            await owner.send(encode(reply))
        except Exception as exc:
            log.info("cannot deliver a pushed step's result: %s", exc)

    async def _link(self, url: str) -> ClientConnection:
        if not url.startswith(("ws://", "wss://")):
            raise ValueError(f"not a websocket URL: {url[:100]!r}")
        link = self._links.get(url)
        if link is not None and link.state.name == "OPEN":
            return link
        max_size = message_bound(self.node.limits.max_frame_bytes)  # the next node only sends errors back (§7.3)
        link = await asyncio.wait_for(
            connect(url, max_size=max_size, compression=None, ping_interval=None), self.connect_timeout
        )
        self._links[url] = link
        self._readers[url] = asyncio.create_task(self._read_errors(url, link))
        return link

    def _drop(self, url: str) -> None:
        self._links.pop(url, None)
        task = self._readers.pop(url, None)
        if task is not None:
            task.cancel()

    async def _read_errors(self, url: str, link: ClientConnection) -> None:
        """Relay errors that the next node sends back on a push link to our own session owner (§7.3)."""
        try:
            async for frame in link:
                try:
                    msg = decode(frame)
                except ProtocolError:
                    continue
                if isinstance(msg, Error) and msg.session_id in self._sessions:
                    owner = self._sessions[msg.session_id].owner
                    await self._tell(owner, dataclasses.replace(msg, message=f"{url}: {msg.message}"[:4000]))
        except Exception:
            pass
        finally:
            if self._links.get(url) is link:
                self._links.pop(url, None)

    async def close(self) -> None:
        """Close every push link (and stop pushed steps still running)."""
        for task in list(self._tasks):
            task.cancel()
        for url in list(self._links):
            link = self._links.get(url)
            self._drop(url)
            if link is not None:
                await link.close()
