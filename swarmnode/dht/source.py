"""The DHT as a peer source for clients and nodes, with a fallback list of last known good peers on disk.

:func:`dht_peers` asks the DHT (joined through bootstrap peers, in client mode: it stores nothing for others) which
nodes serve a model; when no bootstrap peer answers, or hivemind cannot load here, it returns the peers that
answered last time (:func:`remember`), kept in ``$LAYERSWARM_HOME/dht-peers/<model digest>.json``. Those are only
URLs and keys to try: the caller asks each node what it serves and pins it to the key its record named.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from pathlib import Path

from swarmnode.discovery import PeerInfo
from swarmnode.discovery.addresses import is_private_host

log = logging.getLogger("swarmnode.dht")

MAX_FALLBACK_PEERS = 64
_FALLBACK_FIELDS = ("url", "model", "start_block", "end_block", "public_key")


def fallback_path(model: str, home: Path | None = None) -> Path:
    """Where the fallback list of ``model`` lives."""
    if home is None:
        from swarmnode.models.registry import layerswarm_home

        home = layerswarm_home()
    return home / "dht-peers" / f"{hashlib.sha256(model.encode()).hexdigest()[:32]}.json"


def remember(model: str, peers: list[PeerInfo], home: Path | None = None) -> None:
    """Keep ``peers`` (nodes that answered) as ``model``'s fallback list; best effort (a read-only disk is logged)."""
    rows = [{f: getattr(p, f) for f in _FALLBACK_FIELDS} for p in peers if p.url][:MAX_FALLBACK_PEERS]
    if not rows:
        return
    path = fallback_path(model, home)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"model": model, "peers": rows}))
        os.replace(tmp, path)
    except OSError as exc:
        log.info("could not save the fallback peer list: %s", exc)


def recall(model: str, home: Path | None = None) -> list[PeerInfo]:
    """``model``'s fallback list ([] if none, or unreadable)."""
    try:
        body = json.loads(fallback_path(model, home).read_text())
        rows = body["peers"][:MAX_FALLBACK_PEERS]
        return [
            PeerInfo(
                url=str(r["url"]),
                model=str(r["model"]),
                start_block=int(r["start_block"]),
                end_block=int(r["end_block"]),
                public_key=str(r["public_key"]),
            )
            for r in rows
            if r.get("model") == model
        ]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return []


def bootstrap_is_local(initial_peers: list[str]) -> bool:
    """Whether every bootstrap multiaddr is on loopback or a private network (a local swarm: its nodes may be too)."""
    hosts = [m.group(1) for a in initial_peers if (m := re.match(r"/ip[46]/([^/]+)/", a))]
    return bool(hosts) and len(hosts) == len(initial_peers) and all(is_private_host(h) for h in hosts)


def dht_peers(
    initial_peers: list[str], model: str, num_blocks: int, timeout: float = 30.0
) -> tuple[list[PeerInfo], str]:
    """The nodes serving ``model`` as the DHT lists them, or the fallback list when the DHT cannot be asked.

    Returns:
        ``(peers, source)``: source is ``"dht"`` or ``"fallback"`` (then the reason was logged).
    """
    from swarmnode.dht import DHTUnavailable, open_dht

    try:
        dht = open_dht(initial_peers, client_mode=True, start_timeout=timeout)
    except (DHTUnavailable, OSError) as exc:
        cached = recall(model)
        log.warning("cannot ask the DHT (%s): trying the %d last known good peers", exc, len(cached))
        return cached, "fallback"
    try:
        return dht.lookup(model, range(num_blocks), timeout=timeout), "dht"
    except Exception as exc:  # a lookup that fails half-way: as good as no DHT
        cached = recall(model)
        log.warning("the DHT lookup failed (%r): trying the %d last known good peers", exc, len(cached))
        return cached, "fallback"
    finally:
        dht.close()
