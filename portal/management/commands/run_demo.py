"""``manage.py run_demo``: the portal (daphne) + Celery + a local swarm that registers with it.

Embedded mode (SQLite, in-memory channel layer, folder-backed Celery broker): nothing to install.
Ctrl-C stops every process.
"""

from __future__ import annotations

import json
import signal
import time
import urllib.request

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError

from portal.accounts.models import NodeToken
from portal.processes import PortalProcesses
from portal.swarm.models import Node

DEMO_USER = "demo"
DEMO_PASSWORD = "layerswarm-demo"
DEMO_TOKEN_NAME = "demo swarm"


def prepare_demo_account() -> str:
    """Create the demo user (a superuser, so the admin can be explored) and a fresh node token; return it.

    Tokens of earlier runs are revoked and their nodes marked offline: those processes are gone.
    """
    users = get_user_model()
    user, created = users.objects.get_or_create(
        username=DEMO_USER, defaults={"is_staff": True, "is_superuser": True, "email": "demo@example.com"}
    )
    if created:
        user.set_password(DEMO_PASSWORD)
        user.save()
    old = NodeToken.objects.filter(user=user, name=DEMO_TOKEN_NAME, revoked_at__isnull=True)
    Node.objects.filter(token__in=old).update(state=Node.State.OFFLINE)
    for token in old:
        token.revoke()
    _, plain = NodeToken.create_for(user, DEMO_TOKEN_NAME)
    return plain


def wait_covered(portal_url: str, model: str, timeout: float = 120.0) -> dict:
    """Poll the health API until ``model`` is fully covered; return its health entry."""
    deadline = time.monotonic() + timeout
    entry: dict = {}
    while time.monotonic() < deadline:
        with urllib.request.urlopen(f"{portal_url}/api/v1/swarm/health/?model={model}", timeout=5) as r:
            models = json.loads(r.read())["models"]
        entry = models[0] if models else {}
        if entry.get("covered"):
            return entry
        time.sleep(0.5)
    raise CommandError(f"the swarm did not cover {model} in {timeout:.0f}s: {entry.get('banner', 'unknown model')}")


class Command(BaseCommand):
    help = "Run the portal, Celery and a local swarm registered with it (Ctrl-C stops everything)."

    def add_arguments(self, parser):
        parser.add_argument("--port", type=int, default=8000, help="portal port (a free one if taken)")
        parser.add_argument("--nodes", type=int, default=3)
        parser.add_argument("--model", default="smollm2")
        parser.add_argument("--no-celery", action="store_true", help="skip the Celery worker and beat")

    def handle(self, *args, port: int, nodes: int, model: str, no_celery: bool, **options):
        from swarmnode.launcher import LocalSwarm
        from swarmnode.models import Checkpoint, resolve_model

        # `kill` (SIGTERM) stops the demo as cleanly as Ctrl-C does. SIGINT is set explicitly because a
        # shell without job control starts background jobs with it ignored, and children inherit that:
        # the nodes could then never say goodbye to the portal.
        signal.signal(signal.SIGTERM, signal.default_int_handler)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        call_command("migrate", verbosity=0, interactive=False)
        token = prepare_demo_account()
        num_blocks = Checkpoint(resolve_model(model)).num_blocks
        log_dir = settings.VAR_DIR / "demo"
        self.stdout.write(f"logs: {log_dir}/")
        portal = PortalProcesses(port=port, celery=not no_celery, log_dir=log_dir, migrate=False)
        swarm = None
        try:
            portal.start()
            self.stdout.write(f"portal up at {portal.url}/ ; starting {nodes} nodes of {model}...")
            swarm = LocalSwarm(model, num_blocks, nodes, extra_args=["--portal", portal.url, "--token", token])
            swarm.log_dir = log_dir
            swarm.start()
            entry = wait_covered(portal.url, model)
            self._banner(portal.url, model, entry)
            while portal.alive() and all(n.process.poll() is None for n in swarm.nodes):
                time.sleep(0.5)
            self.stderr.write("a process exited; stopping the demo (see the logs)")
        except KeyboardInterrupt:
            self.stdout.write("\nstopping...")
        finally:
            if swarm is not None:
                self._stop_nodes(swarm)
            portal.stop()

    def _stop_nodes(self, swarm) -> None:
        # Ctrl-C in a terminal already reached the nodes (same process group) and they are saying goodbye
        # to the portal; a second SIGINT would cut that short. So wait first, then interrupt stragglers
        # (e.g. when only this process was signalled), then terminate.
        for sig, grace in ((None, 3.0), (signal.SIGINT, 5.0)):
            for node in swarm.nodes:
                if sig is not None and node.process.poll() is None:
                    node.process.send_signal(sig)
            deadline = time.monotonic() + grace
            while time.monotonic() < deadline and any(n.process.poll() is None for n in swarm.nodes):
                time.sleep(0.1)
        swarm.stop()

    def _banner(self, url: str, model: str, entry: dict) -> None:
        w = self.stdout.write
        w("")
        w(self.style.SUCCESS(f"Layerswarm is up: {url}/"))
        w(f"  demo login:   {DEMO_USER} / {DEMO_PASSWORD}  (also admin: {url}/admin/)")
        w(f"  health map:   {url}/swarm/{model}/   ({entry['online_nodes']} nodes online, every block covered)")
        w(f"  chat:         {url}/chat/")
        w(f"  OpenAI API:   base_url={url}/v1  (api_key: manage.py create_api_key {DEMO_USER})")
        w(f"  API docs:     {url}/api/docs/")
        w("  chat from another terminal (the client finds the nodes through the tracker):")
        prompt = '--chat --prompt "What is the capital of France?"'
        w(f"    .venv/bin/swarmnode generate --portal {url} --model {model} {prompt}")
        w("Press Ctrl-C to stop the portal, Celery and every node.")
