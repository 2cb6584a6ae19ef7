"""Serving the store's objects to peers, piece by piece, over plain HTTP on a websockets server.

Three requests, all ``GET`` (a node answers them on its own port through websockets' ``process_request``
hook, :meth:`Seeder.answer`; ``swarmnode`` can also run a seeder alone, :func:`serve_seeder`)::

    /layerswarm/v1/objects/<sha256>                  -> 200 {"size": N} when held, 404 otherwise
    /layerswarm/v1/objects/<sha256>?piece=I&size=S   -> 200 the bytes [I*S, (I+1)*S) of the object
    /layerswarm/v1/objects/<sha256>?piece=I&size=S&count=K
                                                     -> 200 the pieces I..I+K-1 back to back, [I*S, (I+K)*S)
                                                        (fewer when the object ends, or when K*S would pass
                                                        the seeder's largest answer: the asker checks each
                                                        piece and asks again for the ones it did not get)
    /layerswarm/v1/manifests/<id or name>            -> 200 a signed manifest the store holds (its model
                                                        identity, its object's hash, or its model's name)

A manifest is sent as it is stored: the asking node decides whether it trusts its publisher. Like objects,
manifests go out only when ``allow`` lets them (a node names only the model it serves, unless it seeds all).

The seeder sends only objects its store holds (public weights; nothing else on disk is reachable: the
path is a hex digest), answers of at most ``MAX_PIECE`` bytes (one piece or several), and at most
``concurrency`` answers at once (429 beyond that, so a greedy peer cannot take the node's disk and uplink).
Every answer is bounded.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable
from typing import BinaryIO
from urllib.parse import SplitResult, parse_qs, urlsplit

from websockets.http11 import Response

from swarmnode.store.manifest import ManifestError, SignedManifest
from swarmnode.store.objects import ObjectStore
from swarmnode.store.seed_server import busy_response, error_response, response, serve_http

__all__ = ["MANIFESTS_PATH", "MAX_PIECE", "OBJECTS_PATH", "Seeder", "error_response", "run_seeder", "serve_seeder"]

OBJECTS_PATH = "/layerswarm/v1/objects/"
MANIFESTS_PATH = "/layerswarm/v1/manifests/"
MAX_PIECE = 8 << 20
MIN_PIECE = 4096
_DIGEST = re.compile(r"^[0-9a-f]{64}$")
_MODEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class Seeder:
    """Answers object requests from ``store`` with at most ``concurrency`` pieces being read at once.

    Args:
        max_piece: the largest piece sent (a node passes its frame limit, if smaller than :data:`MAX_PIECE`).
        allow: which objects may be sent (a node seeds only the blocks it serves, unless ``--seed-cache``);
            None: every object of the store.
    """

    def __init__(
        self,
        store: ObjectStore,
        concurrency: int = 8,
        max_piece: int = MAX_PIECE,
        allow: Callable[[str], bool] | None = None,
    ) -> None:
        self.store = store
        self.slots = asyncio.Semaphore(concurrency)
        self.max_piece = max(MIN_PIECE, min(max_piece, MAX_PIECE))
        self.allow = allow
        self.answers_sent = 0  # answers with pieces (one or several pieces each)
        self.bytes_sent = 0
        self._sizes: dict[str, int] = {}  # digest -> size of objects peers asked about (content-addressed: fixed)
        self._manifests: dict[str, str] = {}  # identity, object hash or name -> the manifest object's hash
        self._manifests_seen: frozenset[str] = frozenset()

    def handles(self, path: str) -> bool:
        """Whether ``path`` is a request this seeder answers (objects or manifests)."""
        return path.startswith(OBJECTS_PATH) or path.startswith(MANIFESTS_PATH)

    async def answer(self, path: str) -> Response | None:
        """The response to ``GET path``; None when ``path`` is not an object request (someone else's)."""
        parts = urlsplit(path)
        if parts.path.startswith(MANIFESTS_PATH):
            if self.slots.locked():
                return error_response(
                    429, "Too Many Requests", "this node is sending as many answers as it will at once"
                )
            async with self.slots:
                return await asyncio.to_thread(self._manifest, parts.path[len(MANIFESTS_PATH) :])
        wanted = self.piece(parts)
        if not isinstance(wanted, tuple):
            return wanted
        digest, offset, length = wanted
        if self.slots.locked():
            return busy_response()
        async with self.slots:
            try:
                data = await asyncio.to_thread(self._read, digest, offset, length)
            except OSError:
                self._sizes.pop(digest, None)
                return error_response(404, "Not Found", "the object went away (evicted)")
        self.sent(len(data))
        return response(200, "OK", data, "application/octet-stream")

    def piece(self, parts: SplitResult) -> Response | tuple[str, int, int] | None:
        """What an object request asks for: the byte range ``(digest, offset, length)`` of the pieces asked
        for (at most ``max_piece`` bytes, within the object), or the answer itself (its size, an error);
        None when ``parts`` is not an object request."""
        if not parts.path.startswith(OBJECTS_PATH):
            return None
        digest = parts.path[len(OBJECTS_PATH) :]
        if not _DIGEST.match(digest):
            return error_response(400, "Bad Request", "objects are named by their SHA-256 (64 lowercase hex digits)")
        if self.allow is not None and not self.allow(digest):
            return error_response(404, "Not Found", "this node does not hold that object")
        query = parse_qs(parts.query, max_num_fields=4)
        # Pieces read the size a peer's first (size) request looked up: no index transaction per piece.
        object_size = self._sizes.get(digest) if "piece" in query else None
        if object_size is None:
            info = self.store.info(digest)
            if info is None:
                return error_response(404, "Not Found", "this node does not hold that object")
            if len(self._sizes) >= 4096:
                self._sizes.clear()
            object_size = self._sizes[digest] = info.size
        if "piece" not in query:
            self.store.touch([digest])  # a peer is about to fetch it: recently used
            return response(200, "OK", json.dumps({"size": object_size}).encode(), "application/json")
        try:
            index, size = int(query["piece"][0]), int(query.get("size", [str(1 << 20)])[0])
            count = int(query.get("count", ["1"])[0])
        except ValueError:
            return error_response(400, "Bad Request", "piece, size and count must be integers")
        if not MIN_PIECE <= size <= self.max_piece or not 0 <= index or index * size >= max(object_size, 1):
            return error_response(416, "Range Not Satisfiable", f"piece {index} of {size} bytes is outside the object")
        if count < 1:
            return error_response(400, "Bad Request", "count is the number of pieces asked for, at least 1")
        count = min(count, self.max_piece // size)  # one answer stays within max_piece (the asker re-asks)
        offset = index * size
        return digest, offset, min(count * size, object_size - offset)

    def sent(self, length: int) -> None:
        """Count ``length`` bytes of pieces sent."""
        self.answers_sent += 1
        self.bytes_sent += length

    def _manifest(self, wanted: str) -> Response:
        if not (_DIGEST.match(wanted) or _MODEL.match(wanted)):
            return error_response(
                400, "Bad Request", "manifests are named by a model identity, an object hash or a name"
            )
        held = frozenset(o.digest for o in self.store.list() if o.kind == "manifest")
        if held != self._manifests_seen:  # a manifest was published or fetched since: index them again
            names: dict[str, str] = {}
            for digest in sorted(held):
                try:
                    manifest = SignedManifest.from_bytes(self.store.read(digest)).manifest
                except (KeyError, ManifestError):
                    continue
                names.update({digest: digest, manifest.digest: digest, manifest.name: digest})
            self._manifests, self._manifests_seen = names, held
        digest = self._manifests.get(wanted)
        if digest is None or (self.allow is not None and not self.allow(digest)):  # not the model it serves
            return error_response(404, "Not Found", "this node holds no such manifest")
        try:
            data = self.store.read(digest)
        except KeyError:
            return error_response(404, "Not Found", "the manifest went away")
        return response(200, "OK", data, "application/json")

    def open_object(self, digest: str) -> BinaryIO | None:
        """The object's file, opened to send pieces of it; None when it went away (evicted)."""
        try:
            return open(self.store.path(digest), "rb")  # the caller closes it
        except OSError:
            self._sizes.pop(digest, None)
            return None

    def _read(self, digest: str, offset: int, size: int) -> bytes:
        with open(self.store.path(digest), "rb") as f:  # no index write per piece (the info request touched it)
            f.seek(offset)
            return f.read(size)


async def serve_seeder(
    store: ObjectStore, host: str = "127.0.0.1", port: int = 0, ready=None, max_piece: int = MAX_PIECE
) -> None:
    """Serve ``store``'s objects on ``host:port`` until cancelled (``ready(port)`` is called once listening;
    ``max_piece``: the largest answer, as :class:`Seeder`). A seeder alone needs no websocket: it answers
    on a plain HTTP/1.1 server that keeps connections open and sends pieces straight from the file
    (:mod:`swarmnode.store.seed_server`)."""
    await serve_http(Seeder(store, max_piece=max_piece), host, port, ready)


def run_seeder(store_dir, host: str = "127.0.0.1", port: int = 0) -> None:
    """``swarmnode seed``: serve a store's objects in the foreground; prints ``{"event": "ready", "port": N}``."""
    import sys

    def ready(bound: int) -> None:
        print(json.dumps({"event": "ready", "host": host, "port": bound}), flush=True)

    try:
        asyncio.run(serve_seeder(ObjectStore(store_dir), host, port, ready=ready))
    except KeyboardInterrupt:
        sys.exit(0)
