"""Emulated wide-area links (delaying proxies): the router picks the low-latency chain; push vs no push.

Three real tiny-model nodes (0:2, 2:4, 4:6), each reachable through three proxies adding 20, 50
or 100 ms of RTT: three candidate chains. The client's pings must lead it to the 20 ms chain, and
generation over each chain, with and without server-to-server push, must return local
``transformers``' tokens. Tokens/s are printed (tests never assert timings).
"""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from swarmnode.client import AutoDistributedModelForCausalLM
from swarmnode.launcher import start_node
from swarmnode.testing.wan import WanLinks, tokens_per_s

pytestmark = [pytest.mark.slow]

RTTS_MS = [20.0, 50.0, 100.0]
PROMPT = torch.tensor([[1, 504, 3290, 314, 2683, 30, 1012, 17]])


@pytest.fixture(scope="module")
def wan(tiny_models, tmp_path_factory):
    logs = tmp_path_factory.mktemp("wan-logs")
    nodes = [
        start_node(
            str(tiny_models["llama"]),
            b,
            extra_args=["--backend", "torch", "--dtype", "float32"],
            log_path=logs / f"{b}.log",
        )
        for b in ("0:2", "2:4", "4:6")
    ]
    with WanLinks([n.url for n in nodes], RTTS_MS) as links:
        yield links
    for n in nodes:
        n.process.kill()
        n.process.wait()


def test_it_routes_through_the_low_latency_chain(wan, tiny_models):
    everything = [u for rtt in reversed(RTTS_MS) for u in wan.urls[rtt]]  # slowest listed first
    model = AutoDistributedModelForCausalLM.from_pretrained(str(tiny_models["llama"]), peers=everything)
    assert [p.url for p in model.chain()] == wan.urls[20.0]
    measured = model.rtts.snapshot()
    assert all(measured[u] >= 0.02 for u in wan.urls[20.0])
    assert all(measured[u] >= 0.1 for u in wan.urls[100.0])


def test_it_pushes_between_nodes_with_the_same_tokens(wan, tiny_models):
    local = AutoModelForCausalLM.from_pretrained(tiny_models["llama"], dtype=torch.float32).eval()
    expected = local.generate(PROMPT, max_new_tokens=12, do_sample=False, eos_token_id=None, pad_token_id=0)
    report = {}
    for rtt in RTTS_MS:
        row = {}
        for push in (False, True):
            model = AutoDistributedModelForCausalLM.from_pretrained(
                str(tiny_models["llama"]), peers=wan.urls[rtt], push=push
            )
            speed, tokens = tokens_per_s(model, PROMPT, 12)
            assert tokens == expected[0].tolist()
            row["push" if push else "no_push"] = round(speed, 2)
        report[f"{rtt:.0f}ms"] = row
    print("\nWAN tokens/s (tiny model, 3 hops) " + json.dumps(report))
