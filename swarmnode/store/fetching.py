"""Fetching objects from several peers at once, BitTorrent-style, verified piece by piece.

:class:`Fetcher` asks every peer which of the wanted objects it holds, then runs a few workers per peer
that each take the next missing pieces that peer can give: a run of consecutive pieces of one object
(up to ``batch_bytes``, asked for in one request), the rarest objects first (fewest holders); since a fast
peer comes back for more sooner, it ends up sending more. Every piece of an answer is checked against its
own hash in the (trusted) manifest before it is written; a peer that sends a bad piece is banned for this
fetch and the pieces go back to the others (the good pieces before the bad one are kept). An answer is
read into one buffer of exactly the size asked for: a peer cannot make it larger. Pieces land in a
``.part`` file, so an interrupted fetch resumes where it stopped (the next fetch hashes the pieces it finds
there); the whole object's hash is computed over the bytes written, in order, as they arrive, and an object
enters the store (:meth:`ObjectStore.adopt`) only when it matches its name, so nothing unverified is ever
trusted.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import ssl
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from swarmnode.store.manifest import (
    MAX_MANIFEST_BYTES,
    Manifest,
    ManifestError,
    ObjectRef,
    SignedManifest,
    TrustedPublishers,
)
from swarmnode.store.objects import ObjectStore, StoreFull
from swarmnode.store.publish import write_ref
from swarmnode.store.seeding import MANIFESTS_PATH, OBJECTS_PATH

__all__ = ["FetchError", "FetchReport", "Fetcher", "fetch_manifest", "http_base"]

_HEX64 = re.compile(r"^[0-9a-f]{64}$")
RETRIES = 3  # transport errors from one peer before it is dropped for this fetch
BUSY_WAIT_S = 0.05
BATCH_BYTES = 4 << 20  # pieces asked for in one request, in bytes (a seeder may send fewer)
SIZE_ANSWER_LIMIT = 4096  # bytes of a peer's answer to "do you hold it, and how big is it?"


class FetchError(RuntimeError):
    """Some objects could not be fetched: no peer holds them, or every holder failed or cheated."""


@dataclass
class FetchReport:
    """What a fetch did (also printed as JSON by ``swarmnode bench-fetch``)."""

    objects: int = 0  # objects fetched (the rest were in the store already)
    bytes: int = 0
    seconds: float = 0.0
    bytes_by_peer: dict[str, int] = field(default_factory=dict)
    pieces_by_peer: dict[str, int] = field(default_factory=dict)
    banned: dict[str, str] = field(default_factory=dict)  # peer -> why
    resumed_pieces: int = 0  # pieces found done in .part files from an earlier, interrupted fetch
    verified: bool = True  # every piece matched its hash (bad pieces were refetched)

    def to_json(self) -> dict:
        """The report as a JSON-able dict."""
        return {
            "objects": self.objects, "bytes": self.bytes, "seconds": round(self.seconds, 3),
            "mb_s": round(self.bytes / 1e6 / self.seconds, 1) if self.seconds else None,
            "bytes_by_peer": self.bytes_by_peer, "pieces_by_peer": self.pieces_by_peer, "banned": self.banned,
            "resumed_pieces": self.resumed_pieces, "verified": self.verified,
        }  # fmt: skip


class _Partial:
    """One object being fetched: its ``.part`` file and the pieces already in it.

    No list of the pieces done is kept on disk (writing one per answer cost as much as the pieces): a fetch
    that finds the ``.part`` file of an interrupted one hashes each of its pieces and keeps those that match
    the manifest.

    The whole object's hash is computed as its pieces arrive, in order: a run of pieces that continues the
    hashed prefix is hashed from memory (the very bytes written), a piece that arrived early is read back
    from the file when the gap before it is filled. So a finished object is not read once more to be hashed.
    """

    def __init__(self, store: ObjectStore, ref: ObjectRef, piece_size: int) -> None:
        self.ref = ref
        self.piece_size = piece_size
        self.path = store.tmp_dir / f"fetch-{ref.digest}.part"
        self.lock = threading.Lock()  # guards done
        self.done: set[int] = set()
        if self.path.exists() and self.path.stat().st_size == ref.size:
            self.done = self._recheck()
        else:
            with open(self.path, "wb") as f:
                f.truncate(ref.size)
        self._fd: int | None = os.open(self.path, os.O_RDWR)
        self._whole = hashlib.sha256()
        self._hashed = 0  # pieces [0, _hashed) are in _whole
        self._hashing = threading.Lock()  # held while _whole grows

    def length(self, index: int) -> int:
        """Bytes in piece ``index`` (the last piece of an object may be short)."""
        return min(self.piece_size, self.ref.size - index * self.piece_size)

    def _recheck(self) -> set[int]:
        """The pieces of an interrupted fetch's file that match their hashes (the others are fetched again)."""
        with open(self.path, "rb") as f:
            return {
                i
                for i, piece in enumerate(self.ref.pieces)
                if hashlib.sha256(f.read(self.piece_size)).hexdigest() == piece
            }

    def write(self, first: int, data: memoryview, count: int) -> bool:
        """Write ``count`` verified pieces from ``first`` on (``data``, back to back); True when the object is
        now complete."""
        offset, view = first * self.piece_size, data
        while view:  # pieces go to distinct offsets: no lock (no fsync either: a resume hashes them again)
            written = os.pwrite(self._fd, view, offset)
            view, offset = view[written:], offset + written
        with self.lock:
            self.done.update(range(first, first + count))
            complete = len(self.done) == len(self.ref.pieces)
        self._hash(first, data, block=False)
        return complete

    def _hash(self, first: int, data: memoryview | None, block: bool) -> None:
        """Extend the whole object's hash over the pieces now written in order (``data``: the pieces from
        ``first`` on, just written). Without ``block``, a thread that finds another one hashing leaves it the
        work: that one looks again for pieces to hash after it lets go (it reads them back from the file)."""
        while self._hashing.acquire(blocking=block):
            try:
                if data is not None and first == self._hashed:
                    self._whole.update(data)
                    self._hashed = first + -(-len(data) // self.piece_size)
                data = None
                while self._hashed in self.done:  # pieces that came before their turn
                    self._whole.update(os.pread(self._fd, self.length(self._hashed), self._hashed * self.piece_size))
                    self._hashed += 1
            finally:
                self._hashing.release()
            if self._hashed not in self.done:  # (looked at after letting go: see above)
                return

    def whole_digest(self) -> str | None:
        """The SHA-256 of the whole object as written, once every piece is written (else None)."""
        self._hash(0, None, block=True)
        with self._hashing:
            return self._whole.hexdigest() if self._hashed == len(self.ref.pieces) else None

    def close(self) -> None:
        """Close the ``.part`` file (every piece is written, or the fetch is over)."""
        with self.lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None

    def discard(self) -> None:
        """Close and remove the ``.part`` file."""
        self.close()
        self.path.unlink(missing_ok=True)


class _AnswerTooLarge(Exception):
    """A peer announced a body larger than what was asked for."""


class _Connection:
    """Plain HTTP/1.1 GETs to one peer; an answer's body is read straight into one buffer, reused from one
    answer to the next, and refused when larger than the caller's limit. (httpx cost more than the bytes
    themselves here: a TLS context per client, a chunk list per body; a fresh buffer per answer costs a
    page fault per 4 KiB.)"""

    def __init__(self, base: str, timeout: float, tls: ssl.SSLContext | None) -> None:
        parts = urlsplit(base)
        self.prefix = parts.path.rstrip("/")
        if parts.scheme == "https":
            self.http: http.client.HTTPConnection = http.client.HTTPSConnection(
                parts.hostname or "", parts.port, timeout=timeout, context=tls
            )
        else:
            self.http = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=timeout)
        self.buffer = bytearray()

    def get(self, path: str, limit: int) -> tuple[int, memoryview]:
        """``GET path``: the status and the body (a view of the connection's buffer: valid until the next get).

        Raises:
            _AnswerTooLarge: the body would be over ``limit`` bytes (or its size was not announced).
            OSError, http.client.HTTPException: the peer is unreachable, or broke the protocol.
        """
        try:
            reused = self.http.sock is not None
            try:
                self.http.request("GET", self.prefix + path)
                answer = self.http.getresponse()
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                if not reused:
                    raise
                self.http.close()  # the peer closed the kept-open connection meanwhile: once more, on a new one
                self.http.request("GET", self.prefix + path)
                answer = self.http.getresponse()
            size = answer.length
            if size is None or size > limit:
                raise _AnswerTooLarge(f"HTTP {answer.status} with {size} bytes where at most {limit} were asked for")
            if len(self.buffer) < size:
                self.buffer = bytearray(size)  # a new one: views of the old one may still be in use
            view, got = memoryview(self.buffer)[:size], 0
            while got < size:
                read = answer.readinto(view[got:])
                if not read:  # the peer stopped early (readinto says so only by reading nothing)
                    raise http.client.IncompleteRead(b"", size - got)
                got += read
            if answer.will_close or (answer.getheader("Connection") or "").lower() != "keep-alive":
                self.http.close()  # a node closes every HTTP connection after its answer (without saying so)
            return answer.status, view
        except BaseException:
            self.http.close()
            raise

    def close(self) -> None:
        """Close the connection (if open)."""
        self.http.close()


class Fetcher:
    """Fetches objects named by a trusted manifest into ``store`` from ``peers`` (``http://host:port`` bases).

    Args:
        piece_size: the manifest's ``piece_size`` (pieces are hashed at this size).
        per_peer: requests in flight per peer at once.
        batch_bytes: how many bytes of consecutive pieces one request asks for (at least one piece).
        progress: show a progress bar (bytes) on stderr.
    """

    def __init__(
        self,
        store: ObjectStore,
        peers: list[str],
        piece_size: int,
        per_peer: int = 4,
        timeout: float = 30.0,
        progress: bool = False,
        batch_bytes: int = BATCH_BYTES,
    ) -> None:
        self.store = store
        self.peers = [p.rstrip("/") for p in dict.fromkeys(peers)]
        self.piece_size = piece_size
        self.per_peer = per_peer
        self.timeout = timeout
        self.progress = progress
        self.batch = max(1, batch_bytes // piece_size)  # pieces per request
        self._tls: ssl.SSLContext | None = None

    def _connection(self, peer: str) -> _Connection:
        if peer.startswith("https:") and self._tls is None:
            self._tls = ssl.create_default_context()  # one for the fetch (each costs milliseconds)
        return _Connection(peer, self.timeout, self._tls)

    def holders(self, refs: list[ObjectRef]) -> dict[str, list[str]]:
        """For each object's digest, the peers that say they hold it with the right size."""
        found: dict[str, list[str]] = {r.digest: [] for r in refs}

        def ask(peer: str) -> None:
            connection = self._connection(peer)
            try:
                for ref in refs:
                    status, body = connection.get(f"{OBJECTS_PATH}{ref.digest}", SIZE_ANSWER_LIMIT)
                    if status == 200 and _size_of(bytes(body)) == ref.size:
                        found[ref.digest].append(peer)
            except (OSError, http.client.HTTPException, _AnswerTooLarge):
                pass  # an unreachable (or babbling) peer holds nothing for us
            finally:
                connection.close()

        threads = [threading.Thread(target=ask, args=(p,), daemon=True) for p in self.peers]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return found

    def fetch(self, refs: list[ObjectRef], kind: str = "block") -> FetchReport:
        """Fetch every object of ``refs`` the store lacks; verify each piece and each whole object.

        Raises:
            FetchError: an object no peer holds, or whose holders all failed or sent bad pieces.
        """
        started = time.monotonic()
        report = FetchReport()
        wanted = [r for r in dict((r.digest, r) for r in refs).values() if r.digest not in self.store]
        if not wanted:
            return report
        holders = self.holders(wanted)
        orphans = [d for d, peers in holders.items() if not peers]
        if orphans:
            raise FetchError(f"no peer holds {len(orphans)} of the objects needed, e.g. {orphans[0][:16]}")
        partials = {r.digest: _Partial(self.store, r, self.piece_size) for r in wanted}
        report.resumed_pieces = sum(len(p.done) for p in partials.values())
        pending = sorted(  # rarest objects first
            (len(holders[r.digest]), r.digest, i)
            for r in wanted
            for i in range(len(r.pieces))
            if i not in partials[r.digest].done
        )
        in_flight = [0]
        busy: dict[str, int] = {}  # digest -> requests in flight for its pieces
        lock = threading.Lock()
        complete_failures: list[str] = []
        bar = _bar(sum(r.size for r in wanted), self.progress)
        bar.update(
            sum(min(self.piece_size, r.size - i * self.piece_size) for r in wanted for i in partials[r.digest].done)
        )

        def take(peer: str, wait: bool = True) -> list | None:
            """The next run of consecutive pieces of one object for ``peer``: of the rarest objects it holds,
            the one fewest workers are on (so objects fill in order, in parallel: each one's hash is computed
            from the bytes as they arrive); at most ``self.batch`` pieces, and no more than a fair share of
            what is left, so that every worker has some. None when none is left, nor in flight elsewhere
            (pieces in flight may come back), or at once with ``wait`` False."""
            while True:
                with lock:
                    start, best = -1, (0, 0)
                    for position, (rarity, digest, _) in enumerate(pending):
                        if start >= 0 and rarity > best[0]:
                            break
                        if peer in holders[digest] and (start < 0 or (rarity, busy.get(digest, 0)) < best):
                            start, best = position, (rarity, busy.get(digest, 0))
                            if not best[1]:
                                break
                    if start >= 0:
                        share = max(1, min(self.batch, len(pending) // len(workers)))
                        _, digest, index = pending[start]
                        end = start + 1
                        while (
                            end < len(pending)
                            and end - start < share
                            and pending[end][1] == digest
                            and pending[end][2] == index + end - start
                        ):
                            end += 1
                        run = pending[start:end]
                        del pending[start:end]
                        in_flight[0] += 1
                        busy[digest] = busy.get(digest, 0) + 1
                        return run
                    if not wait or not in_flight[0] or peer in report.banned:
                        return None
                time.sleep(BUSY_WAIT_S)

        def settle(run: list, unsent: int, ban: str | None = None, peer: str = "") -> None:
            """One request is over: its last ``unsent`` pieces go back to the others (``ban``: why ``peer``
            is banned)."""
            with lock:
                if unsent:
                    pending.extend(run[len(run) - unsent :])
                    pending.sort()
                if ban is not None:
                    report.banned.setdefault(peer, ban)
                in_flight[0] -= 1
                busy[run[0][1]] -= 1

        def finish(partial: _Partial) -> None:
            hashed = partial.whole_digest() == partial.ref.digest  # else adopt reads the file to hash it
            partial.close()
            try:
                if self.store.adopt(partial.path, partial.ref.digest, kind, hashed=hashed):
                    with lock:
                        report.objects += 1
                else:  # cannot happen with verified pieces, unless the disk corrupts them
                    complete_failures.append(f"{partial.ref.digest[:16]}: the assembled object does not verify")
            except StoreFull as exc:  # the pinned objects leave no room under the cap
                complete_failures.append(f"{partial.ref.digest[:16]}: {exc}")
            finally:
                partial.discard()

        def work(peer: str, first: list | None) -> None:
            failures = 0
            connection = self._connection(peer)
            try:
                while peer not in report.banned:
                    run, first = first or take(peer), None
                    if run is None:
                        return
                    error = ask(peer, connection, run)
                    if error is not None:
                        failures += 1
                        if failures >= RETRIES:
                            with lock:
                                report.banned.setdefault(peer, f"unreachable: {error}")
            finally:
                connection.close()

        def ask(peer: str, connection: _Connection, run: list) -> str | None:
            """Ask ``peer`` for the pieces of ``run`` and keep the verified ones; the name of a transport error."""
            _, digest, first = run[0]
            partial = partials[digest]
            lengths = [partial.length(index) for _, _, index in run]
            query = f"?piece={first}&size={self.piece_size}" + (f"&count={len(run)}" if len(run) > 1 else "")
            try:
                status, body = connection.get(f"{OBJECTS_PATH}{digest}{query}", sum(lengths))
            except _AnswerTooLarge as exc:
                settle(run, len(run), f"answer too large for pieces {first}.. of {digest[:16]}: {exc}", peer)
                return None
            except (OSError, http.client.HTTPException) as exc:
                settle(run, len(run))
                return type(exc).__name__
            if status == 429:
                settle(run, len(run))
                time.sleep(BUSY_WAIT_S)
                return None
            view = body if status == 200 else memoryview(b"")
            good, offset, why = 0, 0, None
            for (_, _, index), length in zip(run, lengths, strict=True):  # each piece against its own hash
                if offset + length > len(view):
                    break  # a short answer (a seeder sends at most its largest answer): ask again for the rest
                if hashlib.sha256(view[offset : offset + length]).hexdigest() != partial.ref.pieces[index]:
                    why = f"bad piece {index} of {digest[:16]} (HTTP {status})"
                    break
                good, offset = good + 1, offset + length
            if why is None and (not good or offset != len(view)):
                index = run[good][2] if good < len(run) else first
                why = f"bad piece {index} of {digest[:16]} (HTTP {status}, {len(view)} bytes)"
            complete = False
            if good:
                complete = partial.write(first, view[:offset], good)
                with lock:
                    report.bytes += offset
                    report.bytes_by_peer[peer] = report.bytes_by_peer.get(peer, 0) + offset
                    report.pieces_by_peer[peer] = report.pieces_by_peer.get(peer, 0) + good
                bar.update(offset)
            settle(run, len(run) - good, why, peer)
            if complete:
                finish(partial)
            return None

        for partial in partials.values():  # objects an earlier fetch had completely (killed before the rename)
            if len(partial.done) == len(partial.ref.pieces):
                finish(partial)
        workers = [(peer, n) for n in range(self.per_peer) for peer in self.peers]
        # Every worker's first run is dealt before any starts, round the peers: a worker whose thread or
        # connection starts late would otherwise find the others had taken everything of a small span.
        firsts = [take(peer, wait=False) for peer, _ in workers]
        workers = [
            threading.Thread(target=work, args=(peer, run), daemon=True, name=f"fetch-{n}")
            for (peer, n), run in zip(workers, firsts, strict=True)
        ]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        for partial in partials.values():
            partial.close()
        bar.close()
        report.seconds = time.monotonic() - started
        missing = [d for d in partials if d not in self.store]
        if missing or complete_failures:
            detail = "; ".join([*complete_failures, *(f"{p}: {why}" for p, why in report.banned.items())])
            raise FetchError(f"{len(missing)} objects could not be fetched ({detail or 'no holder left'})")
        return report


def _size_of(body: bytes | bytearray) -> int | None:
    try:
        value = json.loads(body)
    except ValueError:
        return None
    size = value.get("size") if isinstance(value, dict) else None
    return size if isinstance(size, int) else None


def _bar(total: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, unit="B", unit_scale=True, desc="fetching blocks", disable=not enabled)


def part_files(store: ObjectStore) -> list[Path]:
    """The ``.part`` files of interrupted fetches (none are ever trusted as objects)."""
    return sorted(store.tmp_dir.glob("fetch-*.part"))


def http_base(url: str) -> str | None:
    """The ``http(s)://host:port`` a node's objects are fetched from, given its ``ws(s)://`` URL (or an HTTP
    base); None for an address that is no direct URL (a relay address: objects do not travel through relays)."""
    parts = httpx.URL(url) if "://" in url else None
    if parts is None or parts.scheme not in ("ws", "wss", "http", "https") or not parts.host:
        return None
    scheme = "https" if parts.scheme in ("wss", "https") else "http"
    host = f"[{parts.host}]" if ":" in parts.host else parts.host
    return f"{scheme}://{host}:{parts.port}" if parts.port else f"{scheme}://{host}"


def fetch_manifest(
    peers: list[str], wanted: str, trusted: TrustedPublishers, store: ObjectStore, timeout: float = 10.0
) -> Manifest:
    """The manifest ``wanted`` (a model identity, manifest object hash or name) from the first of ``peers``
    (HTTP bases) that sends one a trusted publisher signed; it is stored (and named) in ``store``.

    Raises:
        FetchError: no peer has it (the refusals of the manifests that were sent are listed).
    """
    refusals = []
    for peer in dict.fromkeys(peers):
        try:
            with httpx.Client(timeout=timeout, limits=httpx.Limits(max_keepalive_connections=0)) as client:
                with client.stream("GET", f"{peer}{MANIFESTS_PATH}{wanted}") as answer:
                    if answer.status_code != 200:
                        continue
                    data = b""
                    for chunk in answer.iter_bytes():
                        data += chunk
                        if len(data) > MAX_MANIFEST_BYTES:
                            raise ManifestError(f"a manifest is at most {MAX_MANIFEST_BYTES} bytes")
            signed = SignedManifest.from_bytes(data)
            manifest = trusted.check(signed)
        except httpx.HTTPError:
            continue
        except ManifestError as exc:  # tampered, or signed by a key we do not trust: ask the next peer
            refusals.append(f"{peer}: {exc}")
            continue
        if _HEX64.match(wanted) and wanted not in (manifest.digest, hashlib.sha256(data).hexdigest()):
            refusals.append(f"{peer}: sent manifest {manifest.digest[:16]} for {wanted[:16]}")
            continue
        if not _HEX64.match(wanted) and manifest.name != wanted:
            refusals.append(f"{peer}: sent manifest {manifest.name!r} for {wanted!r}")
            continue
        digest, _ = store.put(data, "manifest")
        write_ref(store, manifest.name, digest)
        write_ref(store, manifest.digest, digest)  # found by its identity next time (a restart, a move)
        return manifest
    detail = "; ".join(refusals) or "none of them has it"
    raise FetchError(f"no trusted manifest {wanted!r} from {len(peers)} peer(s): {detail}")
