"""``swarmnode bench --sessions 1,4,8,16``: concurrent sessions through one local swarm.

Each level runs that many sessions at once (one thread each, distinct prompts) and reports the
aggregate decoding speed, the 95th percentile of the time between two tokens of a session,
whether every session produced exactly the tokens it produces when running alone, and the
batches the nodes' schedulers actually formed (jobs per compute pass, from each node's
``GET /metrics``): a level whose mean batch falls well short of its sessions split into groups
that pay a pass each at every hop.
"""

from __future__ import annotations

import copy
import statistics
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

TOPICS = [
    "the moon",
    "bread",
    "a lighthouse",
    "rivers",
    "bicycles",
    "owls",
    "volcanoes",
    "chess",
    "tea",
    "glaciers",
    "bees",
    "trains",
    "violins",
    "deserts",
    "comets",
    "libraries",
    "coral reefs",
    "windmills",
    "penguins",
    "maps",
]


def batch_totals(metrics_text: str) -> tuple[float, float]:
    """``(jobs, passes)`` a node ran so far, from its Prometheus scrape (``swarmnode_batch_size``);
    ``(0, 0)`` where the scrape has none."""
    totals = {"sum": 0.0, "count": 0.0}
    for line in metrics_text.splitlines():
        name, _, value = line.partition(" ")
        kind = name.removeprefix("swarmnode_batch_size_")
        if kind in totals and name != kind:
            try:
                totals[kind] = float(value)
            except ValueError:
                pass
    return totals["sum"], totals["count"]


def node_batch_totals(url: str, timeout: float = 10.0) -> tuple[float, float]:
    """``(jobs, passes)`` of the node at websocket ``url``, read from its ``GET /metrics`` (loopback);
    ``(0, 0)`` when the node does not answer it (its metrics off): the level then shows no batches."""
    parts = urlsplit(url)
    scheme = "https" if parts.scheme == "wss" else "http"
    try:
        with urllib.request.urlopen(f"{scheme}://{parts.netloc}/metrics", timeout=timeout) as reply:
            return batch_totals(reply.read(1 << 20).decode("utf-8", "replace"))
    except OSError:  # urllib's HTTPError and URLError are OSErrors
        return 0.0, 0.0


def mean_batch(before: list[tuple[float, float]], after: list[tuple[float, float]]) -> list[float]:
    """Each node's jobs per pass between two readings of :func:`node_batch_totals` (0 where it ran none)."""
    return [round((a[0] - b[0]) / (a[1] - b[1]), 2) if a[1] > b[1] else 0.0 for b, a in zip(before, after, strict=True)]


def _percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def run_bench_sessions(
    model: str = "smollm2",
    nodes: int = 3,
    levels: tuple[int, ...] = (1, 4, 8, 16),
    new_tokens: int = 32,
    backend: str = "auto",
    rounds: int = 3,
    prefix_reuse: bool = True,
    push: bool = False,
) -> list[dict]:
    """Measure ``levels`` concurrent sessions through ``nodes`` local node processes (``push``: the nodes
    forward each step's activations to the next node themselves instead of returning them to the client).

    The levels run ``rounds`` times, interleaved (1, 4, 8, 16, 1, 4, ...), so that drifting
    machine load hits every level alike; each figure is the median over the rounds. The prompts
    share the chat template's system prompt, which nodes reuse across sessions (spec §4.9) unless
    ``prefix_reuse`` is off.

    Returns:
        one ``{"sessions", "aggregate_tok_s", "p95_step_s", "tokens_equal", "mean_batch"}`` per level
        (``mean_batch``: each node's jobs per compute pass during that level, median over the rounds).
    """
    from swarmnode.bench.swarm import chat_prompt_ids
    from swarmnode.client import AutoDistributedModelForCausalLM
    from swarmnode.launcher import LocalSwarm
    from swarmnode.models import Checkpoint, resolve_model

    checkpoint = Checkpoint(resolve_model(model))
    tokenizer = checkpoint.tokenizer()
    topics = [TOPICS[i % len(TOPICS)] for i in range(max(levels))]
    prompts = [chat_prompt_ids(tokenizer, f"Write three sentences about {topic}.") for topic in topics]
    opts = dict(max_new_tokens=new_tokens, do_sample=False, eos_token_id=None)
    node_args = ["--backend", backend] + ([] if prefix_reuse else ["--prefix-cache-tokens", "0"])
    with (
        tempfile.TemporaryDirectory() as logs,
        LocalSwarm(model, checkpoint.num_blocks, nodes, extra_args=node_args, log_dir=Path(logs)) as swarm,
    ):
        remote = AutoDistributedModelForCausalLM.from_pretrained(model, peers=swarm.urls, push=push)
        remote.generate(prompts[0], **opts)  # warm-up
        alone = [remote.generate(ids, **opts)[0, ids.shape[1] :].tolist() for ids in prompts]
        runs: dict[int, list[dict]] = {level: [] for level in levels}
        for level in [lv for _ in range(rounds) for lv in levels]:
            tokens: list[list[int]] = [[] for _ in range(level)]
            stamps: list[list[float]] = [[] for _ in range(level)]
            errors: list[BaseException] = []
            start_gate = threading.Barrier(level + 1)

            def worker(i: int, tokens=tokens, stamps=stamps, errors=errors, start_gate=start_gate) -> None:
                client = copy.copy(remote)  # shares the loaded head and tokenizer; own per-call state
                start_gate.wait()
                try:
                    for token in client.stream(prompts[i], **opts):
                        stamps[i].append(time.perf_counter())
                        tokens[i].append(int(token[0]))
                except BaseException as exc:  # reported below, never silently lost
                    errors.append(exc)

            totals = [node_batch_totals(url) for url in swarm.urls]  # before any worker waits on the gate
            threads = [threading.Thread(target=worker, args=(i,)) for i in range(level)]
            for t in threads:
                t.start()
            start_gate.wait()
            began = time.perf_counter()
            for t in threads:
                t.join()
            wall = time.perf_counter() - began
            batches = mean_batch(totals, [node_batch_totals(url) for url in swarm.urls])
            if errors:
                raise RuntimeError(f"{len(errors)} of {level} sessions failed: {errors[0]!r}")
            gaps = [b - a for s in stamps for a, b in zip(s, s[1:], strict=False)]
            runs[level].append(
                {
                    "aggregate_tok_s": level * new_tokens / wall,
                    "p95_step_s": _percentile(gaps, 0.95),
                    "median_step_s": statistics.median(gaps),
                    "tokens_equal": all(tokens[i] == alone[i] for i in range(level)),
                    "mean_batch": batches,
                }
            )
    return [
        {
            "sessions": level,
            "aggregate_tok_s": round(statistics.median(r["aggregate_tok_s"] for r in rs), 2),
            "p95_step_s": round(statistics.median(r["p95_step_s"] for r in rs), 4),
            "median_step_s": round(statistics.median(r["median_step_s"] for r in rs), 4),
            "tokens_equal": all(r["tokens_equal"] for r in rs),
            "mean_batch": [
                statistics.median(per_node) for per_node in zip(*(r["mean_batch"] for r in rs), strict=True)
            ],
            "runs": len(rs),
            "prefix_reuse": prefix_reuse,
        }
        for level, rs in runs.items()
    ]
