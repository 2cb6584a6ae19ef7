"""``swarmnode models fetch | list | publish`` and ``swarmnode demo``."""

from __future__ import annotations

import argparse
import json
import sys
import time

from swarmnode.launcher import LocalSwarm


def _models(args: argparse.Namespace) -> None:
    from swarmnode.models import KNOWN_MODELS, fetch_model, layerswarm_home  # torch

    if args.models_command == "fetch":
        path = fetch_model(args.name)
        print(f"{args.name}: {path}")
    elif args.models_command == "publish":
        _publish(args)
    else:
        for name, spec in KNOWN_MODELS.items():
            cached = (layerswarm_home() / "models" / name / "config.json").is_file()
            print(f"{name:12s} {'fetched' if cached else 'not fetched':12s} {spec.description}")


def _publish(args: argparse.Namespace) -> None:
    from swarmnode.models import layerswarm_home, resolve_model  # torch
    from swarmnode.store.publish import publish_directory

    name = args.name or args.directory.rstrip("/").split("/")[-1]
    store = args.store or layerswarm_home() / "store"
    print(json.dumps(publish_directory(resolve_model(args.directory), args.key, name, store, args.cache_size)))


def _demo(args: argparse.Namespace) -> None:
    from swarmnode.models import Checkpoint, resolve_model  # torch

    checkpoint = Checkpoint(resolve_model(args.model))
    print(f"starting {args.nodes} nodes for {args.model} ({checkpoint.num_blocks} blocks)...", flush=True)
    with LocalSwarm(args.model, checkpoint.num_blocks, args.nodes) as swarm:
        for node in swarm.nodes:
            print(f"  node blocks {node.ready['start_block']}:{node.ready['end_block']}  {node.url}")
        peers = ",".join(swarm.urls)
        if checkpoint.tokenizer().chat_template:
            print("\nThe swarm is up. Chat with it from another terminal:\n")
            print(f"  .venv/bin/swarmnode generate --peers {peers} --model {args.model} --chat \\")
            print('      --prompt "What is the capital of France?" --max-new-tokens 64\n')
        else:  # a base model (Gemma 3 270M): it continues text
            print("\nThe swarm is up. Complete a prompt from another terminal:\n")
            print(f"  .venv/bin/swarmnode generate --peers {peers} --model {args.model} \\")
            print('      --prompt "The capital of France is" --greedy --max-new-tokens 32\n')
        print("Press Ctrl-C to stop every node.", flush=True)
        try:
            while all(n.process.poll() is None for n in swarm.nodes):
                time.sleep(0.5)
            print("a node exited; stopping the swarm", file=sys.stderr)
        except KeyboardInterrupt:
            print("\nstopping...")


def add_commands(sub) -> None:
    """Add models, demo to the ``swarmnode`` sub-command parsers ``sub``."""
    models = sub.add_parser("models", help="fetch and list models")
    msub = models.add_subparsers(dest="models_command", required=True)
    fetch = msub.add_parser("fetch", help="download and convert a known model")
    fetch.add_argument("name", help="a name that `swarmnode models list` shows")
    msub.add_parser("list", help="known models and whether they are fetched")
    pub = msub.add_parser("publish", help="split a checkpoint into signed, content-addressed objects in the store")
    pub.add_argument("directory", help="checkpoint directory (config.json, *.safetensors, tokenizer) or known name")
    pub.add_argument("--key", required=True, help="publisher key file (created when missing; keep it private)")
    pub.add_argument("--name", help="the model's name in the store (default: the directory's name)")
    pub.add_argument("--store", help="store directory (default: $LAYERSWARM_HOME/store)")
    pub.add_argument("--cache-size", help="the store's size cap, e.g. 20GB (default: half the free disk)")
    models.set_defaults(func=_models)

    demo = sub.add_parser("demo", help="run a local swarm in the foreground")
    demo.add_argument("--model", default="smollm2", help="known name, checkpoint dir or .gguf path")
    demo.add_argument("--nodes", type=int, default=3, help="node processes splitting the model")
    demo.set_defaults(func=_demo)
