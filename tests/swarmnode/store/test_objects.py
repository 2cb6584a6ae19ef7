"""The object store: content addressing, dedup, corruption caught on read, LRU eviction that spares pinned
objects, and writes that a kill -9 cannot leave half-done."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from swarmnode.store import ObjectMissing, ObjectStore, StoreFull
from swarmnode.store.objects import sha256_hex


def test_it_names_objects_by_hash_and_stores_each_once(tmp_path):
    store = ObjectStore(tmp_path, cap_bytes=1 << 20)
    digest, added = store.put(b"block zero", "block")
    assert digest == sha256_hex(b"block zero") and added
    assert store.put(b"block zero", "block") == (digest, False)
    assert store.read(digest) == b"block zero"
    assert [o.digest for o in store.list()] == [digest] and store.total_size() == len(b"block zero")


def test_a_corrupted_object_is_caught_on_read_and_removed(tmp_path):
    store = ObjectStore(tmp_path, cap_bytes=1 << 20)
    digest, _ = store.put(b"x" * 1000)
    path = store.path(digest)
    path.write_bytes(b"y" + path.read_bytes()[1:])  # one byte flipped on disk
    with pytest.raises(ObjectMissing, match="corrupted"):
        store.read(digest)
    assert digest not in store and not path.exists()


def test_a_stream_must_hash_to_what_was_expected(tmp_path):
    store = ObjectStore(tmp_path, cap_bytes=1 << 20)
    with pytest.raises(ValueError, match="expected"):
        store.put_stream([b"not ", b"this"], expected=sha256_hex(b"that"))
    assert store.list() == [] and list(store.tmp_dir.iterdir()) == []


def test_eviction_takes_the_least_recently_used_and_never_a_pinned_object(tmp_path):
    store = ObjectStore(tmp_path, cap_bytes=3000)
    a, _ = store.put(b"a" * 1000)
    time.sleep(0.01)
    b, _ = store.put(b"b" * 1000)
    time.sleep(0.01)
    c, _ = store.put(b"c" * 1000)
    store.pin([a], holder="node:0:10")  # the oldest, but a running node serves it
    time.sleep(0.01)
    store.read(b)  # b is used: c is now the least recently used unpinned object
    d, _ = store.put(b"d" * 1000)
    held = {o.digest for o in store.list()}
    assert held == {a, b, d}, "c (LRU, unpinned) goes; a stays pinned"
    store.pin([b, d], holder="node:10:20")
    with pytest.raises(StoreFull, match="pinned"):
        store.put(b"e" * 1000)
    store.unpin("node:0:10")
    store.put(b"e" * 1000)
    assert a not in store


def test_an_expired_pin_protects_nothing(tmp_path):
    store = ObjectStore(tmp_path, cap_bytes=1000)
    a, _ = store.put(b"a" * 1000)
    store.pin([a], holder="a node that died", ttl_s=-1)
    store.put(b"b" * 1000)
    assert a not in store


def test_writers_at_once_never_overfill_the_cap(tmp_path):
    # A fetch admits several objects from several threads: each must see what the others admitted
    # when it counts its room (two writers once both found room for one object and overfilled it).
    store = ObjectStore(tmp_path, cap_bytes=4500)
    old = [store.put(bytes([i]) * 1000)[0] for i in range(4)]  # full but for 500 bytes, nothing pinned
    barrier = threading.Barrier(4)

    def write(i: int) -> None:
        data = bytes([100 + i]) * 1000
        path = store.tmp_dir / f"part-{i}"
        path.write_bytes(data)
        barrier.wait()
        assert store.adopt(path, sha256_hex(data), hashed=True)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert store.total_size() <= 4500 and len(store.list()) == 4
    assert not any(digest in store for digest in old), "the four new objects pushed out the four old ones"


WRITER = """
import sys, time
from swarmnode.store import ObjectStore
store = ObjectStore(sys.argv[1], cap_bytes=1 << 30)
def chunks():
    for i in range(1000):
        yield bytes([i % 256]) * 65536
        if i == 10:
            print("writing", flush=True)
        time.sleep(0.01)
store.put_stream(chunks(), "block")
"""


def test_a_writer_killed_mid_object_leaves_nothing_that_passes_as_complete(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "writing"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    store = ObjectStore(tmp_path, cap_bytes=1 << 30)
    assert store.list() == []
    assert [p for p in store.objects_dir.rglob("*") if p.is_file()] == []
    leftovers = list(store.tmp_dir.iterdir())  # the half-written bytes may remain there, never under a hash name
    assert all(len(p.name) != 64 for p in leftovers)
