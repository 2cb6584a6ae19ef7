"""``swarmnode bench-audit``: how well and how cheaply audits catch a node that perturbs its outputs.

Everything runs through real node processes on this machine, serving a slice of the model (two hops
of ``blocks`` blocks each, fed with the real embeddings of a real text, teacher-forced):

1. **False positives**: ``honest_steps`` decoding steps through two honest PyTorch hops, audited at
   5 %; every step of every hop is compared with a replay on an independent node running another
   backend (ONNX Runtime by default), as in a real swarm (§11.4). Any failed audit or check is a false
   positive.
2. **Cost**: sessions without auditing, at 1 % and at 5 %, interleaved round by round in one run;
   ``cost_x`` is the share of the audited sessions' decoding time spent auditing (the throughput
   lost), and ``wallclock_cost_x = 1 - tokens_per_s(x) / tokens_per_s(none)`` the noisier direct ratio.
3. **Detection**: a node started with ``--corrupt-fraction F`` serves hop 2 for ``record_steps``
   steps; each of its step results is compared with an honest replay, which records, per step,
   whether an audit would flag it (real outcomes). ``runs`` seeded audit schedules at 5 % are then
   simulated over those outcomes: an audit after step s checks every step since the previous audit,
   and the run detects the node at the first audit whose window holds a flagged step. A few runs
   are also done for real (``real_runs``), end to end with the audits in the session.
"""

from __future__ import annotations

import random
import statistics
import time
from contextlib import ExitStack

import numpy as np
import torch

TEXT = (
    "The lighthouse keeper climbed the spiral stairs every evening at dusk, carrying a can of oil and a "
    "rag. From the gallery he could see the whole bay: the fishing boats coming home, the gulls circling "
    "the harbour wall, and far out, the dark line where the sea met the sky. "
)
NODE_ARGS = ["--backend", "torch", "--dtype", "float32", "--no-measure", "--num-threads", "1"]  # later args win


def _tokens(tokenizer, count: int) -> list[int]:
    ids: list[int] = []
    while len(ids) < count:
        ids += tokenizer(TEXT)["input_ids"]
    return ids[:count]


def _info(url: str):
    from swarmnode.client.remote import RemoteSpan

    span = RemoteSpan(url)
    try:
        return span.info()
    finally:
        span.close()


class _Bench:
    def __init__(
        self, model: str, blocks: int, stack: ExitStack, corrupt_fraction: float, auditor_backend: str
    ) -> None:
        from swarmnode.client.head import load_client_head
        from swarmnode.launcher import start_node
        from swarmnode.models import Checkpoint, resolve_model

        checkpoint = Checkpoint(resolve_model(model))
        self.head = load_client_head(checkpoint, torch.float32)
        self.tokenizer = checkpoint.tokenizer()
        self.num_blocks = 2 * blocks
        spans = {"a": f"0:{blocks}", "a2": f"0:{blocks}", "b": f"{blocks}:{2 * blocks}", "b2": f"{blocks}:{2 * blocks}"}
        spans["bad"] = f"{blocks}:{2 * blocks}"
        self.nodes = {}
        for name, span in spans.items():
            extra = ["--corrupt-fraction", str(corrupt_fraction), "--corrupt-seed", "1"] if name == "bad" else []
            if name in ("a2", "b2"):  # the auditors: another backend, so comparisons cross backends as in a swarm
                extra += ["--backend", auditor_backend]
            node = start_node(model, span, extra_args=NODE_ARGS + extra)
            stack.callback(node.process.kill)
            self.nodes[name] = node
        self.info = {name: _info(node.url) for name, node in self.nodes.items()}

    def embed(self, ids: list[int]) -> torch.Tensor:  # (1, T, H)
        with torch.inference_mode():
            return self.head.embed_tokens(torch.tensor([ids]))

    def session(self, chain: list[str], peers: list[str], length: int, audit=None):
        from swarmnode.client.session import InferenceSession

        return InferenceSession(
            [self.info[n] for n in chain],
            length + 8,
            peers=[self.info[n] for n in peers],
            num_blocks=self.num_blocks,
            audit=audit,
        )

    def run_session(self, session, ids: list[int], prompt: int = 8) -> int:
        """Prompt, then one token per step; returns the number of steps."""
        session.step(self.embed(ids[:prompt]))
        for token in ids[prompt:]:
            session.step(self.embed([token]))
        return 1 + len(ids) - prompt


def _honest(bench: _Bench, steps: int, length: int, seed: int) -> dict:
    from swarmnode.client.audit import AuditPolicy

    ids = _tokens(bench.tokenizer, length)
    done = sessions = false_positives = compared = 0
    while done < steps:
        n = min(length, steps - done + 7)
        policy = AuditPolicy(rate=0.05, seed=seed + sessions)
        with bench.session(["a", "b"], ["a", "a2", "b", "b2"], n, policy) as session:
            done += bench.run_session(session, ids[:n])
            session.audit_now()  # compare the tail since the last scheduled audit too
            stats = session.audit_stats
            false_positives += stats.failed + stats.check_failures
            compared += stats.steps_compared
        sessions += 1
    return {"honest_steps": done, "false_positives": false_positives, "honest_hop_steps_compared": compared}


def _costs(bench: _Bench, steps: int, rounds: int) -> dict:
    """Throughput cost of auditing at 1 % and 5 %.

    ``cost_x`` is the share of the audited sessions' decoding time spent in audits, which is exactly
    ``1 - tokens_per_s(audited) / tokens_per_s(unaudited)`` when steps cost the same with and without
    audits; measuring it inside each session keeps it steady on a loaded machine. The plain wall-clock
    ratio of interleaved runs is reported too (``wallclock_cost_x``).
    """
    from swarmnode.client.audit import AuditPolicy

    ids = _tokens(bench.tokenizer, steps + 8)
    rates = {"none": 0.0, "1pct": 0.01, "5pct": 0.05}
    seconds: dict[str, list[float]] = {k: [] for k in rates}
    audit_seconds: dict[str, float] = {k: 0.0 for k in rates}
    for r in range(rounds):
        for name, rate in rates.items():  # interleaved, so load changes hit all three alike
            policy = AuditPolicy(rate=rate, seed=r) if rate else None
            with bench.session(["a", "b"], ["a", "a2", "b", "b2"], len(ids), policy) as session:
                session.step(bench.embed(ids[:8]))
                before = session.audit_stats.audit_s
                started = time.perf_counter()
                for token in ids[8:]:
                    session.step(bench.embed([token]))
                seconds[name].append(time.perf_counter() - started)
                audit_seconds[name] += session.audit_stats.audit_s - before
    tps = {k: steps / statistics.median(v) for k, v in seconds.items()}
    share = {k: audit_seconds[k] / sum(seconds[k]) for k in rates}
    return {
        "tokens_per_s": {k: round(v, 2) for k, v in tps.items()},
        "cost_1pct": round(share["1pct"], 4),
        "cost_5pct": round(share["5pct"], 4),
        "wallclock_cost_1pct": round(1.0 - tps["1pct"] / tps["none"], 4),
        "wallclock_cost_5pct": round(1.0 - tps["5pct"] / tps["none"], 4),
    }


def _record(bench: _Bench, steps: int) -> tuple[list[bool], float, float]:
    """Per step of the corrupt node: would an audit flag it? (real outputs vs an honest replay)."""
    from swarmnode.client.remote import RemoteSpan
    from swarmnode.models.wire import tensor_to_wire
    from swarmnode.protocol import Forward, OpenSession, Step, tensor_from_numpy
    from swarmnode.protocol.compare import relative_errors, to_float32, tolerance_for

    ids = _tokens(bench.tokenizer, steps + 7)
    first, bad, ref = (RemoteSpan(bench.nodes[n].url) for n in ("a", "bad", "b2"))
    try:
        for span in (first, bad):
            span.request(OpenSession(session_id="record", max_length=len(ids) + 1))
        inputs, outputs, position = [], [], 0
        chunks = [ids[:8]] + [[t] for t in ids[8:]]
        for chunk in chunks:
            x = tensor_to_wire(bench.embed(chunk))
            y = first.request(Step(session_id="record", position=position, hidden=x)).hidden
            z = bad.request(Step(session_id="record", position=position, hidden=y)).hidden
            inputs.append(y.to_numpy())
            outputs.append(to_float32(z))
            position += len(chunk)
        replay = ref.request(Forward(hidden=tensor_from_numpy(np.concatenate(inputs, axis=1)))).hidden
        honest = to_float32(replay)
        tol = tolerance_for("float32")
        flagged, worst_flagged, pos = [], float("inf"), 0
        for out in outputs:
            err = float(relative_errors(out, honest[:, pos : pos + out.shape[1]]).max())
            flagged.append(err > tol)
            if err > tol:
                worst_flagged = min(worst_flagged, err)
            pos += out.shape[1]
        return flagged, worst_flagged, tol
    finally:
        for span in (first, bad, ref):
            span.close()


def _simulate(flagged: list[bool], runs: int, rate: float, within: int) -> tuple[float, float]:
    """Seeded schedules over recorded outcomes: (share detected within ``within`` steps, median step)."""
    from swarmnode.client.audit import AuditPolicy, AuditSchedule

    found = []
    for seed in range(runs):
        schedule = AuditSchedule(AuditPolicy(rate=rate), rng=random.Random(seed))
        window_start, hit = 0, None
        for step in range(1, len(flagged) + 1):
            if schedule.due():
                if any(flagged[window_start:step]):
                    hit = step
                    break
                window_start = step
        found.append(hit)
    detected = [s for s in found if s is not None and s <= within]
    median = statistics.median(s if s is not None else float("inf") for s in found)
    return len(detected) / runs, median


def _real_runs(bench: _Bench, runs: int, steps: int) -> list[int | None]:
    """End-to-end: sessions through the corrupt node auditing at 5 %; the step each one caught it."""
    from swarmnode.client.audit import AuditPolicy

    ids = _tokens(bench.tokenizer, steps + 7)
    out = []
    for seed in range(runs):
        with bench.session(
            ["a", "bad"], ["a", "a2", "bad", "b", "b2"], len(ids), AuditPolicy(rate=0.05, seed=seed)
        ) as s:
            s.step(bench.embed(ids[:8]))
            for token in ids[8:]:
                if s.audit_stats.first_detection_step is not None:
                    break
                s.step(bench.embed([token]))
            out.append(s.audit_stats.first_detection_step)
    return out


def run_bench_audit(
    model: str = "smollm2",
    blocks: int = 3,
    honest_steps: int = 10_000,
    session_length: int = 500,
    cost_steps: int = 100,
    cost_rounds: int = 5,
    runs: int = 1000,
    record_steps: int = 200,
    real_runs: int = 5,
    corrupt_fraction: float = 1.0,
    auditor_backend: str = "onnxruntime",
) -> dict:
    """Run the three measurements; return the ``--json`` result (see the module docstring)."""
    with ExitStack() as stack:
        bench = _Bench(model, blocks, stack, corrupt_fraction, auditor_backend)
        flagged, smallest_flagged_error, tol = _record(bench, record_steps)
        detection_rate, median = _simulate(flagged, runs, 0.05, 100)
        real = _real_runs(bench, real_runs, 100)
        costs = _costs(bench, cost_steps, cost_rounds)
        honest = _honest(bench, honest_steps, session_length, seed=1000)
    return {
        "detection_rate": detection_rate,
        "median_steps_to_detect": median,
        "false_positives": honest["false_positives"],
        "honest_steps": honest["honest_steps"],
        "cost_1pct": costs["cost_1pct"],
        "cost_5pct": costs["cost_5pct"],
        "runs": runs,
        "audit_rate": 0.05,
        "corrupt_fraction": corrupt_fraction,
        "recorded_steps": len(flagged),
        "recorded_steps_flagged": sum(flagged),
        "smallest_flagged_error": smallest_flagged_error,
        "tolerance": tol,
        "real_runs_steps_to_detect": real,
        "honest_hop_steps_compared": honest["honest_hop_steps_compared"],
        "tokens_per_s": costs["tokens_per_s"],
        "wallclock_cost_1pct": costs["wallclock_cost_1pct"],
        "wallclock_cost_5pct": costs["wallclock_cost_5pct"],
        "setup": f"{model}, 2 hops x {blocks} blocks, torch fp32 nodes audited by {auditor_backend} fp32 nodes, "
        "1 thread per node",
    }
