"""Objects travel between peers: two real seeder processes send one span's blocks in parallel, every piece
checked against the manifest; a peer that flips a bit is banned and its pieces come from the other; a fetch
cut off mid-way resumes from its verified pieces; seeders answer strangers' bad requests with clear errors."""

from __future__ import annotations

import gc
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading

import httpx
import pytest
import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from safetensors.torch import load_file
from transformers import LlamaConfig, LlamaForCausalLM

from swarmnode.store import ObjectStore, materialize, publish
from swarmnode.store.fetching import Fetcher, FetchError, part_files
from swarmnode.testing.polling import wait_until

PIECE = 4096
TINY = dict(
    vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=6, num_attention_heads=4,
    num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=False,
)  # fmt: skip
SEEDER = """
import asyncio, sys, time
from swarmnode.store import ObjectStore
from swarmnode.store import seed_server, seeding

delay = float(sys.argv[2])
max_piece = int(sys.argv[3])


def slowed(answer):
    async def slow(*args):
        await asyncio.sleep(delay)
        return await answer(*args)
    return slow


if delay:  # every answer, pieces or not, waits a while
    seeding.Seeder.answer = slowed(seeding.Seeder.answer)
    seed_server._Server._send_piece = slowed(seed_server._Server._send_piece)
store = ObjectStore(sys.argv[1], cap_bytes=1 << 30)
asyncio.run(seeding.serve_seeder(store, ready=lambda p: print(p, flush=True), max_piece=max_piece))
"""
FETCHER = """
import json, sys
from swarmnode.store import ObjectStore
from swarmnode.store.fetching import Fetcher
from swarmnode.store.manifest import Manifest

manifest = Manifest.from_json(json.loads(open(sys.argv[2]).read()))
store = ObjectStore(sys.argv[1], cap_bytes=1 << 30)
Fetcher(store, [sys.argv[3]], manifest.piece_size, batch_bytes=2 * manifest.piece_size).fetch(manifest.objects())
"""


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    """A tiny model published into a store (with 4 KiB pieces: each block is many pieces)."""
    root = tmp_path_factory.mktemp("fetching")
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(**TINY)).save_pretrained(root / "tiny")
    store = ObjectStore(root / "origin", cap_bytes=1 << 30)
    manifest = publish(root / "tiny", store, Ed25519PrivateKey.generate(), "tiny", piece_size=PIECE).signed.manifest
    del store
    gc.collect()  # its index connection closes now (removing the WAL files), not while a test copies the store
    assert not (root / "origin" / "index.sqlite-wal").exists()
    return root, manifest


class Seeders:
    def __init__(self, tmp_path, published):
        self.tmp_path, (self.root, self.manifest) = tmp_path, published
        self.procs: list[subprocess.Popen] = []

    def start(
        self, name: str, delay: float = 0.0, corrupt_blocks: tuple[int, ...] = (), max_piece: int = 8 << 20
    ) -> str:
        """A seeder process with its own copy of the origin store; returns its base URL."""
        copy = self.tmp_path / name
        shutil.copytree(self.root / "origin", copy)
        for block in corrupt_blocks:
            path = ObjectStore(copy, cap_bytes=1 << 30).path(self.manifest.blocks[block].digest)
            data = bytearray(path.read_bytes())
            for middle in range(PIECE // 2, len(data), PIECE):  # one bit in every piece of the block: whichever
                data[middle] ^= 0x01  # of its pieces the liar is asked for first is a bad one
            path.write_bytes(bytes(data))
        proc = subprocess.Popen(
            [sys.executable, "-c", SEEDER, str(copy), str(delay), str(max_piece)], stdout=subprocess.PIPE, text=True
        )
        self.procs.append(proc)
        return f"http://127.0.0.1:{int(proc.stdout.readline())}"

    def stop(self):
        for proc in self.procs:
            proc.kill()
            proc.wait()


@pytest.fixture
def seeders(tmp_path, published):
    running = Seeders(tmp_path, published)
    yield running
    running.stop()


def test_a_span_comes_from_two_peers_in_parallel_verified(seeders, published, tmp_path):
    root, manifest = published
    peers = [seeders.start("a"), seeders.start("b")]
    store = ObjectStore(tmp_path / "new", cap_bytes=1 << 30)
    span = manifest.span_objects(2, 5)
    report = Fetcher(store, peers, manifest.piece_size).fetch(span)
    assert report.objects == len(span) and report.verified and not report.banned
    assert set(report.bytes_by_peer) == set(peers) and all(b > 0 for b in report.bytes_by_peer.values())
    assert report.bytes == sum(r.size for r in span)
    assert all(store.verify(r.digest) for r in span) and part_files(store) == []
    rebuilt = load_file(materialize(store, manifest, tmp_path / "span", blocks=(2, 5)) / "model.safetensors")
    original = load_file(root / "tiny" / "model.safetensors")
    assert rebuilt.keys() == {
        k for k in original if k.startswith(("model.layers.2.", "model.layers.3.", "model.layers.4."))
    }
    assert all(torch.equal(rebuilt[k], original[k]) for k in rebuilt)
    assert Fetcher(store, peers, manifest.piece_size).fetch(span).bytes == 0  # held already: nothing moves


def test_a_peer_that_flips_one_bit_is_banned_and_the_piece_comes_from_another(seeders, published, tmp_path):
    _, manifest = published
    liar = seeders.start("liar", corrupt_blocks=tuple(range(6)))  # whatever it is asked for first is bad
    honest = seeders.start("honest", delay=0.01)
    store = ObjectStore(tmp_path / "new", cap_bytes=1 << 30)
    span = manifest.span_objects(0, 6)
    report = Fetcher(store, [liar, honest], manifest.piece_size, per_peer=1).fetch(span)
    assert "bad piece" in report.banned.get(liar, ""), report.banned
    assert honest not in report.banned and report.verified
    assert all(store.verify(r.digest) for r in span)


def test_an_interrupted_fetch_resumes_from_its_verified_pieces(seeders, published, tmp_path):
    _, manifest = published
    dying = seeders.start("dying", delay=0.05)  # ~0.5 s per object: the poll below sees its pieces pile up
    store = ObjectStore(tmp_path / "new", cap_bytes=1 << 30)
    span = manifest.span_objects(0, 6)
    total = sum(r.size for r in span)
    errors = []
    fetch = threading.Thread(
        # 2 pieces a request: the pieces of an object pile up over several answers before the kill
        target=lambda: errors.append(
            _raises(lambda: Fetcher(store, [dying], manifest.piece_size, batch_bytes=2 * PIECE).fetch(span))
        )
    )
    fetch.start()

    refs = {r.digest: r for r in span}

    def pieces_done() -> int:  # pieces in the .part files that already match their hashes
        done = 0
        for part in part_files(store):
            try:
                data = part.read_bytes()
            except FileNotFoundError:  # completed meanwhile: it became an object
                continue
            pieces = refs[part.name.removeprefix("fetch-").removesuffix(".part")].pieces
            done += sum(
                hashlib.sha256(data[i * PIECE : (i + 1) * PIECE]).hexdigest() == h for i, h in enumerate(pieces)
            )
        return done

    # An object's .part file goes when the object completes: poll often, or a fast fetch slips between two polls.
    wait_until(lambda: pieces_done() >= 20, 60, "20 pieces to arrive", interval=0.01)
    os.kill(seeders.procs[0].pid, signal.SIGKILL)  # the only peer dies mid-fetch
    fetch.join(120)
    assert isinstance(errors[0], FetchError)
    report = Fetcher(store, [seeders.start("rescue")], manifest.piece_size).fetch(span)
    assert report.resumed_pieces >= 20 and report.bytes < total
    assert all(store.verify(r.digest) for r in span)


def test_no_holder_is_a_clear_error(seeders, published, tmp_path):
    _, manifest = published
    empty = ObjectStore(tmp_path / "empty-seed", cap_bytes=1 << 30)
    peer = seeders.start("a")
    store = ObjectStore(tmp_path / "new", cap_bytes=1 << 30)
    from swarmnode.store.manifest import ObjectRef

    stray = ObjectRef(hashlib.sha256(b"nobody has this").hexdigest(), 15, (hashlib.sha256(b"x").hexdigest(),))
    with pytest.raises(FetchError, match="no peer holds"):
        Fetcher(store, [peer, "http://127.0.0.1:9"], manifest.piece_size).fetch([stray])
    assert empty.list() == []


@pytest.mark.parametrize(
    "path, status",
    [
        ("/layerswarm/v1/objects/..%2F..%2Fetc%2Fpasswd", 400),
        ("/layerswarm/v1/objects/" + "0" * 64, 404),
        ("/layerswarm/v1/objects/{block}?piece=999999&size=4096", 416),
        ("/layerswarm/v1/objects/{block}?piece=0&size=999999999", 416),
        ("/layerswarm/v1/objects/{block}?piece=-1&size=4096", 416),
        ("/layerswarm/v1/objects/{block}?piece=x", 400),
        ("/layerswarm/v1/objects/{block}?piece=0&size=4096&count=0", 400),
        ("/layerswarm/v1/objects/{block}?piece=0&size=4096&count=two", 400),
        ("/metrics", 404),
    ],
)
def test_a_seeder_answers_strangers_bad_requests_clearly(seeders, published, path, status):
    _, manifest = published
    base = seeders.start("a")
    answer = httpx.get(base + path.format(block=manifest.blocks[0].digest))
    assert answer.status_code == status and "error" in answer.json()
    assert httpx.get(f"{base}/layerswarm/v1/objects/{manifest.blocks[0].digest}").json()["size"] > 0


def test_a_request_for_several_pieces_gets_them_back_to_back_within_the_seeders_largest_answer(seeders, published):
    root, manifest = published
    block = manifest.blocks[1]
    data = ObjectStore(root / "origin", cap_bytes=1 << 30).path(block.digest).read_bytes()
    base, small = seeders.start("a"), seeders.start("small", max_piece=2 * PIECE)
    url = f"/layerswarm/v1/objects/{block.digest}?piece=2&size={PIECE}&count="
    assert httpx.get(f"{base}{url}3").content == data[2 * PIECE : 5 * PIECE]
    assert httpx.get(f"{small}{url}3").content == data[2 * PIECE : 4 * PIECE]  # at most 2 pieces an answer
    last = len(block.pieces) - 1
    tail = httpx.get(f"{base}/layerswarm/v1/objects/{block.digest}?piece={last - 1}&size={PIECE}&count=5")
    assert tail.content == data[(last - 1) * PIECE :]  # the object ends: fewer pieces


def test_seeders_that_send_fewer_pieces_than_asked_for_still_deliver_everything(seeders, published, tmp_path):
    _, manifest = published
    peers = [seeders.start("one", max_piece=PIECE), seeders.start("two", max_piece=3 * PIECE)]
    store = ObjectStore(tmp_path / "new", cap_bytes=1 << 30)
    span = manifest.span_objects(0, 3)
    report = Fetcher(store, peers, manifest.piece_size, batch_bytes=8 * PIECE).fetch(span)
    assert report.objects == len(span) and not report.banned and all(store.verify(r.digest) for r in span)
    assert sum(report.pieces_by_peer.values()) == sum(len(r.pieces) for r in span)


def test_a_peer_that_answers_more_than_was_asked_for_is_banned_unread(seeders, published, tmp_path):
    _, manifest = published
    span = manifest.span_objects(0, 2)
    sizes = {r.digest: r.size for r in span}
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(30)

    def babble() -> None:  # says it holds every object, then announces a gigabyte for any piece
        while True:
            try:
                connection, _ = listener.accept()
            except OSError:
                return
            with connection:
                request = connection.recv(65536).decode()
                digest = request.split()[1].split("/")[-1].split("?")[0]
                if "piece=" in request:
                    connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000000\r\n\r\n" + b"x" * 65536)
                else:
                    body = json.dumps({"size": sizes.get(digest, 0)}).encode()
                    connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))

    threading.Thread(target=babble, daemon=True).start()
    babbler = f"http://127.0.0.1:{listener.getsockname()[1]}"
    honest = seeders.start("honest", delay=0.01)
    store = ObjectStore(tmp_path / "new", cap_bytes=1 << 30)
    try:
        report = Fetcher(store, [babbler, honest], manifest.piece_size, per_peer=1).fetch(span)
    finally:
        listener.close()
    assert "too large" in report.banned.get(babbler, ""), report.banned
    assert report.bytes_by_peer.get(babbler, 0) == 0 and all(store.verify(r.digest) for r in span)


def test_a_fetcher_killed_mid_fetch_leaves_no_object_that_passes_as_complete(seeders, published, tmp_path):
    _, manifest = published
    peer = seeders.start("slow", delay=0.05)
    (tmp_path / "manifest.json").write_text(json.dumps(manifest.to_json()))
    store = ObjectStore(tmp_path / "new", cap_bytes=1 << 30)
    fetcher = subprocess.Popen([sys.executable, "-c", FETCHER, str(store.root), str(tmp_path / "manifest.json"), peer])
    try:
        wait_until(lambda: any(p.stat().st_size for p in part_files(store)), 60, "a fetch under way", interval=0.01)
        wait_until(lambda: len(store.list()) >= 1, 60, "an object fetched", interval=0.01)
    finally:
        fetcher.kill()  # SIGKILL, mid-fetch
        fetcher.wait()
    held = ObjectStore(store.root, cap_bytes=1 << 30)  # what a restarted node finds
    assert len(held.list()) < len(manifest.objects()) and part_files(held)
    assert all(held.verify(o.digest) for o in held.list())  # whatever is named is whole and verified
    assert not any(p.name.removeprefix("fetch-").removesuffix(".part") in held for p in part_files(held))
    report = Fetcher(held, [seeders.start("rescue")], manifest.piece_size).fetch(manifest.objects())
    assert report.resumed_pieces > 0 and report.objects < len(manifest.objects())
    assert all(held.verify(r.digest) for r in manifest.objects()) and part_files(held) == []


@pytest.mark.parametrize(
    "junk",
    [
        b"\x00\xff garbage\r\n\r\n",
        b"POST /layerswarm/v1/objects/x HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello",
        b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\n\r\n",  # a head over the limit
        b"GET / HTTP/1.1\r\nHost: x",  # a head that never ends (the peer hangs up)
    ],
)
def test_a_lone_seeder_survives_junk_and_keeps_connections_open_for_honest_peers(seeders, published, junk):
    _, manifest = published
    base = seeders.start("a")
    port = int(base.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as junk_connection:
        junk_connection.sendall(junk)
        junk_connection.shutdown(socket.SHUT_WR)
        answer = junk_connection.recv(65536)
        assert answer == b"" or answer.startswith(b"HTTP/1.1 400"), answer[:80]
    digest = manifest.blocks[0].digest
    with httpx.Client() as client:  # two requests, one connection
        first = client.get(f"{base}/layerswarm/v1/objects/{digest}?piece=0&size={PIECE}&count=2")
        second = client.get(f"{base}/layerswarm/v1/objects/{digest}")
        assert first.status_code == 200 and len(first.content) == 2 * PIECE
        assert second.json()["size"] == manifest.blocks[0].size
        assert first.headers["connection"] == "keep-alive"


def _raises(function):
    try:
        function()
    except Exception as exc:  # noqa: BLE001 (the test inspects it)
        return exc
    return None
