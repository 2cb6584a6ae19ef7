"""``swarmnode bench-failover``: stalls of a greedy generation when a serving node dies mid-way.

Two replicas of each of three spans of the model run as real node processes on loopback: the
session's chain uses one of them, the other is the standby that failover re-routes to. During each
of ``kills`` generations a node of the session's chain gets ``SIGKILL`` at a random step; the killed
node is replaced by a fresh process (new port) before the next generation, so every span always has
a spare. Each generation must return exactly the tokens of the undisturbed run.

Two stall figures per kill, both measured by the client:

- ``stall_s``: the client's own record (:class:`swarmnode.client.recovery.FailoverEvent`), from the
  failing request's start until the session could go on (detect + re-route + replay);
- ``token_gap_s``: the longest time between two tokens after the kill, as a caller of ``stream()``
  sees it (one ordinary step of decoding included).
"""

from __future__ import annotations

import random
import statistics
import tempfile
import threading
import time
from pathlib import Path

SPANS_OF_THREE = 3  # the serving chain: three spans, each with one standby replica
DEFAULT_PROMPT = "Write a short story about a robot who learns to paint."


def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ``values`` by the nearest-rank rule (no interpolation).

    Raises:
        ValueError: ``values`` is empty.
    """
    if not values:
        raise ValueError("no values")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def failure_gap(stamps: list[float], moment: float) -> float | None:
    """The longest wait between two tokens that ends after ``moment`` (the kill): the failover's gap.

    The kill can land after the dying node's last step, so the gap that spans ``moment`` may be an
    ordinary one and the stall comes one token later; the longest later gap is the one the caller felt.
    ``stamps``: arrival times of a generation's tokens, ascending. Returns None when no token came after
    ``moment``.
    """
    gaps = [b - a for a, b in zip(stamps, stamps[1:], strict=False) if b > moment]
    return max(gaps) if gaps else None


def summarize_stalls(stalls: list[float]) -> dict:
    """Median, 95th percentile and maximum of ``stalls`` (seconds, rounded to ms), and how many.

    Raises:
        ValueError: ``stalls`` is empty.
    """
    return {
        "count": len(stalls),
        "median_s": round(statistics.median(stalls), 3),
        "p95_s": round(percentile(stalls, 0.95), 3),
        "max_s": round(max(stalls), 3),
    }


class _Replicas:
    """Six node processes (two per span) and the restarts that keep two per span."""

    def __init__(self, model: str, spans: list[tuple[int, int]], node_args: list[str], logs: Path) -> None:
        self.model, self.node_args, self.logs = model, node_args, logs
        self.spans = [f"{a}:{b}" for a, b in spans for _ in range(2)]
        self.nodes: list = []
        self._started = 0

    def _start(self, blocks: str):
        from swarmnode.launcher import start_node

        self._started += 1
        log = self.logs / f"node-{self._started}-{blocks.replace(':', '-')}.log"
        return start_node(self.model, blocks, extra_args=self.node_args, log_path=log)

    def start(self) -> None:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(len(self.spans)) as pool:
            self.nodes = list(pool.map(self._start, self.spans))

    def by_url(self, url: str):
        return next(n for n in self.nodes if n.url == url)

    def replace(self, victim) -> None:
        """Start a fresh node for ``victim``'s span (call after killing it)."""
        fresh = self._start(f"{victim.ready['start_block']}:{victim.ready['end_block']}")
        victim.process.wait()
        self.nodes = [n for n in self.nodes if n is not victim] + [fresh]

    @property
    def urls(self) -> list[str]:
        return [n.url for n in self.nodes]

    def stop(self) -> None:
        for n in self.nodes:
            n.stop(timeout=10)


def run_bench_failover(
    model: str = "smollm2",
    kills: int = 10,
    new_tokens: int = 64,
    backend: str = "onnxruntime",
    replay: str = "exact",
    seed: int = 5,
    prompt: str = DEFAULT_PROMPT,
) -> dict:
    """Kill a node of the serving chain once per generation, ``kills`` times; measure each stall.

    Args:
        model: model spec for every node.
        kills: generations, each with one node killed at a random step.
        new_tokens: tokens per generation.
        backend: every node's ``--backend`` (one for all, so that replays are bit-identical).
        replay: the client's failover replay mode (``exact`` or ``prefill``).
        seed: the random kill steps and victims.

    Returns:
        ``{"stall": {median_s, p95_s, max_s, count}, "token_gap": {...}, "stalls_s", "token_gaps_s",
        "tokens_equal", "events", ...}``; ``tokens_equal`` is true when every disturbed generation
        returned exactly the undisturbed run's tokens.
    """
    from swarmnode.bench.swarm import chat_prompt_ids
    from swarmnode.client import AutoDistributedModelForCausalLM
    from swarmnode.client.failover import FailoverPolicy
    from swarmnode.launcher import split_blocks
    from swarmnode.models import Checkpoint, resolve_model

    checkpoint = Checkpoint(resolve_model(model))
    ids = chat_prompt_ids(checkpoint.tokenizer(), prompt)
    opts = dict(max_new_tokens=new_tokens, do_sample=False, eos_token_id=None)
    rng = random.Random(seed)
    began = time.perf_counter()
    with tempfile.TemporaryDirectory() as logs:
        spans = split_blocks(checkpoint.num_blocks, SPANS_OF_THREE)
        lock = str(Path(logs) / "compute.lock")  # nodes take turns on the cores, as in LocalSwarm
        replicas = _Replicas(model, spans, ["--backend", backend, "--machine-lock", lock], Path(logs))
        try:
            replicas.start()
            policy = FailoverPolicy(replay=replay)
            remote = AutoDistributedModelForCausalLM.from_pretrained(model, peers=replicas.urls, failover=policy)
            remote.generate(ids, **opts)  # warm-up
            expected = remote.generate(ids, **opts)[0, ids.shape[1] :].tolist()  # the undisturbed run
            node_backends = sorted({n.ready["backend"] for n in replicas.nodes})
            events, all_equal, gaps = [], True, []
            for g in range(kills):
                kill_at = rng.randrange(1, new_tokens - 2)
                delay = rng.uniform(0.0, 0.03)  # lands before, during or after the next step's compute
                tokens, stamps, victim, killed = [], [], None, {}
                for i, token in enumerate(remote.stream(ids, **opts)):
                    stamps.append(time.perf_counter())
                    tokens.append(int(token[0]))
                    if i == kill_at:
                        victim = replicas.by_url(rng.choice(remote.active_session.chain).url)
                        timer = threading.Timer(delay, _kill, args=(victim, killed))
                        timer.start()
                timer.join()
                equal = tokens == expected
                all_equal &= equal
                failovers = remote.last_stats.failovers
                gap = failure_gap(stamps, killed["at"])
                if gap is not None:
                    gaps.append(gap)
                events.append(
                    {
                        "generation": g,
                        "killed_after_token": kill_at,
                        "killed_blocks": [victim.ready["start_block"], victim.ready["end_block"]],
                        "failovers": len(failovers),
                        "stall_s": [round(e.stall_s, 4) for e in failovers],
                        "replay_s": [round(e.replay_s, 4) for e in failovers],
                        "replay_tokens": [e.replay_tokens for e in failovers],
                        "token_gap_s": None if gap is None else round(gap, 4),
                        "tokens_equal": equal,
                    }
                )
                replicas.replace(victim)  # the spare for the next generation
                remote.urls = replicas.urls
                remote.discover()
        finally:
            replicas.stop()
    stalls = [s for e in events for s in e["stall_s"]]
    normal = [b - a for b, a in zip(stamps[1:], stamps, strict=False)]
    return {
        "model": model,
        "backend": backend,
        "node_backends": node_backends,
        "replay": replay,
        "layout": "3 spans x 2 replicas (one serving, one standby), killed node restarted between generations",
        "kills": kills,
        "new_tokens": new_tokens,
        "stall": summarize_stalls(stalls) if stalls else None,
        "token_gap": summarize_stalls(gaps) if gaps else None,
        "median_step_s": round(statistics.median(normal), 4) if normal else None,
        "stalls_s": [round(s, 4) for s in stalls],
        "token_gaps_s": [round(s, 4) for s in gaps],
        "failovers_per_kill": [e["failovers"] for e in events],
        "tokens_equal": all_equal,
        "events": events,
        "wall_s": round(time.perf_counter() - began, 1),
    }


def _kill(victim, into: dict) -> None:
    into["at"] = time.perf_counter()
    victim.process.kill()  # SIGKILL: no goodbye, no close frame
