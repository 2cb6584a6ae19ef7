"""``swarmnode serve | relay | doctor | identity | seed``: the commands that run a node or look after one."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys


def _serve(args: argparse.Namespace) -> None:
    # Several nodes may share a machine, and a chain runs them one after the other: OpenMP
    # workers that spin after each op would steal the cores the next node is computing on.
    # Must be set before torch (and its OpenMP runtime) loads.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from swarmnode.server import run_node  # torch

    run_node(_node_config(args))


def _node_config(args: argparse.Namespace):
    """The ``NodeConfig`` that ``serve``'s options (command line, ``SWARMNODE_*``, config file) describe."""
    from swarmnode.protocol import Limits
    from swarmnode.server import NodeConfig  # torch

    if args.dht_only and not args.dht:
        raise SystemExit("swarmnode serve: --dht-only needs --dht BOOTSTRAP[,BOOTSTRAP]")
    if bool(args.tls_cert) != bool(args.tls_key):
        raise SystemExit("swarmnode serve: --tls-cert and --tls-key go together")
    limits = Limits(
        max_frame_bytes=args.max_frame_bytes,
        max_tokens_per_step=args.max_tokens_per_step,
        max_session_length=args.max_session_length,
    )
    return NodeConfig(
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
        dht=tuple(a for a in (args.dht or "").split(",") if a),
        dht_only=args.dht_only,
        dht_ttl=args.dht_ttl,
        dht_port=args.dht_port,
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
        metrics=args.metrics,
        log_format=args.log_format,
        store=args.store,
        cache_size=args.cache_size,
        trust_keys=_trust_keys(args.trust_key),
        seed_cache=args.seed_cache,
    )


def _trust_keys(value: list[str] | str | None) -> tuple[str, ...]:
    """``--trust-key`` values (repeated flags; a config file's list or a variable arrives comma-joined)."""
    items = [value] if isinstance(value, str) else list(value or [])
    return tuple(key.strip() for item in items for key in item.split(",") if key.strip())


def _relay(args: argparse.Namespace) -> None:
    from swarmnode.server.logs import configure_logging
    from swarmnode.server.relay_hub import RelayLimits, serve_relay  # torch, via the server package

    configure_logging(args.log_format)
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


def _doctor(args: argparse.Namespace) -> None:
    from swarmnode.cli import build_parser
    from swarmnode.doctor import run_command  # torch, for the model and backend checks

    sys.exit(run_command(build_parser(), args, _node_config))


def _identity(args: argparse.Namespace) -> None:
    from swarmnode.trust.identity import NodeIdentity  # cryptography: ~0.4 s that --help does not need
    from swarmnode.trust.receipts import key_of  # cryptography too

    identity = NodeIdentity.load_or_create(args.file)
    print(json.dumps({"client_key": key_of(identity), "public_key": identity.public_key}))


def _seed(args: argparse.Namespace) -> None:
    from swarmnode.models import layerswarm_home
    from swarmnode.store.seeding import run_seeder

    run_seeder(args.store or layerswarm_home() / "store", args.host, args.port)


def add_commands(sub) -> None:
    """Add serve, relay, doctor, identity, seed to the ``swarmnode`` sub-command parsers ``sub``."""
    serve = sub.add_parser("serve", help="serve a span of a model's blocks")
    serve.add_argument("--config", help="TOML file of these flags (docs/node.md); SWARMNODE_<FLAG> variables win")
    serve.add_argument(
        "--model",
        default="smollm2",
        help="known name, checkpoint dir, .gguf path, or a model's manifest id or name (docs/weights.md)",
    )
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
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
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
    serve.add_argument("--max-frame-bytes", type=int, default=64 * 1024 * 1024, help="largest frame a peer may send")
    serve.add_argument("--max-tokens-per-step", type=int, default=4096, help="most positions in one step request")
    serve.add_argument("--max-session-length", type=int, default=8192, help="most positions one session may hold")
    serve.add_argument("--portal", help="portal URL to register with and heartbeat to, e.g. http://127.0.0.1:8000")
    serve.add_argument("--token", help="node token from the portal (default: $LAYERSWARM_NODE_TOKEN)")
    serve.add_argument(
        "--dht", help="comma-separated DHT bootstrap multiaddrs: announce to the DHT, read spans from it"
    )
    serve.add_argument("--dht-only", action="store_true", help="with --dht: no portal tracker (a portal-less swarm)")
    serve.add_argument("--dht-ttl", type=float, default=120.0, help="seconds a DHT record lives (re-announced at 1/3)")
    serve.add_argument("--dht-port", type=int, default=0, help="TCP port of the node's DHT peer (0: any free one)")
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
    serve.add_argument(
        "--metrics",
        default="loopback",
        choices=["off", "loopback", "public"],
        help="who may GET /metrics (Prometheus) on the node's port: loopback = this host only",
    )
    serve.add_argument("--log-format", default="text", choices=["text", "json"], help="json: one event per line")
    serve.add_argument("--store", help="weights object store directory (default: $LAYERSWARM_HOME/store)")
    serve.add_argument("--cache-size", help="the store's size cap, e.g. 20GB (default: half the free disk)")
    serve.add_argument(
        "--trust-key",
        action="append",
        help="trust this publisher key (ed25519:...) or the keys in this file; repeatable (docs/weights.md)",
    )
    serve.add_argument(
        "--seed-cache", action="store_true", help="also send peers stored objects this node does not serve"
    )
    # Tests and demos of auditing only: a dishonest node. Hidden from --help, announced nowhere.
    serve.add_argument("--corrupt-fraction", type=float, default=0.0, help=argparse.SUPPRESS)
    serve.add_argument("--corrupt-seed", type=int, default=None, help=argparse.SUPPRESS)
    serve.set_defaults(func=_serve)

    relay = sub.add_parser("relay", help="run a relay alone, for nodes behind NAT")
    relay.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    relay.add_argument("--port", type=int, default=0, help="0 picks a free port")
    relay.add_argument("--public-host", help="host name to advertise when binding 0.0.0.0")
    relay.add_argument("--capacity", type=int, default=16, help="nodes it carries at most")
    relay.add_argument("--node-bytes-per-s", type=float, default=256 * 1024 * 1024, help="per node; 0: unlimited")
    relay.add_argument("--node-frames-per-s", type=float, default=5000.0, help="per node; 0: unlimited")
    relay.add_argument("--relay-bytes-per-s", type=float, default=1024 * 1024 * 1024, help="in all; 0: unlimited")
    relay.add_argument("--relay-frames-per-s", type=float, default=50000.0, help="in all; 0: unlimited")
    relay.add_argument("--log-format", default="text", choices=["text", "json"], help="json: one event per line")
    relay.set_defaults(func=_relay)

    doc = sub.add_parser("doctor", help="check this machine, its settings, the portal and reachability")
    doc.add_argument("--config", help="the node's TOML config file (as serve --config)")
    doc.add_argument("--portal", help="portal URL to check (default: the config's)")
    doc.add_argument("--no-speed", action="store_true", help="skip timing the backend (loads two blocks)")
    doc.add_argument("--json", action="store_true", help="one JSON object: the config file and every check")
    doc.set_defaults(func=_doctor)

    ident = sub.add_parser("identity", help="print the client key of an identity file (created if missing)")
    ident.add_argument("file", help="the key file")
    ident.set_defaults(func=_identity)

    seed = sub.add_parser("seed", help="serve the store's weight objects to peers (no model loaded)")
    seed.add_argument("--store", help="store directory (default: $LAYERSWARM_HOME/store)")
    seed.add_argument("--host", default="127.0.0.1", help="address to listen on")
    seed.add_argument("--port", type=int, default=0, help="0 picks a free port")
    seed.set_defaults(func=_seed)
