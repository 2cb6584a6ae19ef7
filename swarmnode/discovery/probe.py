"""Asking nodes directly what they serve (an ``info`` request, spec §4.1), and the swarm as seen from both sources."""

from __future__ import annotations

import logging
from collections.abc import Callable

from websockets.sync.client import connect

from swarmnode.discovery.peers import PeerInfo
from swarmnode.discovery.tracker import TrackerError, fetch_spans
from swarmnode.protocol import Info, InfoReply, Limits, ProtocolError, decode, encode

log = logging.getLogger("swarmnode.discovery")

#: An ``info`` reply is a few hundred bytes; nothing a probed peer sends may be larger than this.
MAX_INFO_BYTES = 64 * 1024

#: ``ask(url, timeout) -> PeerInfo``; raises on any failure (its text is the error reported).
Ask = Callable[[str, float], PeerInfo]


def ask_info(url: str, timeout: float) -> PeerInfo:
    """One ``info`` request on a fresh websocket, closed afterwards.

    Raises:
        OSError, TimeoutError, ProtocolError, ValueError: unreachable, silent or garbled peer.
    """
    if not url.startswith(("ws://", "wss://")):
        raise ValueError(f"not a websocket URL: {url[:200]!r}")
    with connect(url, open_timeout=timeout, max_size=MAX_INFO_BYTES, compression=None) as ws:
        ws.send(encode(Info(id=1)))
        reply = decode(ws.recv(timeout=timeout), Limits(max_frame_bytes=MAX_INFO_BYTES))
    if not isinstance(reply, InfoReply):
        raise ProtocolError("bad_reply", f"expected info_reply, got {type(reply).__name__}")
    return PeerInfo.from_reply(url, reply)


def probe_peers(urls: list[str], timeout: float = 10.0, ask: Ask = ask_info) -> tuple[list[PeerInfo], dict[str, str]]:
    """Ask each URL what it serves; return the answers and the errors of those that failed.

    Args:
        ask: how to ask one peer (default :func:`ask_info`; the client passes one that keeps the
            connection open for the session that follows).
    """
    infos, errors = [], {}
    for url in urls:
        try:
            infos.append(ask(url, timeout))
        except Exception as exc:  # whatever a peer does, it only ends up in `errors`
            errors[url] = str(exc) or type(exc).__name__
    return infos, errors


def swarm_view(
    model: str,
    portal: str | None,
    peers: list[str],
    exclude_url: str = "",
    probe_limit: int = 32,
    ask: Ask = ask_info,
) -> list[PeerInfo]:
    """The nodes serving ``model`` that the tracker lists and that the given peers say they are.

    When the tracker lists at most ``probe_limit`` nodes, each is asked directly and the silent ones dropped.

    Returns:
        :class:`PeerInfo` records (a tracker or peer that fails is skipped), draining nodes and
        ``exclude_url`` left out.
    """
    found = {}
    if portal:
        try:
            for p in fetch_spans(portal, model):
                found[p.url] = p
        except TrackerError as exc:
            log.warning("cannot read the swarm from the tracker: %s", exc)
    if 0 < len(found) <= probe_limit:
        # The tracker lists a node until its heartbeats have been missing for a while; in a small
        # swarm asking each node is cheap and tells a dead one apart at once.
        alive, _ = probe_peers(list(found), timeout=3.0, ask=ask)
        found = {p.url: p for p in alive if p.model == model}
    urls = [u for u in peers if u and u not in found]
    if urls:
        infos, errors = probe_peers(urls, timeout=5.0, ask=ask)
        for u, e in errors.items():
            log.info("peer %s did not answer: %s", u, e)
        for p in infos:
            if p.model == model:
                found[p.url] = p
    return [p for u, p in found.items() if u != exclude_url and p.state != "draining"]
