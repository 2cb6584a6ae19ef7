"""``swarmnode bench --relay``: the same swarm reached directly and through a relay (spec §9), in one run.

Three nodes on loopback attach to one ``swarmnode relay`` (``--relay always``) and still listen
directly, so one client generates through their direct URLs and another through their relay
addresses (end-to-end encrypted, §10), interleaved so that machine load hits both alike.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

from swarmnode.bench.swarm import DEFAULT_PROMPT, _timed


def run_bench_relay(
    model: str = "smollm2",
    nodes: int = 3,
    new_tokens: int = 64,
    runs: int = 3,
    prompt: str = DEFAULT_PROMPT,
    backend: str = "auto",
) -> dict:
    """Decoding tokens/s through ``nodes`` relayed nodes vs the same nodes dialled directly.

    Returns:
        ``{"direct_tok_s", "relay_tok_s", "ratio", "tokens_equal", "overhead_ms_per_token", ...}``;
        medians over ``runs`` after a warm-up of each; ``rtt_*_ms``: median info round trips per node,
        and ``relay_extra_ms_per_token`` their difference summed over the chain (a token crosses each hop once).
    """
    from swarmnode.bench.swarm import chat_prompt_ids
    from swarmnode.client import AutoDistributedModelForCausalLM
    from swarmnode.launcher import LocalSwarm, start_relay
    from swarmnode.models import Checkpoint, resolve_model

    checkpoint = Checkpoint(resolve_model(model))
    tokenizer = checkpoint.tokenizer()
    ids = chat_prompt_ids(tokenizer, prompt)
    opts = dict(max_new_tokens=new_tokens, do_sample=False, eos_token_id=None)
    with tempfile.TemporaryDirectory() as logs:
        relay = start_relay(log_path=Path(logs) / "relay.log")
        try:
            node_args = ["--backend", backend, "--relay", "always", "--relays", relay.url]
            with LocalSwarm(model, checkpoint.num_blocks, nodes, extra_args=node_args, log_dir=Path(logs)) as swarm:
                direct = AutoDistributedModelForCausalLM.from_pretrained(model, peers=swarm.urls)
                relayed = AutoDistributedModelForCausalLM.from_pretrained(model, peers=swarm.addresses)
                assert all(p.relay for p in relayed.peers) and not any(p.relay for p in direct.peers)
                node_backends = sorted({n.ready["backend"] for n in swarm.nodes})

                def run(client):
                    def go(streamer):
                        out = client.generate(ids, streamer=streamer, **opts)
                        return out[0, ids.shape[1] :].tolist()

                    return go

                fns = {"direct": run(direct), "relay": run(relayed)}
                for fn in fns.values():
                    fn(None)  # warm-up: connections, caches, the nodes' first-call costs
                results: dict[str, list[float]] = {"direct": [], "relay": []}
                tokens: dict[str, list[int]] = {}
                for _ in range(runs):
                    for name, fn in fns.items():
                        tok_s, _, out = _timed(fn, new_tokens)
                        results[name].append(tok_s)
                        tokens[name] = out
                rtts = _ping_pairs(swarm.urls, swarm.addresses)
        finally:
            relay.process.terminate()
            relay.process.wait(10)
    direct_tok_s = statistics.median(results["direct"])
    relay_tok_s = statistics.median(results["relay"])
    return {
        "model": model,
        "nodes": nodes,
        "node_backends": node_backends,
        "new_tokens": new_tokens,
        "runs": runs,
        "encryption": "x25519-chacha20poly1305 (relayed only)",
        "direct_tok_s": round(direct_tok_s, 2),
        "relay_tok_s": round(relay_tok_s, 2),
        "ratio": round(relay_tok_s / direct_tok_s, 3),
        "overhead_ms_per_token": round(1000 * (1 / relay_tok_s - 1 / direct_tok_s), 2),
        "tokens_equal": tokens["direct"] == tokens["relay"],
        # Transport alone, less sensitive to machine load: median round trip of an info request per node.
        "rtt_direct_ms": rtts["direct"],
        "rtt_relay_ms": rtts["relay"],
        "relay_extra_ms_per_token": round(sum(rtts["relay"]) - sum(rtts["direct"]), 2),
    }


def _ping_pairs(urls: list[str], addresses: list[str], count: int = 100) -> dict[str, list[float]]:
    """Median info round trip (ms) to each node directly and through the relay (encrypted), interleaved."""
    from swarmnode.client.remote import RemoteSpan
    from swarmnode.protocol import Info

    out: dict[str, list[float]] = {"direct": [], "relay": []}
    for url, address in zip(urls, addresses, strict=True):
        spans = {"direct": RemoteSpan(url, timeout=10), "relay": RemoteSpan(address, timeout=10)}
        try:
            samples: dict[str, list[float]] = {"direct": [], "relay": []}
            for _ in range(count):
                for name, span in spans.items():
                    started = time.perf_counter()
                    span.request(Info())
                    samples[name].append(time.perf_counter() - started)
            for name in out:
                out[name].append(round(1000 * statistics.median(samples[name]), 3))
        finally:
            for span in spans.values():
                span.close()
    return out
