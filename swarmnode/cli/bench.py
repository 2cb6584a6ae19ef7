"""``swarmnode bench*``: the benchmarks, each printing same-run ratios as JSON."""

from __future__ import annotations

import argparse
import json


def _bench(args: argparse.Namespace) -> None:
    if args.push and args.relay:
        raise SystemExit("--push applies to the plain swarm bench and --sessions, not with --relay")
    if args.dtype and (args.sessions or args.relay):
        raise SystemExit("--dtype applies to the plain swarm vs local bench, not with --sessions or --relay")
    if args.sessions:
        from swarmnode.bench.sessions import run_bench_sessions  # torch, as every benchmark

        levels = tuple(int(x) for x in args.sessions.split(","))
        backend = args.backend or "auto"
        rows = run_bench_sessions(
            args.model,
            args.nodes,
            levels,
            args.new_tokens,
            backend=backend,
            rounds=args.runs,
            prefix_reuse=not args.no_prefix_reuse,
            push=args.push,
        )
        base = rows[0]["aggregate_tok_s"]
        for row in rows:
            row["speedup_vs_first"] = round(row["aggregate_tok_s"] / base, 2)
        print(json.dumps(rows) if args.json else json.dumps(rows, indent=2))
        return
    if args.relay:
        from swarmnode.bench.relay import run_bench_relay  # torch

        result = run_bench_relay(args.model, args.nodes, args.new_tokens, args.runs, backend=args.backend or "auto")
        print(json.dumps(result) if args.json else json.dumps(result, indent=2))
        return
    from swarmnode.bench.swarm import run_bench  # torch

    result = run_bench(
        args.model,
        args.nodes,
        args.new_tokens,
        args.runs,
        backend=args.backend or "auto",
        dtype=args.dtype,
        push=args.push,
    )
    print(json.dumps(result) if args.json else json.dumps(result, indent=2))


def _bench_failover(args: argparse.Namespace) -> None:
    from swarmnode.bench.failover import run_bench_failover  # torch

    result = run_bench_failover(
        args.model, args.kills, args.new_tokens, backend=args.backend, replay=args.replay, seed=args.seed
    )
    print(json.dumps(result) if args.json else json.dumps(result, indent=2))


def _bench_backends(args: argparse.Namespace) -> None:
    from swarmnode.bench.backends import run_bench_backends  # torch

    result = run_bench_backends(args.model, args.new_tokens, args.runs)
    print(json.dumps(result) if args.json else json.dumps(result, indent=2))


def _bench_fetch(args: argparse.Namespace) -> None:
    from swarmnode.bench.fetch import run_bench_fetch  # torch

    print(json.dumps(run_bench_fetch(args.model, args.blocks), indent=None if args.json else 2))


def _bench_audit(args: argparse.Namespace) -> None:
    from swarmnode.bench.audit import run_bench_audit  # torch

    result = run_bench_audit(
        args.model,
        blocks=args.blocks,
        honest_steps=args.honest_steps,
        session_length=args.session_length,
        cost_steps=args.cost_steps,
        cost_rounds=args.cost_rounds,
        runs=args.runs,
        record_steps=args.record_steps,
        real_runs=args.real_runs,
        corrupt_fraction=args.corrupt_fraction,
        auditor_backend=args.auditor_backend,
    )
    print(json.dumps(result) if args.json else json.dumps(result, indent=2))


def add_commands(sub) -> None:
    """Add bench, bench-failover, bench-backends, bench-fetch, bench-audit to the sub-command parsers ``sub``."""
    bench = sub.add_parser("bench", help="swarm vs local transformers, same run")
    bench.add_argument("--model", default="smollm2", help="known name, checkpoint dir or .gguf path")
    bench.add_argument("--nodes", type=int, default=3, help="node processes splitting the model")
    bench.add_argument("--new-tokens", type=int, default=64, help="tokens generated per run")
    bench.add_argument("--runs", type=int, default=3, help="runs of each side (the best counts)")
    bench.add_argument(
        "--backend",
        choices=["auto", "torch", "onnxruntime"],
        help="nodes' backend (default auto: the faster on this CPU) vs local transformers generate; torch: "
        "PyTorch nodes (bit-exact); onnxruntime: ONNX nodes vs the whole model in local ONNX Runtime",
    )
    bench.add_argument(
        "--dtype",
        choices=["float32", "int8"],
        help="nodes' precision (serve --dtype); int8: weight-only int8 ONNX spans, the report says how many "
        "greedy tokens still equal the local fp32 run's",
    )
    bench.add_argument("--sessions", help="comma-separated concurrency levels, e.g. 1,4,8,16")
    bench.add_argument(
        "--no-prefix-reuse",
        action="store_true",
        help="with --sessions: nodes compute every prompt in full (--prefix-cache-tokens 0)",
    )
    bench.add_argument(
        "--relay", action="store_true", help="the same nodes directly vs through a relay (encrypted), one run"
    )
    bench.add_argument(
        "--push", action="store_true", help="server-to-server push: nodes forward activations (not with --relay)"
    )
    bench.add_argument("--json", action="store_true", help="one line of JSON")
    bench.set_defaults(func=_bench)

    bfo = sub.add_parser("bench-failover", help="stalls when a serving node is killed mid-generation, K times")
    bfo.add_argument("--model", default="smollm2", help="known name, checkpoint dir or .gguf path")
    bfo.add_argument("--kills", type=int, default=10, help="generations, each with one serving node killed")
    bfo.add_argument("--new-tokens", type=int, default=64, help="tokens per generation")
    bfo.add_argument(
        "--backend",
        default="onnxruntime",
        choices=["auto", "torch", "onnxruntime"],
        help="every node's backend (one for all: a replay into another backend would not be bit-identical; "
        "auto may choose differently per node on a loaded machine)",
    )
    bfo.add_argument("--replay", default="exact", choices=["exact", "prefill"], help="the client's failover replay")
    bfo.add_argument("--seed", type=int, default=5, help="seed of the kill steps and victims")
    bfo.add_argument("--json", action="store_true", help="one line of JSON")
    bfo.set_defaults(func=_bench_failover)

    bb = sub.add_parser("bench-backends", help="every backend and precision on the whole model, one run")
    bb.add_argument("--model", default="smollm2", help="known name, checkpoint dir or .gguf path")
    bb.add_argument("--new-tokens", type=int, default=64, help="tokens generated per run")
    bb.add_argument("--runs", type=int, default=3, help="runs of each backend (the best counts)")
    bb.add_argument("--json", action="store_true", help="one line of JSON")
    bb.set_defaults(func=_bench_backends)

    bf = sub.add_parser("bench-fetch", help="fetching a span's blocks from 1, 2, 4 peers vs a raw loopback copy")
    bf.add_argument("--model", default="smollm2", help="known name or checkpoint dir")
    bf.add_argument("--blocks", type=int, default=10, help="blocks in the fetched span")
    bf.add_argument("--json", action="store_true", help="one line of JSON")
    bf.set_defaults(func=_bench_fetch)

    ba = sub.add_parser("bench-audit", help="audits: detection of a corrupt node, false positives, throughput cost")
    ba.add_argument("--model", default="smollm2", help="known name, checkpoint dir or .gguf path")
    ba.add_argument("--blocks", type=int, default=3, help="blocks per node (two hops)")
    ba.add_argument("--honest-steps", type=int, default=10_000, help="audited honest steps (false positives)")
    ba.add_argument("--session-length", type=int, default=500, help="tokens per honest session")
    ba.add_argument("--cost-steps", type=int, default=100, help="decoding steps per cost measurement")
    ba.add_argument("--cost-rounds", type=int, default=5, help="interleaved rounds of (none, 1%%, 5%%)")
    ba.add_argument("--runs", type=int, default=1000, help="seeded audit schedules over the recorded outcomes")
    ba.add_argument("--record-steps", type=int, default=200, help="steps of the corrupt node recorded")
    ba.add_argument("--real-runs", type=int, default=5, help="end-to-end sessions through the corrupt node")
    ba.add_argument("--corrupt-fraction", type=float, default=1.0, help="share of steps the bad node perturbs")
    ba.add_argument(
        "--auditor-backend", default="onnxruntime", help="backend of the auditing nodes (torch, onnxruntime)"
    )
    ba.add_argument("--json", action="store_true", help="one line of JSON")
    ba.set_defaults(func=_bench_audit)
