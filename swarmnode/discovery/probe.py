"""Asking nodes directly what they serve (an ``info`` request, spec §4.1), and the swarm as seen from both sources.

What a tracker lists is a stranger's word: its URLs are dialled only at public addresses unless the operator allows
private ones (:mod:`swarmnode.discovery.addresses`), and a node's public key is the one the tracker registered (the
node proved it holds it), never the one an ``info`` reply names: whoever answers at a URL could name any key.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable

from websockets.sync.client import connect

from swarmnode.discovery.addresses import (
    PrivateAddress,
    dial_public,
    names_private_host,
    public_address,
    tracker_is_local,
)
from swarmnode.discovery.peers import PeerInfo
from swarmnode.discovery.tracker import TrackerError, fetch_spans
from swarmnode.protocol import Info, InfoReply, Limits, ProtocolError, decode, encode

log = logging.getLogger("swarmnode.discovery")

#: An ``info`` reply is a few hundred bytes; nothing a probed peer sends may be larger than this.
MAX_INFO_BYTES = 64 * 1024

#: ``ask(url, timeout) -> PeerInfo``; raises on any failure (its text is the error reported).
Ask = Callable[[str, float], PeerInfo]


def ask_info(url: str, timeout: float, *, public_only: bool = False) -> PeerInfo:
    """One ``info`` request on a fresh websocket, closed afterwards.

    Args:
        public_only: dial only a public address (a URL a tracker listed): the host is resolved and checked
            once, and that address dialled.

    Raises:
        OSError, TimeoutError, ProtocolError, ValueError: unreachable, silent or garbled peer (``PrivateAddress``,
            a ``ValueError``, for a private one when ``public_only``).
    """
    if not url.startswith(("ws://", "wss://")):
        raise ValueError(f"not a websocket URL: {url[:200]!r}")
    sock = dial_public(url, timeout) if public_only else None
    with connect(url, sock=sock, open_timeout=timeout, max_size=MAX_INFO_BYTES, compression=None) as ws:
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


def _ask_public(ask: Ask) -> Ask:
    """``ask``, for URLs a tracker listed: only at public addresses (pinned to the checked one by default)."""
    if ask is ask_info:
        return lambda url, timeout: ask_info(url, timeout, public_only=True)

    def checked(url: str, timeout: float) -> PeerInfo:
        public_address(url)  # raises for a private one; `ask` resolves the name again (a short rebinding window)
        return ask(url, timeout)

    return checked


def pin_to_tracker(answer: PeerInfo, tracked: PeerInfo) -> PeerInfo | None:
    """A tracked node's own ``answer`` (its info reply), with the tracker's id, score and key.

    Returns:
        None when the answer names other keys than the tracker registered (and proved, at registration) for that
        node: whoever answers at the URL could name any key.
    """
    if tracked.public_key and answer.public_key != tracked.public_key:
        log.warning("%s answers with other keys than the tracker registered for it: left out", answer.url[:200])
        return None
    return dataclasses.replace(
        answer,
        public_key=tracked.public_key or answer.public_key,
        node_id=tracked.node_id,
        reputation=tracked.reputation,
    )


def dialable(
    tracked: list[PeerInfo], portal: str | None, private_ok: bool | None = None, resolve: bool = False
) -> tuple[list[PeerInfo], dict[str, str]]:
    """The nodes of a tracker's list that may be dialled, and why each other one may not.

    Args:
        private_ok: dial private addresses too; None: when the tracker at ``portal`` is itself on loopback or a
            private network (a local swarm).
        resolve: also resolve names and refuse those with a private address (else only IP literals and
            ``localhost`` are refused: for a caller that dials with ``ask_info(public_only=True)``).
    """
    if private_ok is None:
        private_ok = tracker_is_local(portal)
    if private_ok:
        return list(tracked), {}
    kept, refused = [], {}
    for p in tracked:
        try:
            if resolve:
                public_address(p.url)
            elif names_private_host(p.url):
                raise PrivateAddress(f"{p.url[:200]} is a private address")
        except PrivateAddress as exc:
            log.warning("the tracker lists %s: not dialled (%s)", p.url[:200], exc)
            refused[p.url] = f"not dialled: {exc}"
        else:
            kept.append(p)
    return kept, refused


def swarm_view(
    model: str,
    portal: str | None,
    peers: list[str],
    exclude_url: str = "",
    probe_limit: int = 32,
    ask: Ask = ask_info,
    private_ok: bool | None = None,
) -> list[PeerInfo]:
    """The nodes serving ``model`` that the tracker lists and that the given peers say they are.

    When the tracker lists at most ``probe_limit`` nodes, each is asked directly and the silent ones dropped; a
    node that answers with other keys than the tracker registered for it is dropped too (anyone could answer at
    a URL). The tracker's URLs are dialled only at public addresses unless ``private_ok`` (None: when the tracker
    itself is on loopback or a private network, a local swarm); ``peers`` (the operator's own list) always.

    Returns:
        :class:`PeerInfo` records (a tracker or peer that fails is skipped), draining nodes and
        ``exclude_url`` left out.
    """
    found = {}
    if portal:
        if private_ok is None:
            private_ok = tracker_is_local(portal)
        try:
            found = {p.url: p for p in dialable(fetch_spans(portal, model), portal, private_ok)[0]}
        except TrackerError as exc:
            log.warning("cannot read the swarm from the tracker: %s", exc)
    if 0 < len(found) <= probe_limit:
        # The tracker lists a node until its heartbeats have been missing for a while; in a small
        # swarm asking each node is cheap and tells a dead one apart at once.
        alive, errors = probe_peers(list(found), timeout=3.0, ask=ask if private_ok else _ask_public(ask))
        for u, e in errors.items():
            log.info("tracked node %s did not answer: %s", u[:200], e)
        pinned = (pin_to_tracker(p, found[p.url]) for p in alive if p.model == model)
        found = {p.url: p for p in pinned if p is not None}
    urls = [u for u in peers if u and u not in found]
    if urls:
        infos, errors = probe_peers(urls, timeout=5.0, ask=ask)
        for u, e in errors.items():
            log.info("peer %s did not answer: %s", u, e)
        for p in infos:
            if p.model == model:
                found[p.url] = p
    return [p for u, p in found.items() if u != exclude_url and p.state != "draining"]
