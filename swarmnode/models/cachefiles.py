"""Files built once and cached under ``$LAYERSWARM_HOME`` (ONNX graphs), written atomically."""

from __future__ import annotations

import contextlib
import os
import uuid
from pathlib import Path


@contextlib.contextmanager
def atomic_write(path: Path):
    """Yield a scratch path next to ``path``; move it onto ``path`` when the block succeeds, else remove it.

    The scratch name is unique to this process and call: nodes (or benchmark processes) building the
    same cached file at once must not write to, or rename away, each other's half-written file.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.partial")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def save_onnx_once(path: Path, build) -> Path:
    """Write ``build()`` (an ONNX model) to ``path`` unless it is there; atomically (tmp + rename)."""
    if not path.exists():
        import onnx

        with atomic_write(path) as tmp:
            onnx.save(build(), str(tmp))
    return path
