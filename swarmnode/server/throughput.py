"""How fast this node computes its span: measured once, cached per hardware + model + span + precision.

Two numbers, both in tokens/s through the whole span (spec §4.7):

- ``decode``: one-token steps with a KV cache (what interactive generation needs);
- ``prefill``: one long uncached pass (what long prompts and scoring need).

The cache lives in ``$LAYERSWARM_HOME/throughput.json``; a measurement is a few hundred
milliseconds for a 10-block span of the default model on a laptop CPU.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

log = logging.getLogger("swarmnode.throughput")


@dataclass(frozen=True)
class Throughput:
    """Measured speeds of one span, in tokens/s (0.0: unknown)."""

    decode: float = 0.0
    prefill: float = 0.0


def hardware_id(device: str) -> str:
    """A short description of the compute this node runs on (CPU model and cores, or the GPU's name)."""
    if device.startswith("cuda"):
        try:
            import torch

            return "cuda:" + torch.cuda.get_device_name(torch.device(device))
        except Exception:
            return device
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"cpu:{cpu}:{os.cpu_count()}"


def cache_key(hardware: str, model: str, start: int, end: int, precision: str, backend: str, threads: int) -> str:
    """The throughput cache's key for one configuration."""
    return f"{hardware}|{model}|{start}:{end}|{precision}|{backend}|threads={threads}"


def measure(
    backend, hidden_size: int, wire_dtype: str = "float32", steps: int = 8, prefill_tokens: int = 128
) -> Throughput:
    """Time ``steps`` cached one-token steps and one ``prefill_tokens``-token uncached pass through ``backend``."""
    import torch

    from swarmnode.models.wire import tensor_to_wire

    one = tensor_to_wire(torch.randn(1, 1, hidden_size) * 0.1, wire_dtype)  # (B=1, T=1, H)
    long = tensor_to_wire(torch.randn(1, prefill_tokens, hidden_size) * 0.1, wire_dtype)  # (1, T, H)
    encoder = getattr(getattr(backend, "span", None), "cache_less", False)  # no cache: forwards only
    times = []
    if not encoder:
        cache = backend.new_cache()
        backend.step(one, cache)  # warm-up: lazy initialisation, first allocation
        for _ in range(steps):
            started = time.perf_counter()
            backend.step(one, cache)
            times.append(time.perf_counter() - started)
    backend.forward(long)  # warm-up at this shape
    started = time.perf_counter()
    backend.forward(long)
    prefill = prefill_tokens / max(time.perf_counter() - started, 1e-6)
    decode = 1.0 / max(statistics.median(times), 1e-6) if times else prefill  # an encoder's speed is its forward's
    return Throughput(round(decode, 2), round(prefill, 2))


class ThroughputCache:
    """A JSON file of measurements keyed by :func:`cache_key`.

    Args:
        path: the file (default ``$LAYERSWARM_HOME/throughput.json``).
    """

    def __init__(self, path: Path | None = None) -> None:
        if path is None:
            from swarmnode.models import layerswarm_home

            path = layerswarm_home() / "throughput.json"
        self.path = path

    def _load(self) -> dict:
        try:
            data = json.loads(self.path.read_text())
            return data if isinstance(data, dict) else {}
        except (OSError, ValueError):
            return {}

    def get(self, key: str) -> Throughput | None:
        """The cached measurement, if any."""
        entry = self._load().get(key)
        if not isinstance(entry, dict):
            return None
        try:
            return Throughput(float(entry["decode"]), float(entry["prefill"]))
        except (KeyError, TypeError, ValueError):
            return None

    def put(self, key: str, value: Throughput) -> None:
        """Store a measurement (atomically: write a temporary file, then rename)."""
        data = self._load()
        data[key] = asdict(value)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
            tmp.replace(self.path)
        except OSError as exc:  # a read-only home only costs a re-measurement next time
            log.warning("cannot cache throughput in %s: %s", self.path, exc)


def node_throughput(node, cache: ThroughputCache | None = None) -> Throughput:
    """The node's throughput from the cache, or measured now (and cached). Never raises."""
    try:
        import torch

        key = cache_key(
            hardware_id(node.device),
            node.model_name,
            node.start,
            node.end,
            node.precision,
            node.backend.name,
            torch.get_num_threads(),
        )
        cache = cache or ThroughputCache()
        known = cache.get(key)
        if known is not None:
            return known
        wire = node.precision if node.precision in ("float32", "float16", "bfloat16") else "float32"
        value = measure(node.backend, node.hidden_size, wire)
        cache.put(key, value)
        log.info("measured throughput: %.1f tokens/s decoding, %.1f tokens/s prefill", value.decode, value.prefill)
        return value
    except Exception as exc:  # an estimate only: never fail the node over it
        log.warning("could not measure throughput: %s", exc)
        return Throughput()


def cached_rate(hardware: str, model: str, precision: str) -> float:
    """Best known block-tokens/s of this hardware for ``model`` at ``precision`` (any span; 0.0 if none).

    Lets a joining node estimate its own rate before it has loaded a span to measure.
    """
    rates = []
    for key, entry in ThroughputCache()._load().items():
        parts = key.split("|")
        if len(parts) >= 4 and parts[0] == hardware and parts[1] == model and parts[3] == precision:
            try:
                start, end = (int(x) for x in parts[2].split(":"))
                rates.append(float(entry["decode"]) * (end - start))
            except (KeyError, TypeError, ValueError):
                continue
    return max(rates, default=0.0)
