"""``manage.py run_dht_bootstrap``: the portal's own DHT bootstrap peer (#18, docs/dht.md).

Runs a DHT peer in the foreground, prints its ready line and writes its addresses to
``$LAYERSWARM_VAR_DIR/dht-bootstrap.json``, which ``/api/v1/swarm/bootstrap/``, the Contribute page and the
portal's DHT reader publish and use. The peer outlives the portal's web processes: the swarm keeps a
bootstrap peer while the portal is down.
"""

from __future__ import annotations

import json
import signal
import threading

from django.core.management.base import BaseCommand

from portal.swarm.dht_reader import bootstrap_file


class Command(BaseCommand):
    help = "Run the portal's DHT bootstrap peer (prints a ready line with its addresses)."

    def add_arguments(self, parser):
        parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
        parser.add_argument("--port", type=int, default=0, help="TCP port (0: any free one)")
        parser.add_argument("--public-host", help="address other peers dial, when listening on 0.0.0.0")
        parser.add_argument("--identity", help="libp2p key file: the same peer id (and addresses) after a restart")

    def handle(self, *args, **options):
        from swarmnode.dht import open_dht

        dht = open_dht(
            host=options["host"],
            port=options["port"],
            announce_host=options["public_host"],
            identity_path=options["identity"],
        )
        stop = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        try:
            addrs = dht.visible_addrs()
            path = bootstrap_file()
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps({"addrs": addrs}))
            self.stdout.write(json.dumps({"event": "ready", "addrs": addrs}))
            self.stdout.flush()
            stop.wait()
        finally:
            bootstrap_file().unlink(missing_ok=True)
            dht.close()
