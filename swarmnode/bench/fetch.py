"""``swarmnode bench-fetch``: fetching a span's blocks from 1, 2 and 4 peers vs a raw loopback copy, one run.

The model is published into a scratch store; seeders (real ``swarmnode seed`` processes, each with its
own store holding the same objects, hard-linked) send a 10-block span to an empty store, verified piece
by piece. The same bytes sent over a plain loopback TCP socket into a file give the raw copy speed,
measured in the same run (each side: the best of a few interleaved runs). Then the time to a serving
node: ``swarmnode serve --model <manifest id>`` with an empty store (a cold join: fetch the span from 2
peers, write its checkout, load it) until it is ready.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from swarmnode.store import ObjectStore, publish
from swarmnode.store.fetching import Fetcher
from swarmnode.store.manifest import publisher_key_text


def _linked_copy(source: Path, dest: Path) -> None:
    """A store with the same objects (hard links: no extra disk) and its own index."""
    shutil.copytree(source / "objects", dest / "objects", copy_function=os.link)
    for name in ("index.sqlite", "index.sqlite-wal", "index.sqlite-shm"):
        if (source / name).exists():
            shutil.copy(source / name, dest / name)
    shutil.copytree(source / "refs", dest / "refs")


def start_seeder(store_dir: Path) -> tuple[subprocess.Popen, str]:
    """A ``swarmnode seed`` process serving ``store_dir``; returns it and its base URL."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "swarmnode", "seed", "--store", str(store_dir), "--port", "0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    line = proc.stdout.readline()
    try:
        ready = json.loads(line)
    except ValueError:
        proc.kill()
        raise RuntimeError(f"the seeder did not start: {line!r}") from None
    return proc, f"http://127.0.0.1:{ready['port']}"


def raw_copy_mb_s(paths: list[Path], dest: Path) -> float:
    """MB/s of sending the files over one loopback TCP connection into ``dest`` (no hashing, no HTTP)."""
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]

    def send() -> None:
        connection, _ = server.accept()
        with connection:
            for path in paths:
                with open(path, "rb") as f:
                    connection.sendfile(f)
        server.close()

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    started = time.perf_counter()
    total = 0
    with socket.create_connection(("127.0.0.1", port)) as client, open(dest, "wb") as out:
        while chunk := client.recv(1 << 20):
            out.write(chunk)
            total += len(chunk)
        out.flush()
        os.fsync(out.fileno())
    seconds = time.perf_counter() - started
    sender.join()
    return total / 1e6 / seconds


def run_bench_fetch(
    model: str = "smollm2", blocks: int = 10, peer_counts: tuple[int, ...] = (1, 2, 4), repeats: int = 3
) -> dict:
    """Fetch throughput by peer count, the raw loopback copy of the same bytes, and time to a serving node.

    The raw copy and each fetch run ``repeats`` times, interleaved, and each reports its best run: on a
    shared machine one run of either can lose half its speed to a neighbour."""
    from swarmnode.launcher import start_node
    from swarmnode.models import resolve_model

    scratch = Path(tempfile.mkdtemp(prefix="bench-fetch-"))
    seeders: list[subprocess.Popen] = []
    try:
        origin = ObjectStore(scratch / "origin", cap_bytes=1 << 40)
        started = time.perf_counter()
        name = Path(model).name or "model"
        signed = publish(resolve_model(model), origin, Ed25519PrivateKey.generate(), name).signed
        manifest, publisher = signed.manifest, publisher_key_text(signed.public_key)
        publish_s = time.perf_counter() - started
        span = manifest.span_objects(0, blocks)
        span_bytes = sum(r.size for r in span)
        urls = []
        for n in range(max(peer_counts)):
            _linked_copy(origin.root, scratch / f"seed{n}")
            proc, url = start_seeder(scratch / f"seed{n}")
            seeders.append(proc)
            urls.append(url)
        raw, fetch_mb_s, verified, by_peer = 0.0, {}, True, {}
        for _ in range(max(1, repeats)):
            raw = max(raw, raw_copy_mb_s([origin.path(r.digest) for r in span], scratch / "raw.bin"))
            for count in peer_counts:
                store = ObjectStore(scratch / f"fetch{count}", cap_bytes=1 << 40)
                report = Fetcher(store, urls[:count], manifest.piece_size).fetch(span)
                verified &= report.verified and all(store.verify(r.digest) for r in span)
                speed = span_bytes / 1e6 / report.seconds
                if speed > fetch_mb_s.get(str(count), 0.0):
                    fetch_mb_s[str(count)] = speed
                    by_peer[str(count)] = {u.rsplit(":", 1)[1]: b for u, b in report.bytes_by_peer.items()}
                shutil.rmtree(store.root)
        # A cold join: an empty store, `swarmnode serve --model <manifest id>` fetching its span from 2 peers.
        started = time.perf_counter()
        node = start_node(
            manifest.digest,
            f"0:{blocks}",
            extra_args=["--no-measure", "--store", str(scratch / "cold"), "--trust-key", publisher,
                        "--peers", ",".join(urls[:2])],
            env={"LAYERSWARM_HOME": str(scratch / "cold-home")},
        )  # fmt: skip
        time_to_serving = time.perf_counter() - started
        node.stop()
        two = fetch_mb_s.get("2")
        ratio = float(f"{two / raw:.3g}") if two else None
        fetch_mb_s = {k: float(f"{v:.4g}") for k, v in fetch_mb_s.items()}
        return {
            "model": model,
            "blocks": blocks,
            "span_mb": round(span_bytes / 1e6, 1),
            "publish_s": round(publish_s, 2),
            "repeats": max(1, repeats),
            "raw_copy_mb_s": float(f"{raw:.4g}"),
            "fetch_mb_s": fetch_mb_s,
            "ratio_2_peers": ratio,
            "bytes_by_peer": by_peer,
            "time_to_serving_s": round(time_to_serving, 2),
            "verified": verified,
        }
    finally:
        for proc in seeders:
            proc.kill()
            proc.wait()
        shutil.rmtree(scratch, ignore_errors=True)
