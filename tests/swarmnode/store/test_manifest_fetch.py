"""A joining node asks peers for a model's manifest (issue #19): it keeps only one a trusted publisher signed and
that is the model it asked for, reads at most MAX_MANIFEST_BYTES of a hostile peer's answer, and a seeder on a
node sends no piece larger than that node's frame limit. The hostile peers are real HTTP servers on loopback."""

from __future__ import annotations

import asyncio
import hashlib
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from swarmnode.store import Manifest, ObjectRef, ObjectStore, SignedManifest, TrustedPublishers
from swarmnode.store.fetching import FetchError, fetch_manifest
from swarmnode.store.manifest import MAX_MANIFEST_BYTES, key_id, piece_hashes
from swarmnode.store.seeding import Seeder


def _signed(name: str, key: Ed25519PrivateKey, salt: bytes = b"") -> SignedManifest:
    data = b"block" + salt
    ref = ObjectRef(hashlib.sha256(data).hexdigest(), len(data), piece_hashes(data))
    manifest = Manifest(
        name=name, config={"num_hidden_layers": 1}, layer_prefix="model.layers", blocks=(ref,), client=ref,
        tokenizer=ref, dtype="float32", publisher=key_id(key.public_key().public_bytes_raw()),
    )  # fmt: skip
    return SignedManifest.sign(manifest, key)


class Peer:
    """An HTTP server that answers every GET with ``body`` (streamed in 1 MiB writes)."""

    def __init__(self, body: bytes) -> None:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's name)
                outer.requests += 1
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                try:
                    for i in range(0, len(body), 1 << 20):
                        self.wfile.write(body[i : i + (1 << 20)])
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the node stopped reading: what we want

            def log_message(self, *args):
                pass

        self.requests = 0
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def peers():
    started: list[Peer] = []
    yield lambda body: started.append(Peer(body)) or started[-1]
    for peer in started:
        peer.close()


def test_it_keeps_the_first_trusted_manifest_of_the_model_asked_for(peers, tmp_path):
    ours, theirs = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    wanted = _signed("tiny", ours)
    impostor = peers(_signed("tiny", theirs).to_bytes())  # signed by a key we do not trust
    other_model = peers(_signed("other", ours, b"x").to_bytes())  # trusted, but not the model asked for
    honest = peers(wanted.to_bytes())
    store = ObjectStore(tmp_path / "store", 1 << 20)
    trusted = TrustedPublishers([ours.public_key().public_bytes_raw()])
    got = fetch_manifest([impostor.url, other_model.url, honest.url], wanted.manifest.digest, trusted, store)
    assert got == wanted.manifest
    assert (store.root / "refs" / "tiny").is_file() and (store.root / "refs" / wanted.manifest.digest).is_file()
    with pytest.raises(FetchError) as refused:
        fetch_manifest([impostor.url, other_model.url], "tiny", trusted, ObjectStore(tmp_path / "s2", 1 << 20))
    assert "not a trusted publisher" in str(refused.value) and "'other' for 'tiny'" in str(refused.value)


def test_it_stops_reading_a_manifest_larger_than_the_limit(peers, tmp_path):
    flood = peers(b"[" * (MAX_MANIFEST_BYTES + (4 << 20)))
    store = ObjectStore(tmp_path / "store", 1 << 30)
    trusted = TrustedPublishers([Ed25519PrivateKey.generate().public_key().public_bytes_raw()])
    with pytest.raises(FetchError, match="at most"):
        fetch_manifest([flood.url], "tiny", trusted, store)
    assert store.list() == []


def test_a_nodes_seeder_sends_no_piece_larger_than_its_frame_limit(tmp_path):
    store = ObjectStore(tmp_path / "store", 1 << 30)
    digest, _ = store.put(b"w" * (1 << 20), "block")
    seeder = Seeder(store, max_piece=64 << 10, allow=lambda d: d == digest)

    async def ask(path: str):
        return await seeder.answer(path)

    small = asyncio.run(ask(f"/layerswarm/v1/objects/{digest}?piece=1&size={64 << 10}"))
    assert small.status_code == 200 and small.body == b"w" * (64 << 10)
    assert asyncio.run(ask(f"/layerswarm/v1/objects/{digest}?piece=0&size={1 << 20}")).status_code == 416
    other, _ = store.put(b"not served", "block")
    assert asyncio.run(ask(f"/layerswarm/v1/objects/{other}")).status_code == 404  # held, but not allowed


def test_a_node_that_seeds_only_its_own_model_names_no_other_manifest(tmp_path):
    store = ObjectStore(tmp_path / "store", 1 << 30)
    key = Ed25519PrivateKey.generate()
    served, private = _signed("served", key), _signed("private-finetune", key, b"p")
    served_digest, _ = store.put(served.to_bytes(), "manifest")
    store.put(private.to_bytes(), "manifest")
    seeder = Seeder(store, allow=lambda d: d == served_digest)

    async def ask(path: str):
        return await seeder.answer(path)

    assert asyncio.run(ask("/layerswarm/v1/manifests/served")).body == served.to_bytes()
    for name in ("private-finetune", private.manifest.digest):
        assert asyncio.run(ask(f"/layerswarm/v1/manifests/{name}")).status_code == 404
    everything = Seeder(store)  # a plain seeder (swarmnode seed, or a node's --seed-cache) names all it holds
    assert asyncio.run(everything.answer("/layerswarm/v1/manifests/private-finetune")).status_code == 200
