"""Content-addressed objects on disk: every file is named by the SHA-256 of its bytes.

Layout under the store's root (``$LAYERSWARM_HOME/store`` by default)::

    objects/ab/cdef...   one object (its name is its hash: ab + cdef...)
    tmp/                 objects being written (never trusted; cleared on open)
    index.sqlite         size, kind and last use of each object; pins of objects in use

Writes are atomic: an object is hashed while it is written to ``tmp/``, flushed to disk, and only then
renamed to its final name and recorded in the index. A process killed mid-write leaves a stray file in
``tmp/`` (removed the next time the store opens), never an object that passes as complete; a corrupted
object on disk is caught by :meth:`ObjectStore.read` (it re-hashes) and removed.

The store has a size cap: :meth:`ObjectStore.make_room` evicts the least recently used objects, never
one that is pinned (a running node pins the blocks it serves, :meth:`ObjectStore.pin`).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

__all__ = ["ObjectInfo", "ObjectMissing", "ObjectStore", "StoreFull", "default_cache_size", "sha256_hex"]

CHUNK = 1 << 20
DEFAULT_DISK_FRACTION = 0.5  # default cap: half the free disk when the store is first opened
PIN_TTL_S = 3600.0  # a pin lasts this long unless renewed (a holder that died stops protecting its objects)


class ObjectMissing(KeyError):
    """The store has no (intact) object with this hash."""


class StoreFull(OSError):
    """Everything that could be evicted was, and the object still does not fit under the cap."""


@dataclass(frozen=True)
class ObjectInfo:
    """What the index knows about one object."""

    digest: str
    size: int
    kind: str
    last_used: float


def sha256_hex(data: bytes) -> str:
    """The SHA-256 of ``data`` as 64 lowercase hex digits (an object's name)."""
    return hashlib.sha256(data).hexdigest()


def _valid_digest(digest: str) -> bool:
    return isinstance(digest, str) and len(digest) == 64 and all(c in "0123456789abcdef" for c in digest)


def default_cache_size(root: Path) -> int:
    """Half of the free space on ``root``'s disk."""
    root.mkdir(parents=True, exist_ok=True)
    return int(shutil.disk_usage(root).free * DEFAULT_DISK_FRACTION)


class ObjectStore:
    """Objects by SHA-256 under ``root``, at most ``cap_bytes`` in all (None: half the free disk).

    Safe to use from several threads and several processes at once (SQLite serialises the index; an
    object's bytes never change once it has its name).
    """

    def __init__(self, root: str | os.PathLike, cap_bytes: int | None = None) -> None:
        self.root = Path(root)
        self.objects_dir = self.root / "objects"
        self.tmp_dir = self.root / "tmp"
        self.objects_dir.mkdir(parents=True, exist_ok=True)
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        self.cap_bytes = int(cap_bytes) if cap_bytes is not None else default_cache_size(self.root)
        self._local = threading.local()
        with self._db() as db:
            db.execute(
                "CREATE TABLE IF NOT EXISTS objects (digest TEXT PRIMARY KEY, size INTEGER NOT NULL,"
                " kind TEXT NOT NULL, last_used REAL NOT NULL)"
            )
            db.execute(
                "CREATE TABLE IF NOT EXISTS pins (digest TEXT NOT NULL, holder TEXT NOT NULL, expires REAL NOT NULL,"
                " PRIMARY KEY (digest, holder))"
            )
        self._clear_stale_tmp()

    # -- the index -------------------------------------------------------------------------------------
    @contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.root / "index.sqlite", timeout=30.0, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")  # the index survives crashes; a power cut may lose recent uses
            self._local.db = db
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def _clear_stale_tmp(self, older_than_s: float = 3600.0) -> None:
        now = time.time()
        for path in self.tmp_dir.iterdir():
            try:
                if now - path.stat().st_mtime > older_than_s:  # a writer that died (one still writing touches it)
                    path.unlink()
            except OSError:
                pass

    def path(self, digest: str) -> Path:
        """Where the object ``digest`` lives (whether or not it is there)."""
        if not _valid_digest(digest):
            raise ValueError(f"not a SHA-256 hex digest: {digest!r}")
        return self.objects_dir / digest[:2] / digest[2:]

    def __contains__(self, digest: object) -> bool:
        if not isinstance(digest, str) or not _valid_digest(digest):
            return False
        with self._db() as db:
            row = db.execute("SELECT 1 FROM objects WHERE digest = ?", (digest,)).fetchone()
        return row is not None and self.path(digest).exists()

    def info(self, digest: str) -> ObjectInfo | None:
        """The index entry of ``digest``, None when the store does not hold it."""
        with self._db() as db:
            row = db.execute("SELECT digest, size, kind, last_used FROM objects WHERE digest = ?", (digest,)).fetchone()
        return ObjectInfo(*row) if row else None

    def list(self) -> list[ObjectInfo]:
        """Every object, least recently used first."""
        with self._db() as db:
            rows = db.execute("SELECT digest, size, kind, last_used FROM objects ORDER BY last_used").fetchall()
        return [ObjectInfo(*row) for row in rows]

    def total_size(self) -> int:
        """Bytes of all objects held."""
        with self._db() as db:
            return int(db.execute("SELECT COALESCE(SUM(size), 0) FROM objects").fetchone()[0])

    # -- writing ---------------------------------------------------------------------------------------
    def put(self, data: bytes, kind: str = "blob") -> tuple[str, bool]:
        """Store ``data``; returns ``(digest, added)`` (``added`` is False when it was already there)."""
        digest = sha256_hex(data)
        if digest in self:
            self.touch([digest])
            return digest, False
        return self._write(iter([data]), kind, expected=digest, size=len(data))

    def put_stream(self, chunks: Iterable[bytes], kind: str = "blob", expected: str | None = None) -> tuple[str, bool]:
        """Store the bytes of ``chunks`` (hashed as they are written).

        Raises:
            ValueError: ``expected`` is given and the bytes hash to something else (nothing is kept).
        """
        if expected is not None and expected in self:
            self.touch([expected])
            return expected, False
        return self._write(iter(chunks), kind, expected=expected, size=None)

    def _write(self, chunks: Iterator[bytes], kind: str, expected: str | None, size: int | None) -> tuple[str, bool]:
        if size is not None:
            self.make_room(size)
        tmp = self.tmp_dir / f"{os.getpid()}-{uuid.uuid4().hex}"
        hasher, written = hashlib.sha256(), 0
        try:
            with open(tmp, "wb") as f:
                for chunk in chunks:
                    hasher.update(chunk)
                    f.write(chunk)
                    written += len(chunk)
                f.flush()
                os.fsync(f.fileno())
            digest = hasher.hexdigest()
            if expected is not None and digest != expected:
                raise ValueError(f"the bytes hash to {digest}, not the expected {expected}")
            return digest, self._admit(tmp, digest, written, kind)
        finally:
            tmp.unlink(missing_ok=True)

    def adopt(self, path: str | os.PathLike, expected: str, kind: str = "blob", hashed: bool = False) -> bool:
        """Move the finished file at ``path`` into the store as ``expected`` (flushed to disk first).

        Args:
            hashed: the caller wrote this file itself (under :attr:`tmp_dir`) and hashed exactly the bytes it
                wrote to ``expected``; otherwise the file is read and hashed here.

        Returns False (and deletes the file) when it does not hash to ``expected``.
        """
        path = Path(path)
        hasher = hashlib.sha256()
        with open(path, "rb") as f:
            while not hashed and (chunk := f.read(CHUNK)):
                hasher.update(chunk)
            os.fsync(f.fileno())  # the name must appear only with the bytes on disk
        if not hashed and hasher.hexdigest() != expected:
            path.unlink(missing_ok=True)
            return False
        self._admit(path, expected, path.stat().st_size, kind)
        return True

    def _admit(self, path: Path, digest: str, size: int, kind: str) -> bool:
        """Make room for, name and index the verified file at ``path``, all in one transaction.

        One transaction, so that concurrent writers (threads of one fetch, other processes) each see the
        others' admitted objects when they count what the cap leaves: checking room first and indexing
        later let two writers both find room for one object and overfill the store together.
        Returns whether the object is new.
        """
        final = self.path(digest)
        final.parent.mkdir(parents=True, exist_ok=True)
        with self._db() as db:
            self._evict(db, size, digest)
            added = not final.exists()
            os.replace(path, final)  # atomic: the name appears only with the whole, verified content
            db.execute(
                "INSERT INTO objects (digest, size, kind, last_used) VALUES (?, ?, ?, ?)"
                " ON CONFLICT(digest) DO UPDATE SET last_used = excluded.last_used",
                (digest, size, kind, time.time()),
            )
        return added

    # -- reading ---------------------------------------------------------------------------------------
    def read(self, digest: str, verify: bool = True) -> bytes:
        """The bytes of ``digest`` (re-hashed unless ``verify`` is False); marks it recently used.

        Raises:
            ObjectMissing: not held, or held but corrupted on disk (then it is removed).
        """
        try:
            data = self.path(digest).read_bytes()
        except FileNotFoundError:
            raise ObjectMissing(digest) from None
        if verify and sha256_hex(data) != digest:
            self.remove(digest)
            raise ObjectMissing(f"{digest} was corrupted on disk and has been removed")
        self.touch([digest])
        return data

    def open(self, digest: str) -> BinaryIO:
        """A binary file of the object (not re-hashed: use :meth:`read` or :meth:`verify` for that)."""
        try:
            handle = open(self.path(digest), "rb")
        except FileNotFoundError:
            raise ObjectMissing(digest) from None
        self.touch([digest])
        return handle

    def verify(self, digest: str) -> bool:
        """Whether the object on disk still hashes to its name (removed when it does not)."""
        hasher = hashlib.sha256()
        try:
            with open(self.path(digest), "rb") as f:
                while chunk := f.read(CHUNK):
                    hasher.update(chunk)
        except FileNotFoundError:
            return False
        if hasher.hexdigest() != digest:
            self.remove(digest)
            return False
        return True

    def touch(self, digests: Iterable[str]) -> None:
        """Mark ``digests`` as just used (LRU order)."""
        now = time.time()
        with self._db() as db:
            db.executemany("UPDATE objects SET last_used = ? WHERE digest = ?", [(now, d) for d in digests])

    # -- pins and eviction -----------------------------------------------------------------------------
    def pin(self, digests: Iterable[str], holder: str, ttl_s: float = PIN_TTL_S) -> None:
        """Protect ``digests`` from eviction for ``ttl_s`` seconds on behalf of ``holder`` (renew by calling again)."""
        expires = time.time() + ttl_s
        with self._db() as db:
            db.executemany(
                "INSERT INTO pins (digest, holder, expires) VALUES (?, ?, ?)"
                " ON CONFLICT(digest, holder) DO UPDATE SET expires = excluded.expires",
                [(d, holder, expires) for d in digests],
            )

    def unpin(self, holder: str, digests: Iterable[str] | None = None) -> None:
        """Drop ``holder``'s pins (all of them, or those of ``digests``)."""
        with self._db() as db:
            if digests is None:
                db.execute("DELETE FROM pins WHERE holder = ?", (holder,))
            else:
                db.executemany("DELETE FROM pins WHERE holder = ? AND digest = ?", [(holder, d) for d in digests])

    def pinned(self) -> set[str]:
        """Digests some holder protects now."""
        with self._db() as db:
            return self._pinned(db)

    @staticmethod
    def _pinned(db: sqlite3.Connection) -> set[str]:
        db.execute("DELETE FROM pins WHERE expires < ?", (time.time(),))
        return {row[0] for row in db.execute("SELECT DISTINCT digest FROM pins")}

    def make_room(self, size: int, exclude_new: str | None = None) -> list[str]:
        """Evict least recently used, unpinned objects until ``size`` more bytes fit under the cap.

        Returns:
            the digests evicted.

        Raises:
            StoreFull: the pinned objects alone leave no room for ``size`` bytes (then nothing is evicted).
        """
        with self._db() as db:
            return self._evict(db, size, exclude_new)

    def _evict(self, db: sqlite3.Connection, size: int, new: str | None) -> list[str]:
        """:meth:`make_room` inside the caller's transaction (which holds the index's write lock).

        ``new`` is the object about to be admitted: never evicted, and not counted twice if the index has it.
        """
        protected = self._pinned(db) | {new}
        others = db.execute("SELECT COALESCE(SUM(size), 0) FROM objects WHERE digest != ?", (new or "",))
        total = int(others.fetchone()[0])
        victims = []
        for digest, object_size in db.execute("SELECT digest, size FROM objects ORDER BY last_used").fetchall():
            if total + size <= self.cap_bytes:
                break
            if digest not in protected:
                victims.append(digest)
                total -= object_size
        if total + size > self.cap_bytes:
            raise StoreFull(
                f"{size} bytes do not fit in the store's cap of {self.cap_bytes} bytes: {total} bytes are pinned by"
                " running nodes or too recent to evict; raise --cache-size"
            )
        for digest in victims:
            db.execute("DELETE FROM objects WHERE digest = ?", (digest,))
            self.path(digest).unlink(missing_ok=True)
        return victims

    def remove(self, digest: str) -> None:
        """Forget ``digest`` and delete its file (pins are ignored: used for corrupted objects)."""
        with self._db() as db:
            db.execute("DELETE FROM objects WHERE digest = ?", (digest,))
        self.path(digest).unlink(missing_ok=True)
