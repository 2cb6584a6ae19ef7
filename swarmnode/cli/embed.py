"""``swarmnode embed``: sentence embeddings from an encoder-only model served by a swarm (all-MiniLM-L6-v2)."""

from __future__ import annotations

import argparse
import json
import sys


def _embed(args: argparse.Namespace) -> None:
    from swarmnode.client import AutoDistributedModel, ClientConfig  # torch
    from swarmnode.models import Checkpoint, resolve_model
    from swarmnode.models.encoder import is_encoder_only

    peers = [p for p in (args.peers or "").split(",") if p]
    if not peers and not args.portal:
        raise ValueError("give --peers URL,... or --portal URL")
    if not is_encoder_only(Checkpoint(resolve_model(args.model)).config):
        raise ValueError(f"{args.model} is not an encoder-only model: it generates text (swarmnode generate)")
    texts = args.text or [line.rstrip("\n") for line in sys.stdin if line.strip()]
    if not texts:
        raise ValueError("give --text TEXT (repeatable) or one text per line on standard input")
    config = ClientConfig(portal=args.portal or None, secure=True if args.secure else None)
    model = AutoDistributedModel.from_pretrained(args.model, peers=peers, config=config)
    vectors = model.embed(texts, batch_size=args.batch_size)
    print(json.dumps({"model": args.model, "dimensions": model.dimensions, "embeddings": vectors.tolist()}))


def add_commands(sub) -> None:
    """Add embed to the ``swarmnode`` sub-command parsers ``sub``."""
    emb = sub.add_parser("embed", help="sentence embeddings through a swarm (encoder-only models: minilm)")
    emb.add_argument("--peers", help="comma-separated node URLs")
    emb.add_argument("--portal", help="find nodes through this portal's tracker instead of (or besides) --peers")
    emb.add_argument("--model", default="minilm", help="known name or checkpoint dir of an encoder (the nodes' model)")
    emb.add_argument("--text", action="append", help="a text to embed (repeatable; default: lines of standard input)")
    emb.add_argument("--batch-size", type=int, default=32, help="texts per padded batch sent through the nodes")
    emb.add_argument("--secure", action="store_true", help="encrypt to every node end to end")
    emb.set_defaults(func=_embed)
