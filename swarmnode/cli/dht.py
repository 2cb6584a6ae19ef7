"""``swarmnode dht serve | lookup`` (a bootstrap peer; what the DHT says about a model) and ``swarmnode bench-dht``."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading


def split_addrs(text: str | None) -> list[str]:
    """``ADDR[,ADDR...]`` (spaces allowed too) as a list of multiaddrs."""
    return [a for a in (text or "").replace(" ", ",").split(",") if a]


def _serve(args: argparse.Namespace) -> None:
    from swarmnode.dht import open_dht

    dht = open_dht(
        split_addrs(args.dht),
        host=args.host,
        port=args.port,
        announce_host=args.public_host,
        identity_path=args.identity,
    )
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        print(json.dumps({"event": "ready", "addrs": dht.visible_addrs()}), flush=True)
        stop.wait()
    finally:
        dht.close()


def _lookup(args: argparse.Namespace) -> None:
    from swarmnode.dht import open_dht

    dht = open_dht(split_addrs(args.dht), client_mode=True)
    try:
        peers = dht.lookup(args.model, range(args.num_blocks))
    finally:
        dht.close()
    rows = [{"url": p.url, "start_block": p.start_block, "end_block": p.end_block, "key": p.public_key} for p in peers]
    print(json.dumps({"model": args.model, "peers": sorted(rows, key=lambda r: (r["start_block"], r["url"]))}))


def _bench(args: argparse.Namespace) -> None:
    from swarmnode.bench.dht import run_bench

    report = run_bench(nodes=args.nodes, lookups=args.lookups, num_blocks=args.num_blocks, span=args.span)
    if args.json:
        print(json.dumps(report))
    else:
        for key, value in report.items():
            print(f"{key:32s} {value}")
    sys.stdout.flush()


def add_commands(sub) -> None:
    """Add ``dht`` and ``bench-dht`` to the ``swarmnode`` parser's subcommands."""
    dht = sub.add_parser("dht", help="the DHT: run a bootstrap peer, or look a model's nodes up")
    dsub = dht.add_subparsers(dest="dht_command", required=True)
    serve = dsub.add_parser("serve", help="run a DHT peer (a bootstrap peer for --dht); prints a ready line")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: all)")
    serve.add_argument("--port", type=int, default=0, help="TCP port (0: any free one, printed in the ready line)")
    serve.add_argument("--public-host", help="address other peers dial, when listening on 0.0.0.0")
    serve.add_argument("--identity", help="libp2p key file (created if missing): the same peer id after a restart")
    serve.add_argument("--dht", help="comma-separated multiaddrs of other DHT peers to join (none: a new DHT)")
    serve.set_defaults(func=_serve)
    look = dsub.add_parser("lookup", help="print the nodes the DHT lists for a model, as JSON")
    look.add_argument("--dht", required=True, help="comma-separated multiaddrs of DHT peers")
    look.add_argument("--model", default="smollm2", help="the model's name, as nodes announce it")
    look.add_argument("--num-blocks", type=int, default=30, help="blocks of the model (the keys looked up)")
    look.set_defaults(func=_lookup)
    bench = sub.add_parser("bench-dht", help="DHT cost on loopback: lookup latency, announce cost, memory per peer")
    bench.add_argument("--nodes", type=int, default=50, help="DHT peers to start (one libp2p daemon each)")
    bench.add_argument("--lookups", type=int, default=50, help="lookups of the model's spans to time")
    bench.add_argument("--num-blocks", type=int, default=30, help="blocks of the benchmark's model")
    bench.add_argument("--span", type=int, default=10, help="blocks each announcing node serves")
    bench.add_argument("--json", action="store_true", help="print one JSON object")
    bench.set_defaults(func=_bench)
