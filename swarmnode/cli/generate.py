"""``swarmnode generate``: text through a swarm."""

from __future__ import annotations

import argparse
import json
import os
import sys


def _generate(args: argparse.Namespace) -> None:
    import torch  # torch (~10 s) loads only for the commands that compute

    from swarmnode.client import AutoDistributedModelForCausalLM  # torch
    from swarmnode.client.generation import complete, prompt_ids  # torch, transformers

    peers = [p for p in (args.peers or "").split(",") if p]
    if not peers and not args.portal and not args.dht:
        raise ValueError("give --peers URL,..., --portal URL or --dht MULTIADDR,...")
    config = _client_config(args)
    if args.manifest:  # nodes whose blocks differ from this trusted manifest are refused (docs/weights.md)
        from dataclasses import replace

        from swarmnode.client.weights import trusted_manifest

        config = replace(config, manifest=trusted_manifest(args.manifest, _keys(args.trust_key), peers))
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
        dht=tuple(a for a in (args.dht or "").split(",") if a),
    )


def _keys(value: list[str] | None) -> list[str]:
    return [key.strip() for item in value or [] for key in item.split(",") if key.strip()]


def _write(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def add_commands(sub) -> None:
    """Add generate to the ``swarmnode`` sub-command parsers ``sub``."""
    gen = sub.add_parser("generate", help="generate text through a swarm")
    gen.add_argument("--peers", help="comma-separated node URLs")
    gen.add_argument("--dht", help="comma-separated DHT bootstrap multiaddrs: find nodes through the DHT (docs/dht.md)")
    gen.add_argument("--portal", help="find nodes through this portal's tracker instead of (or besides) --peers")
    gen.add_argument("--model", default="smollm2", help="known name, checkpoint dir or .gguf path (the nodes' model)")
    gen.add_argument(
        "--manifest", help="the model's manifest id or name: refuse nodes whose blocks differ (docs/weights.md)"
    )
    gen.add_argument("--trust-key", action="append", help="a publisher key (ed25519:...) or key file to trust")
    gen.add_argument("--prompt", required=True, help="the text to continue (or the user message, with --chat)")
    gen.add_argument("--chat", action="store_true", help="wrap the prompt in the model's chat template")
    gen.add_argument("--system", help="system message (with --chat)")
    gen.add_argument("--max-new-tokens", type=int, default=128, help="stop after this many new tokens")
    gen.add_argument("--greedy", action="store_true", help="always take the likeliest token (no sampling)")
    gen.add_argument("--temperature", type=float, default=0.7, help="sampling temperature (0: greedy)")
    gen.add_argument("--top-p", type=float, default=0.9, help="sample from the smallest set of this probability")
    gen.add_argument("--top-k", type=int, default=50, help="sample from the k likeliest tokens")
    gen.add_argument("--repetition-penalty", type=float, default=1.0, help=">1 makes repeated tokens less likely")
    gen.add_argument("--stop", action="append", help="stop sequence (repeatable)")
    gen.add_argument("--seed", type=int, help="sampling seed, for repeatable samples")
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
