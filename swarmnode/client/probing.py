"""Which nodes serve a model, asked of the tracker (if any) and of the nodes themselves, RTTs measured."""

from __future__ import annotations

from swarmnode.client.latency import RttTable, ping_all
from swarmnode.discovery import PeerInfo, dialable, fetch_spans, pin_to_tracker


def probe_swarm(
    urls: list[str],
    portal: str | None,
    name: str,
    rtts: RttTable,
    timeout: float,
    *,
    tracker_optional: bool,
    dht: tuple[str, ...] = (),
    num_blocks: int = 0,
) -> tuple[list[PeerInfo], dict[str, str]]:
    """Ask the tracker (if any) and the DHT (if ``dht`` names bootstrap peers) who serves ``name``, then every node
    what it serves (RTTs measured).

    A node the DHT lists is pinned to the key its signed record names (as a tracked node to the tracker's); when
    the DHT cannot be asked, the nodes that answered last time are tried (:mod:`swarmnode.dht.source`).

    Returns:
        The nodes that answered, with the tracker's node id and reputation where it lists them, and
        why each other node did not answer.

    Raises:
        TrackerError: the tracker failed and not ``tracker_optional``.
    """
    urls = list(urls)
    tracked: list[PeerInfo] = []
    refused: dict[str, str] = {}
    if portal:  # the tracker says who serves what; probing below confirms each node is alive
        try:
            # A stranger registers what URL it likes: only public addresses are dialled (the user's --peers are).
            tracked, refused = dialable(fetch_spans(portal, name), portal, resolve=True)
            urls += [p.url for p in tracked if p.url not in urls]
        except ValueError:
            if not tracker_optional:
                raise
    if dht:
        listed, why = _from_dht(list(dht), name, num_blocks, timeout)
        refused.update(why)
        tracked += [p for p in listed if p.url not in {t.url for t in tracked}]
        urls += [p.url for p in listed if p.url not in urls]
    infos, errors = ping_all(urls, rtts, timeout=timeout)
    errors.update({u: why for u, why in refused.items() if u not in urls})
    by_url = {p.url: p for p in tracked}
    out = []
    for info in infos:
        t = by_url.get(info.url)
        pinned = pin_to_tracker(info, t) if t else info  # the tracker's key (proved), not the answer's word
        if pinned is None:
            errors[info.url] = "answers with other keys than the tracker registered for it"
        else:
            out.append(pinned)
    if dht and out:
        from swarmnode.dht.source import remember

        remember(name, out)  # the last known good peers, for when no bootstrap peer answers
    return out, errors


def _from_dht(initial_peers: list[str], name: str, num_blocks: int, timeout: float):
    """The DHT's records for ``name`` that may be dialled (private addresses only in a local swarm), and why not
    the others."""
    from swarmnode.dht.source import bootstrap_is_local, dht_peers

    listed, _ = dht_peers(initial_peers, name, num_blocks, timeout=max(timeout, 10.0))
    listed = [p for p in listed if p.model == name]
    if bootstrap_is_local(initial_peers):
        return listed, {}
    return dialable(listed, None, private_ok=False, resolve=True)
