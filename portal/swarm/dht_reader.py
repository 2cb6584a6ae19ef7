"""The portal as a reader of the DHT (#18, docs/dht.md): nodes announced there show on the health map.

With ``SWARM_DHT_BOOTSTRAP`` set (or a bootstrap peer run by ``manage.py run_dht_bootstrap``), each portal
process keeps one client-mode DHT peer in a background thread and reads every catalogued model's records every
:data:`READ_EVERY_S` seconds. Nodes need not heartbeat the portal to appear: a node the DHT lists and the tracker
does not (a ``--dht-only`` node, or one that joined while the portal was down) is shown as ``connection: "dht"``.
Records are verified by ``swarmnode.dht`` (signature, key, expiry) before they get here.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

from django.conf import settings
from django.db import close_old_connections

log = logging.getLogger("portal.swarm.dht")

READ_EVERY_S = 5.0
BOOTSTRAP_FILE = "dht-bootstrap.json"  # in LAYERSWARM_VAR_DIR: the addresses of the portal's own bootstrap peer


def bootstrap_file() -> Path:
    """Where ``run_dht_bootstrap`` writes its addresses."""
    return Path(settings.VAR_DIR) / BOOTSTRAP_FILE


def bootstrap_addrs() -> list[str]:
    """The DHT bootstrap addresses this portal publishes: ``SWARM_DHT_BOOTSTRAP``, then its own peer's."""
    addrs = list(settings.SWARM_DHT_BOOTSTRAP)
    try:
        own = json.loads(bootstrap_file().read_text()).get("addrs", [])
        addrs += [a for a in own if isinstance(a, str) and a not in addrs]
    except (OSError, ValueError, AttributeError):
        pass
    return addrs


class DHTReader:
    """A background thread that reads the DHT's records of every catalogued model."""

    def __init__(self, bootstrap: list[str], interval: float = READ_EVERY_S) -> None:
        self.bootstrap = list(bootstrap)
        self.interval = interval
        self._lock = threading.Lock()
        self._peers: dict[str, list] = {}
        self.read_at = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="dht-reader", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        from swarmnode.dht import DHTUnavailable, open_dht

        dht = None
        while not self._stop.is_set():
            try:
                if dht is None:
                    dht = open_dht(self.bootstrap, client_mode=True)
                self._read(dht)
            except DHTUnavailable as exc:
                log.warning("%s: the health map shows tracked nodes only", exc)
                return
            except Exception as exc:  # a bootstrap peer down, a lookup that failed: try again later
                log.warning("reading the DHT failed: %s", exc)
                if dht is not None:
                    dht.close()
                    dht = None
            finally:
                close_old_connections()
            self._stop.wait(self.interval)
        if dht is not None:
            dht.close()

    def close(self) -> None:
        """Stop reading and leave the DHT (tests; a portal process keeps its reader until it exits)."""
        self._stop.set()
        self._thread.join(30.0)

    def _read(self, dht) -> None:
        from portal.swarm.models import SwarmModel

        models = list(SwarmModel.objects.values_list("name", "num_blocks"))
        found = {name: dht.lookup(name, range(n)) for name, n in models if n}
        with self._lock:
            self._peers, self.read_at = found, time.time()

    def peers(self, model: str) -> list:
        """The last read of ``model``'s nodes (``swarmnode.discovery.PeerInfo``)."""
        with self._lock:
            return list(self._peers.get(model, []))


class _Holder:
    """This process's one reader, started when a bootstrap address is first known (then kept)."""

    lock = threading.Lock()
    reader: DHTReader | None = None


def reader() -> DHTReader | None:
    """This process's reader (started on first use), or None while no bootstrap address is configured."""
    with _Holder.lock:
        if _Holder.reader is None:
            addrs = bootstrap_addrs()
            if addrs:
                _Holder.reader = DHTReader(addrs)
        return _Holder.reader


def dht_nodes_json(model: str, tracked: list) -> list[dict]:
    """Health-map entries of ``model``'s nodes that the DHT lists and the tracker does not list online."""
    r = reader()
    if r is None:
        return []
    online = {n.public_key for n in tracked if n.state == "online" and n.public_key}
    online |= {n.url for n in tracked if n.state == "online"}
    seen = datetime.fromtimestamp(r.read_at, UTC).isoformat() if r.read_at else None
    return [
        {
            "id": None,
            "owner": "",
            "start_block": p.start_block,
            "end_block": p.end_block,
            "state": "online",
            "connection": "dht",
            "url": p.url,
            "throughput": p.throughput,
            "cache_tokens_left": p.cache_tokens_left,
            "backend": p.backend,
            "device": p.device,
            "dtype": p.dtype,
            "version": p.version,
            "last_seen_at": seen,
        }
        for p in r.peers(model)
        if p.public_key not in online and p.url not in online and p.state == "online"
    ]
