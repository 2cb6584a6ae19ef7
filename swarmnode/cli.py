"""The ``swarmnode`` command: serve | generate | bench | models | demo.

Each command imports what it runs inside its function: the server, the client, the models and the
benchmarks load torch (~10 s), and ``swarmnode --help`` or ``swarmnode identity`` must not wait for it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import time

from swarmnode.launcher import LocalSwarm


def _serve(args: argparse.Namespace) -> None:
    # Several nodes may share a machine, and a chain runs them one after the other: OpenMP
    # workers that spin after each op would steal the cores the next node is computing on.
    # Must be set before torch (and its OpenMP runtime) loads.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from swarmnode.protocol import Limits  # after OMP_WAIT_POLICY, as torch below
    from swarmnode.server import NodeConfig, run_node  # torch

    if bool(args.tls_cert) != bool(args.tls_key):
        raise SystemExit("swarmnode serve: --tls-cert and --tls-key go together")
    limits = Limits(
        max_frame_bytes=args.max_frame_bytes,
        max_tokens_per_step=args.max_tokens_per_step,
        max_session_length=args.max_session_length,
    )
    config = NodeConfig(
        model=args.model,
        blocks=args.blocks,
        host=args.host,
        port=args.port,
        public_host=args.public_host,
        device=args.device,
        dtype=args.dtype,
        backend=args.backend,
        num_blocks=args.num_blocks,
        max_memory=args.max_memory,
        max_batch=args.max_batch,
        prefill_chunk=args.prefill_chunk,
        batch_window=args.batch_window_ms / 1000,
        machine_lock=args.machine_lock,
        num_threads=args.num_threads,
        small_step_threads=args.small_step_threads,
        cache_tokens=args.cache_tokens,
        prefix_cache_tokens=args.prefix_cache_tokens,
        idle_timeout=args.idle_timeout,
        limits=limits,
        portal=args.portal,
        token=args.token or os.environ.get("LAYERSWARM_NODE_TOKEN"),
        peers=tuple(p for p in (args.peers or "").split(",") if p),
        rebalance_interval=args.rebalance_interval,
        rebalance_margin=args.rebalance_margin,
        drain_timeout=args.drain_timeout,
        measure_throughput=not args.no_measure,
        identity=args.identity,
        relay=args.relay,
        relays=tuple(r for r in (args.relays or "").split(",") if r),
        relay_capacity=args.relay_capacity,
        corrupt_fraction=args.corrupt_fraction,
        corrupt_seed=args.corrupt_seed,
        max_connections_per_ip=args.max_connections_per_ip,
        max_sessions_per_connection=args.max_sessions_per_connection,
        connection_cache_share=args.connection_cache_share,
        max_forward_tokens=args.max_forward_tokens,
        push_private=args.push_private,
        push_unlisted=args.push_unlisted,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
    )
    run_node(config)


def _relay(args: argparse.Namespace) -> None:
    from swarmnode.server.relay_hub import RelayLimits, serve_relay  # torch, via the server package

    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
    limits = RelayLimits(
        capacity=args.capacity,
        node_bytes_per_s=args.node_bytes_per_s,
        node_frames_per_s=args.node_frames_per_s,
        relay_bytes_per_s=args.relay_bytes_per_s,
        relay_frames_per_s=args.relay_frames_per_s,
    )
    try:
        import uvloop  # optional speed-up (the 'speed' extra), as for nodes

        runner = uvloop.run
    except ImportError:
        runner = asyncio.run
    try:
        runner(serve_relay(args.host, args.port, limits, args.public_host))
    except KeyboardInterrupt:
        pass


def _identity(args: argparse.Namespace) -> None:
    from swarmnode.trust.identity import NodeIdentity  # cryptography: ~0.4 s that --help does not need
    from swarmnode.trust.receipts import key_of  # cryptography too

    identity = NodeIdentity.load_or_create(args.file)
    print(json.dumps({"client_key": key_of(identity), "public_key": identity.public_key}))


def _generate(args: argparse.Namespace) -> None:
    import torch  # torch (~10 s) loads only for the commands that compute

    from swarmnode.client import AutoDistributedModelForCausalLM  # torch
    from swarmnode.client.generation import complete, prompt_ids  # torch, transformers

    peers = [p for p in (args.peers or "").split(",") if p]
    if not peers and not args.portal:
        raise ValueError("give --peers URL,... or --portal URL")
    config = _client_config(args)
    model = AutoDistributedModelForCausalLM.from_pretrained(args.model, peers=peers, config=config)
    ids = prompt_ids(model.tokenizer, args.prompt, args.chat, args.system)
    generator = torch.Generator().manual_seed(args.seed) if args.seed is not None else None
    result = complete(
        model,
        ids,
        on_text=None if args.json else _write,
        generator=generator,
        max_new_tokens=args.max_new_tokens,
        do_sample=not args.greedy and args.temperature > 0,
        temperature=args.temperature if args.temperature > 0 else 1.0,
        top_p=args.top_p,
        top_k=args.top_k,
        repetition_penalty=args.repetition_penalty,
        stop_strings=args.stop or None,
    )
    if config.reporter is not None:
        config.reporter.flush()
    stats = model.last_stats
    if args.json:
        print(
            json.dumps(
                {
                    "text": result.text,
                    "token_ids": result.token_ids,
                    "ttft_s": round(stats.ttft_s, 4),
                    "tokens_per_s": round(stats.tokens_per_s, 2),
                    "receipts": [r.receipt.receipt_id for r in model.receipts],  # countersigned (spec §8)
                }
            )
        )
    else:
        print(
            f"\n[{len(result.token_ids)} tokens, first after {stats.ttft_s:.2f}s, {stats.tokens_per_s:.1f} tokens/s]",
            file=sys.stderr,
        )


def _client_config(args: argparse.Namespace):
    """The client options ``generate``'s flags ask for (a ``ClientConfig``)."""
    from swarmnode.client.audit import AuditPolicy, EvidenceReporter  # torch, via the client package
    from swarmnode.client.config import ClientConfig  # torch
    from swarmnode.client.routing import RoutingPolicy  # torch, via the client package
    from swarmnode.trust.identity import NodeIdentity  # cryptography

    # --identity: sign usage receipts (spec §8) with a key registered on the portal's credits page.
    identity = NodeIdentity.load_or_create(args.identity) if args.identity else None
    rate = args.audit_rate or (0.05 if args.verified else 0.0)
    audit = AuditPolicy(rate=rate, mode="verified" if args.verified else "sample") if rate else None
    api_key = args.api_key or os.environ.get("LAYERSWARM_API_KEY")
    return ClientConfig(
        portal=args.portal,
        routing=RoutingPolicy(mode=args.routing, rtt_weight=0.5 if args.push else 1.0),
        push=args.push,
        identity=identity,
        audit=audit,
        reporter=EvidenceReporter(args.portal, api_key) if audit and args.portal and api_key else None,
        secure=args.secure or None,
    )


def _write(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def _bench(args: argparse.Namespace) -> None:
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

    result = run_bench(args.model, args.nodes, args.new_tokens, args.runs, backend=args.backend or "auto")
    print(json.dumps(result) if args.json else json.dumps(result, indent=2))


def _bench_backends(args: argparse.Namespace) -> None:
    from swarmnode.bench.backends import run_bench_backends  # torch

    result = run_bench_backends(args.model, args.new_tokens, args.runs)
    print(json.dumps(result) if args.json else json.dumps(result, indent=2))


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


def _models(args: argparse.Namespace) -> None:
    from swarmnode.models import KNOWN_MODELS, fetch_model, layerswarm_home  # torch

    if args.models_command == "fetch":
        path = fetch_model(args.name)
        print(f"{args.name}: {path}")
    else:
        for name, spec in KNOWN_MODELS.items():
            cached = (layerswarm_home() / "models" / name / "config.json").is_file()
            print(f"{name:10s} {'fetched' if cached else 'not fetched':12s} {spec.description}")


def _demo(args: argparse.Namespace) -> None:
    from swarmnode.models import Checkpoint, resolve_model  # torch

    checkpoint = Checkpoint(resolve_model(args.model))
    print(f"starting {args.nodes} nodes for {args.model} ({checkpoint.num_blocks} blocks)...", flush=True)
    with LocalSwarm(args.model, checkpoint.num_blocks, args.nodes) as swarm:
        for node in swarm.nodes:
            print(f"  node blocks {node.ready['start_block']}:{node.ready['end_block']}  {node.url}")
        peers = ",".join(swarm.urls)
        print("\nThe swarm is up. Chat with it from another terminal:\n")
        print(f"  .venv/bin/swarmnode generate --peers {peers} --model {args.model} --chat \\")
        print('      --prompt "What is the capital of France?" --max-new-tokens 64\n')
        print("Press Ctrl-C to stop every node.", flush=True)
        try:
            while all(n.process.poll() is None for n in swarm.nodes):
                time.sleep(0.5)
            print("a node exited; stopping the swarm", file=sys.stderr)
        except KeyboardInterrupt:
            print("\nstopping...")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``swarmnode`` command."""
    parser = argparse.ArgumentParser(prog="swarmnode", description="Layerswarm node agent and client")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="serve a span of a model's blocks")
    serve.add_argument("--model", default="smollm2", help="known name, checkpoint dir or .gguf path")
    serve.add_argument(
        "--blocks",
        help="START:END (END exclusive) or 'auto': the window that most raises the swarm's bottleneck "
        "(default: auto with --portal/--peers, else the whole model)",
    )
    serve.add_argument("--peers", help="comma-separated node URLs to learn the swarm from (for --blocks auto)")
    serve.add_argument(
        "--rebalance-interval", type=float, default=0.0, help="seconds between rebalancing checks (0: never move)"
    )
    serve.add_argument("--rebalance-margin", type=float, default=0.2, help="move if the bottleneck rises this much")
    serve.add_argument("--drain-timeout", type=float, default=120.0, help="seconds to let sessions end before moving")
    serve.add_argument("--no-measure", action="store_true", help="skip measuring throughput at start")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=0, help="0 picks a free port")
    serve.add_argument("--public-host", help="host name to advertise when binding 0.0.0.0")
    serve.add_argument("--device", default="auto", help="auto (CUDA when available), cpu or cuda[:N]")
    serve.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", "float32", "float16", "bfloat16", "int8"],
        help="compute precision; auto: bf16/fp16 on GPU, fp32 on CPU; int8 weights on CPU (ONNX Runtime)",
    )
    serve.add_argument(
        "--backend",
        default="auto",
        choices=["auto", "torch", "onnxruntime"],
        help="auto: PyTorch on CUDA, the faster of ONNX Runtime/PyTorch (measured) on CPU",
    )
    serve.add_argument("--num-blocks", help="with no --blocks: 'auto' (as many as fit --max-memory) or a count")
    serve.add_argument("--max-memory", help="memory budget for weights + KV cache, e.g. 2GB (default: 80%% of free)")
    serve.add_argument("--max-batch", type=int, default=16, help="most sessions' decoding steps in one pass")
    serve.add_argument("--prefill-chunk", type=int, default=512, help="long prompts run in chunks of this size")
    serve.add_argument(
        "--batch-window-ms",
        type=float,
        default=30.0,
        help="a decoding batch waits up to this long for recently active sessions' next steps (0: never)",
    )
    serve.add_argument(
        "--prefix-cache-tokens",
        type=int,
        default=1024,
        help="positions of recent first prompts kept so that later sessions of the same client (same "
        "prefix salt) skip a shared beginning, e.g. a system prompt (0: keep none; ONNX Runtime backend)",
    )
    serve.add_argument("--num-threads", type=int, default=None, help="torch threads (default: all cores)")
    serve.add_argument(
        "--small-step-threads", type=int, default=None, help="threads for decoding steps (default: --num-threads)"
    )
    serve.add_argument(
        "--machine-lock",
        help="a file that nodes sharing this machine lock around each pass: they take turns on its cores "
        "(and batch what queues meanwhile) instead of slowing each other down",
    )
    serve.add_argument("--cache-tokens", type=int, default=32768, help="KV-cache budget across sessions (tokens)")
    serve.add_argument("--idle-timeout", type=float, default=300.0, help="seconds before an idle session is closed")
    serve.add_argument("--max-frame-bytes", type=int, default=64 * 1024 * 1024)
    serve.add_argument("--max-tokens-per-step", type=int, default=4096)
    serve.add_argument("--max-session-length", type=int, default=8192)
    serve.add_argument("--portal", help="portal URL to register with and heartbeat to, e.g. http://127.0.0.1:8000")
    serve.add_argument("--token", help="node token from the portal (default: $LAYERSWARM_NODE_TOKEN)")
    serve.add_argument(
        "--identity", help="key file of this node (created if missing; default: a fresh key pair each start)"
    )
    serve.add_argument(
        "--relay",
        default="auto",
        choices=["auto", "always", "never"],
        help="auto: serve through a relay only if the relay cannot dial this node back (behind NAT)",
    )
    serve.add_argument("--relays", help="comma-separated relay URLs (ws://HOST:PORT/layerswarm/v1/relay), best first")
    serve.add_argument("--relay-capacity", type=int, default=0, help="also relay for up to N nodes behind NAT")
    serve.add_argument("--max-connections-per-ip", type=int, default=256, help="open connections per address (0: any)")
    serve.add_argument(
        "--max-sessions-per-connection", type=int, default=32, help="open sessions one connection may hold (0: any)"
    )
    serve.add_argument(
        "--connection-cache-share", type=float, default=0.5, help="most of --cache-tokens one connection may hold"
    )
    serve.add_argument(
        "--max-forward-tokens", type=int, default=16384, help="rows x positions of one cache-less forward (0: any)"
    )
    serve.add_argument(
        "--push-private",
        default="auto",
        choices=["auto", "allow", "refuse"],
        help="push to private/loopback next hops: auto = only when this node serves on such an address",
    )
    serve.add_argument(
        "--push-unlisted",
        default="auto",
        choices=["auto", "allow", "refuse"],
        help="push to nodes outside the swarm view whose key the route names: auto = only with no --portal/--peers"
        " on a private address (a local swarm)",
    )
    serve.add_argument("--tls-cert", help="PEM certificate chain: serve wss:// (with --tls-key)")
    serve.add_argument("--tls-key", help="PEM private key of --tls-cert")
    # Tests and demos of auditing only: a dishonest node. Hidden from --help, announced nowhere.
    serve.add_argument("--corrupt-fraction", type=float, default=0.0, help=argparse.SUPPRESS)
    serve.add_argument("--corrupt-seed", type=int, default=None, help=argparse.SUPPRESS)
    serve.set_defaults(func=_serve)

    relay = sub.add_parser("relay", help="run a relay alone, for nodes behind NAT")
    relay.add_argument("--host", default="127.0.0.1")
    relay.add_argument("--port", type=int, default=0, help="0 picks a free port")
    relay.add_argument("--public-host", help="host name to advertise when binding 0.0.0.0")
    relay.add_argument("--capacity", type=int, default=16, help="nodes it carries at most")
    relay.add_argument("--node-bytes-per-s", type=float, default=256 * 1024 * 1024, help="per node; 0: unlimited")
    relay.add_argument("--node-frames-per-s", type=float, default=5000.0, help="per node; 0: unlimited")
    relay.add_argument("--relay-bytes-per-s", type=float, default=1024 * 1024 * 1024, help="in all; 0: unlimited")
    relay.add_argument("--relay-frames-per-s", type=float, default=50000.0, help="in all; 0: unlimited")
    relay.set_defaults(func=_relay)

    gen = sub.add_parser("generate", help="generate text through a swarm")
    gen.add_argument("--peers", help="comma-separated node URLs")
    gen.add_argument("--portal", help="find nodes through this portal's tracker instead of (or besides) --peers")
    gen.add_argument("--model", default="smollm2")
    gen.add_argument("--prompt", required=True)
    gen.add_argument("--chat", action="store_true", help="wrap the prompt in the model's chat template")
    gen.add_argument("--system", help="system message (with --chat)")
    gen.add_argument("--max-new-tokens", type=int, default=128)
    gen.add_argument("--greedy", action="store_true")
    gen.add_argument("--temperature", type=float, default=0.7)
    gen.add_argument("--top-p", type=float, default=0.9)
    gen.add_argument("--top-k", type=int, default=50)
    gen.add_argument("--repetition-penalty", type=float, default=1.0)
    gen.add_argument("--stop", action="append", help="stop sequence (repeatable)")
    gen.add_argument("--seed", type=int)
    gen.add_argument("--json", action="store_true", help="print one JSON object instead of streaming")
    gen.add_argument("--push", action="store_true", help="server-to-server push: nodes forward activations")
    gen.add_argument(
        "--secure", action="store_true", help="encrypt to every node end to end (always on through relays)"
    )
    gen.add_argument(
        "--routing", default="latency", choices=["latency", "throughput"], help="what chains are optimised for"
    )
    gen.add_argument(
        "--identity",
        help="client key file (created if missing): sign usage receipts, paid by the account the key is registered to",
    )
    gen.add_argument(
        "--audit-rate", type=float, default=0.0, help="replay this share of steps on independent nodes (e.g. 0.05)"
    )
    gen.add_argument(
        "--verified", action="store_true", help="release only tokens whose steps passed an audit (default rate 0.05)"
    )
    gen.add_argument("--api-key", help="report audit evidence to --portal as this user (default: $LAYERSWARM_API_KEY)")
    gen.set_defaults(func=_generate)

    ident = sub.add_parser("identity", help="print the client key of an identity file (created if missing)")
    ident.add_argument("file")
    ident.set_defaults(func=_identity)

    bench = sub.add_parser("bench", help="swarm vs local transformers, same run")
    bench.add_argument("--model", default="smollm2")
    bench.add_argument("--nodes", type=int, default=3)
    bench.add_argument("--new-tokens", type=int, default=64)
    bench.add_argument("--runs", type=int, default=3)
    bench.add_argument(
        "--backend",
        choices=["auto", "torch", "onnxruntime"],
        help="nodes' backend (default auto: the faster on this CPU) vs local transformers generate; torch: "
        "PyTorch nodes (bit-exact); onnxruntime: ONNX nodes vs the whole model in local ONNX Runtime",
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
    bench.add_argument("--json", action="store_true")
    bench.set_defaults(func=_bench)

    bb = sub.add_parser("bench-backends", help="every backend and precision on the whole model, one run")
    bb.add_argument("--model", default="smollm2")
    bb.add_argument("--new-tokens", type=int, default=64)
    bb.add_argument("--runs", type=int, default=3)
    bb.add_argument("--json", action="store_true")
    bb.set_defaults(func=_bench_backends)

    ba = sub.add_parser("bench-audit", help="audits: detection of a corrupt node, false positives, throughput cost")
    ba.add_argument("--model", default="smollm2")
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
    ba.add_argument("--json", action="store_true")
    ba.set_defaults(func=_bench_audit)

    models = sub.add_parser("models", help="fetch and list models")
    msub = models.add_subparsers(dest="models_command", required=True)
    fetch = msub.add_parser("fetch", help="download and convert a known model")
    fetch.add_argument("name")
    msub.add_parser("list", help="known models and whether they are fetched")
    models.set_defaults(func=_models)

    demo = sub.add_parser("demo", help="run a local swarm in the foreground")
    demo.add_argument("--model", default="smollm2")
    demo.add_argument("--nodes", type=int, default=3)
    demo.set_defaults(func=_demo)
    return parser


def main(argv: list[str] | None = None) -> None:
    """Run the ``swarmnode`` command."""
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except KeyboardInterrupt:
        sys.exit(130)
    except (ValueError, FileNotFoundError, KeyError) as exc:
        print(f"swarmnode: error: {exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
