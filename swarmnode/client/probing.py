"""Which nodes serve a model, asked of the tracker (if any) and of the nodes themselves, RTTs measured."""

from __future__ import annotations

import dataclasses

from swarmnode.client.latency import RttTable, ping_all
from swarmnode.discovery import PeerInfo, fetch_spans


def probe_swarm(
    urls: list[str], portal: str | None, name: str, rtts: RttTable, timeout: float, *, tracker_optional: bool
) -> tuple[list[PeerInfo], dict[str, str]]:
    """Ask the tracker (if any) who serves ``name``, then every node what it serves (RTTs measured).

    Returns:
        The nodes that answered, with the tracker's node id and reputation where it lists them, and
        why each other node did not answer.

    Raises:
        TrackerError: the tracker failed and not ``tracker_optional``.
    """
    urls = list(urls)
    tracked: list[PeerInfo] = []
    if portal:  # the tracker says who serves what; probing below confirms each node is alive
        try:
            tracked = fetch_spans(portal, name)
            urls += [p.url for p in tracked if p.url not in urls]
        except ValueError:
            if not tracker_optional:
                raise
    infos, errors = ping_all(urls, rtts, timeout=timeout)
    by_url = {p.url: p for p in tracked}
    out = []
    for info in infos:
        t = by_url.get(info.url)
        out.append(dataclasses.replace(info, node_id=t.node_id, reputation=t.reputation) if t else info)
    return out, errors
