"""Which nodes serve a model, asked of the tracker (if any) and of the nodes themselves, RTTs measured."""

from __future__ import annotations

from swarmnode.client.latency import RttTable, ping_all
from swarmnode.discovery import PeerInfo, dialable, fetch_spans, pin_to_tracker


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
    refused: dict[str, str] = {}
    if portal:  # the tracker says who serves what; probing below confirms each node is alive
        try:
            # A stranger registers what URL it likes: only public addresses are dialled (the user's --peers are).
            tracked, refused = dialable(fetch_spans(portal, name), portal, resolve=True)
            urls += [p.url for p in tracked if p.url not in urls]
        except ValueError:
            if not tracker_optional:
                raise
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
    return out, errors
