"""What a browser needs to join the swarm as a node: the runtime files and the span ONNX files.

Browsers cannot run PyTorch, so a browser node runs its span as the ONNX graph the ONNX Runtime
backend exports (``swarmnode.browser_span``), with onnxruntime-web. The portal serves
both itself: the runtime from ``frontend/node_modules`` (installed from the npm registry by
``make install``, never a CDN) and the span files it exported, content-addressed by SHA-256 so a
browser can check every byte before it runs anything.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path

from django.conf import settings
from django.db import transaction

from portal.swarm.models import SpanFile, SwarmModel
from swarmnode.browser_span import UnsupportedInBrowser, load_browser_span

FRONTEND = settings.BASE_DIR / "frontend"
BROWSER_BACKEND = "onnxruntime-web"  # what browser nodes announce; the tracker asks them for a span proof

# The files a browser node may load, per folder: nothing else under node_modules is reachable.
RUNTIME_FOLDERS: dict[str, tuple[Path, re.Pattern]] = {
    "ort": (
        FRONTEND / "node_modules" / "onnxruntime-web" / "dist",
        re.compile(r"^ort(\.wasm|\.webgpu)?(\.min)?\.mjs$|^ort-wasm-simd-threaded(\.jsep)?\.(mjs|wasm)$"),
    ),
    "msgpack": (
        FRONTEND / "node_modules" / "@msgpack" / "msgpack" / "dist.esm",
        re.compile(r"^(utils/)?[A-Za-z0-9_]+\.mjs$"),
    ),
    "noble": (
        FRONTEND / "node_modules" / "@noble" / "ciphers",
        re.compile(r"^(chacha|_arx|_poly1305|utils)\.js$"),  # ChaCha20-Poly1305 (spec §10), which WebCrypto lacks
    ),
    "node": (FRONTEND / "browser_node", re.compile(r"^[a-z_]+\.js$")),
}
CONTENT_TYPES = {".mjs": "text/javascript", ".js": "text/javascript", ".wasm": "application/wasm"}


class SpanFileError(Exception):
    """A span cannot be exported (unknown model, blocks outside it, an architecture ONNX cannot express)."""


def runtime_file(folder: str, name: str) -> tuple[Path, str] | None:
    """The path and content type of an allowed runtime file, or ``None`` (unknown folder or name, missing)."""
    entry = RUNTIME_FOLDERS.get(folder)
    if entry is None or not entry[1].match(name):
        return None
    path = entry[0] / name
    if not path.is_file():
        return None
    return path, CONTENT_TYPES[path.suffix]


def span_files_dir() -> Path:
    """Where the portal keeps span files, named ``<sha256>.onnx``."""
    return Path(settings.SWARM_SPAN_FILES_DIR)


def span_file_path(sha256: str) -> Path | None:
    """The file of a known span export, or ``None``."""
    if not re.fullmatch(r"[0-9a-f]{64}", sha256) or not SpanFile.objects.filter(sha256=sha256).exists():
        return None
    path = span_files_dir() / f"{sha256}.onnx"
    return path if path.is_file() else None


def file_sha256(path: Path, progress: Callable[[str], None] | None = None, chunk: int = 8 << 20) -> str:
    """SHA-256 of a file, read in chunks."""
    h = hashlib.sha256()
    size, done, shown = path.stat().st_size, 0, -1
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
            done += len(block)
            if progress and size and done * 10 // size != shown:  # every 10%
                shown = done * 10 // size
                progress(f"hashing {done * 100 // size}%")
    return h.hexdigest()


def export_span_file(model: str, start: int, end: int, progress: Callable[[str], None] = lambda _: None) -> SpanFile:
    """Export blocks ``[start, end)`` of ``model`` to ONNX once and record the file (idempotent).

    The export is the node's own (``swarmnode.browser_span``, cached in ``$LAYERSWARM_HOME/onnx`` under the weights'
    digest), so a Python ONNX node and a browser node of the same span run the same graph.

    Raises:
        SpanFileError: unknown model, blocks outside it, or an architecture the ONNX graph cannot express.
    """
    swarm_model = SwarmModel.objects.filter(name=model).first()
    if swarm_model is None:
        raise SpanFileError(f"the swarm does not serve a model named {model!r}")
    if not 0 <= start < end <= swarm_model.num_blocks:
        raise SpanFileError(f"blocks {start}:{end} fall outside {model} (blocks 0:{swarm_model.num_blocks})")
    progress(f"loading blocks {start}:{end} of {model}")
    try:
        span = load_browser_span(model, start, end)
    except UnsupportedInBrowser as exc:
        raise SpanFileError(f"{model} cannot run in a browser: {exc}") from None
    digest = span.weights_digest
    known = SpanFile.objects.filter(model=swarm_model, start_block=start, end_block=end, weights_digest=digest).first()
    if known is not None and span_file_path(known.sha256):
        progress(f"already exported: {known.sha256}")
        return known
    progress("exporting to ONNX (cached by the weights' digest)")
    source = span.export()
    sha = file_sha256(source, progress)
    target = span_files_dir() / f"{sha}.onnx"
    target.parent.mkdir(parents=True, exist_ok=True)
    if not target.exists():
        tmp = target.with_suffix(".partial")
        shutil.copyfile(source, tmp)
        os.replace(tmp, target)
    with transaction.atomic():
        SpanFile.objects.filter(model=swarm_model, start_block=start, end_block=end, weights_digest=digest).delete()
        record = SpanFile.objects.create(
            model=swarm_model,
            start_block=start,
            end_block=end,
            weights_digest=digest,
            sha256=sha,
            size=target.stat().st_size,
            num_kv_heads=span.num_kv_heads,
            head_dim=span.head_dim,
            opset=span.opset,
        )
    progress(f"exported {target.stat().st_size / 1e6:.0f} MB, sha256 {sha}")
    return record


def span_manifest(span_file: SpanFile, url: str) -> dict:
    """What a browser node needs to fetch, verify and run a span file."""
    return {
        "model": span_file.model.name,
        "start_block": span_file.start_block,
        "end_block": span_file.end_block,
        "num_blocks": span_file.model.num_blocks,
        "hidden_size": span_file.model.hidden_size,
        "num_layers": span_file.end_block - span_file.start_block,
        "num_kv_heads": span_file.num_kv_heads,
        "head_dim": span_file.head_dim,
        "weights_digest": span_file.weights_digest,
        "sha256": span_file.sha256,
        "size": span_file.size,
        "opset": span_file.opset,
        "url": url,
    }


def available_spans(model: SwarmModel) -> list[SpanFile]:
    """The newest export of each span of ``model`` whose file is on disk."""
    seen, result = set(), []
    for f in model.span_files.order_by("start_block", "end_block", "-created_at"):
        key = (f.start_block, f.end_block)
        if key in seen or not (span_files_dir() / f"{f.sha256}.onnx").is_file():
            continue
        seen.add(key)
        result.append(f)
    return result


# -- proof that a browser node holds the span it registers ---------------------------------------------------
#
# A browser node registers only the span its worker loaded and verified. The tracker checks that claim: before
# downloading, the node asks for a challenge (a signed nonce bound to its token and the file's SHA-256); after
# verifying the file it hashes PROOF_RANGES ranges of it, at offsets derived from the nonce, and registers with
# that proof. The portal reads the same ranges from its copy. Blocks without a prepared span file, another
# file's proof, a stale or forged nonce, or wrong bytes are refused with 403 ``span_not_loaded``.

PROOF_RANGES = 16
PROOF_RANGE_BYTES = 4096
CHALLENGE_MAX_AGE_S = 600
_CHALLENGE_SALT = "layerswarm.browser-node.span-proof"


class SpanProofError(Exception):
    """A browser node's registration does not prove it holds the span it claims."""


def issue_span_challenge(token_id: int, sha256: str) -> str:
    """A nonce for proving possession of span file ``sha256``; valid for ``CHALLENGE_MAX_AGE_S`` with this token."""
    from django.core import signing

    return signing.dumps({"t": token_id, "f": sha256, "r": os.urandom(12).hex()}, salt=_CHALLENGE_SALT)


def proof_offsets(nonce: str, size: int) -> list[int]:
    """Where the ranges start: ``sha256(nonce || i as 4 bytes LE)``'s first 8 bytes (LE) modulo the room left."""
    room = max(1, size - PROOF_RANGE_BYTES + 1)
    return [
        int.from_bytes(hashlib.sha256(nonce.encode() + i.to_bytes(4, "little")).digest()[:8], "little") % room
        for i in range(PROOF_RANGES)
    ]


def span_proof(nonce: str, read_range: Callable[[int, int], bytes], size: int) -> str:
    """``sha256(nonce || range_0 || ... || range_15)`` as hex; ``read_range(offset, length)`` gives the bytes."""
    h = hashlib.sha256(nonce.encode())
    for offset in proof_offsets(nonce, size):
        h.update(read_range(offset, min(PROOF_RANGE_BYTES, size - offset)))
    return h.hexdigest()


def check_span_proof(token_id: int, model: str, start: int, end: int, proof: dict | None) -> SpanFile:
    """The span file a browser node proved it holds for blocks ``[start, end)`` of ``model``.

    Raises:
        SpanProofError: no proof, no prepared span file for these blocks, a stale/forged/foreign nonce, wrong bytes.
    """
    from django.core import signing

    if not proof:
        raise SpanProofError("a browser node must prove it loaded its span (span_proof: sha256, nonce, proof)")
    span_file = SpanFile.objects.filter(sha256=proof.get("sha256", "")).select_related("model").first()
    if span_file is None or (span_file.model.name, span_file.start_block, span_file.end_block) != (model, start, end):
        raise SpanProofError(
            f"no prepared span file {proof.get('sha256', '')[:12]} for blocks {start}:{end} of {model}"
        )
    nonce = proof.get("nonce", "")
    try:
        claims = signing.loads(nonce, salt=_CHALLENGE_SALT, max_age=CHALLENGE_MAX_AGE_S)
    except signing.BadSignature:  # SignatureExpired included
        raise SpanProofError("the span challenge is forged or expired: ask for a new one") from None
    if claims.get("t") != token_id or claims.get("f") != span_file.sha256:
        raise SpanProofError("the span challenge was issued for another token or file")
    path = span_files_dir() / f"{span_file.sha256}.onnx"
    with open(path, "rb") as f:

        def read_range(offset: int, length: int) -> bytes:
            f.seek(offset)
            return f.read(length)

        expected = span_proof(nonce, read_range, span_file.size)
    if proof.get("proof") != expected:
        raise SpanProofError(f"the proof does not match the bytes of blocks {start}:{end}: the span was not loaded")
    return span_file
