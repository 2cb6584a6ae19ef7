"""Push vs no push over emulated wide-area links: tokens/s of greedy decoding through 3 real nodes.

Each node sits behind delaying proxies (``swarmnode.testing.delay_proxy``) adding 20, 50 or
100 ms of RTT; the same nodes serve every RTT, so only the links differ. Without push every step
makes a round trip from the client to each node in turn; with push (spec §7) the step travels
client -> A -> B -> C -> client.

Usage: ``python bench/push_latency.py --model smollm2 --new-tokens 32 --json``
"""

from __future__ import annotations

import argparse
import json

from swarmnode.client import AutoDistributedModelForCausalLM
from swarmnode.launcher import LocalSwarm
from swarmnode.models import Checkpoint, resolve_model
from swarmnode.testing.wan import WanLinks, tokens_per_s


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark and print tokens/s per RTT, with and without push."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--rtts", type=float, nargs="+", default=[20.0, 50.0, 100.0], help="milliseconds")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    num_blocks = Checkpoint(resolve_model(args.model)).num_blocks
    node_args = ["--backend", "torch", "--dtype", "float32"]
    results = {"model": args.model, "hops": args.nodes, "new_tokens": args.new_tokens, "tokens_per_s": {}}
    with LocalSwarm(args.model, num_blocks, args.nodes, extra_args=node_args) as swarm:
        direct = AutoDistributedModelForCausalLM.from_pretrained(args.model, peers=swarm.urls)
        ids = direct.tokenizer("The history of lighthouses begins with", return_tensors="pt")["input_ids"]
        results["tokens_per_s"]["loopback"] = {"no_push": round(tokens_per_s(direct, ids, args.new_tokens)[0], 2)}
        with WanLinks(swarm.urls, args.rtts) as links:
            for rtt in args.rtts:
                row, outputs = {}, []
                for push in (False, True):
                    model = AutoDistributedModelForCausalLM.from_pretrained(
                        args.model, peers=links.urls[rtt], push=push
                    )
                    speed, tokens = tokens_per_s(model, ids, args.new_tokens)
                    row["push" if push else "no_push"] = round(speed, 2)
                    outputs.append(tokens)
                assert outputs[0] == outputs[1], "push changed the tokens"
                row["speedup"] = round(row["push"] / row["no_push"], 2) if row["no_push"] else None
                results["tokens_per_s"][f"{rtt:.0f}ms"] = row
    print(json.dumps(results) if args.json else json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
