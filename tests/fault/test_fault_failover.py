"""Failover that really recovers mid-generation: ``kill -9`` a node of the chain during every generation.

Six real node processes serve SmolLM2 as two replicas of each of three spans. During each of 20
greedy generations of 128 tokens a node of the session's chain is killed at a random step; every
generation must still return exactly the tokens of an undisturbed run. The killed node is replaced
by a fresh process (new port) before the next generation, so there is always a spare.
"""

from __future__ import annotations

import json
import os
import random
import statistics
import threading

import pytest
import torch

from swarmnode.client import AutoDistributedModelForCausalLM
from swarmnode.client.failover import FailoverPolicy
from swarmnode.launcher import start_node

pytestmark = [pytest.mark.slow, pytest.mark.model]

SPANS = ["0:10", "10:20", "20:30"]
NODE_ARGS = ["--backend", "torch", "--dtype", "float32"]
PROMPTS = [
    "The history of lighthouses begins with",
    "Write a short story about a robot who learns to paint.",
    "List three reasons why the sky is blue:",
    "def fibonacci(n):",
]
GENERATIONS = int(os.environ.get("LAYERSWARM_FAULT_GENERATIONS", "20"))
NEW_TOKENS = 128


def _restart(blocks, log, into: dict) -> None:
    into["node"] = start_node("smollm2", blocks, extra_args=NODE_ARGS, log_path=log)


@pytest.fixture(scope="module")
def replicas(tmp_path_factory):
    logs = tmp_path_factory.mktemp("fault-logs")
    from concurrent.futures import ThreadPoolExecutor

    def launch(i):
        blocks = SPANS[i % 3]
        return start_node("smollm2", blocks, extra_args=NODE_ARGS, log_path=logs / f"node-{i}.log")

    with ThreadPoolExecutor(6) as pool:
        nodes = list(pool.map(launch, range(6)))
    state = {"nodes": nodes, "logs": logs}
    yield state
    for n in state["nodes"]:
        if n.process.poll() is None:
            n.process.kill()
        n.process.wait()


@pytest.mark.timeout(2400)  # ~15 s per generation on an idle 2-core machine, much more when it is shared
def test_it_survives_kill_9_mid_generation_with_identical_tokens(replicas):
    rng = random.Random(5)
    urls = [n.url for n in replicas["nodes"]]
    # "exact" (default) replays the original steps one by one: bit-identical caches by construction.
    policy = FailoverPolicy(replay=os.environ.get("LAYERSWARM_FAULT_REPLAY", "exact"))
    model = AutoDistributedModelForCausalLM.from_pretrained("smollm2", peers=urls, failover=policy)
    tok = model.tokenizer
    prompts = [tok(p, return_tensors="pt")["input_ids"] for p in PROMPTS]
    opts = dict(max_new_tokens=NEW_TOKENS, do_sample=False, eos_token_id=None)
    expected = [model.generate(ids, **opts)[0].tolist() for ids in prompts]  # undisturbed runs
    stalls, replays, records = [], [], []
    for g in range(GENERATIONS):
        ids = prompts[g % len(prompts)]
        kill_at = rng.randrange(1, NEW_TOKENS - 1)
        delay = rng.uniform(0.0, 0.03)  # lands before, during or after the next step's compute
        victim, replacement = None, {}
        out = [ids]
        for i, token in enumerate(model.stream(ids, **opts)):
            out.append(token[:, None])
            if i == kill_at:
                chain = model.active_session.chain
                victim_url = rng.choice(chain).url
                victim = next(n for n in replicas["nodes"] if n.url == victim_url)
                threading.Timer(delay, victim.process.kill).start()  # SIGKILL: no goodbye, no close frame

                blocks = f"{victim.ready['start_block']}:{victim.ready['end_block']}"
                log = replicas["logs"] / f"restart-{g}.log"
                restarter = threading.Thread(target=_restart, args=(blocks, log, replacement))
                restarter.start()
        got = torch.cat(out, dim=1)[0].tolist()
        assert got == expected[g % len(prompts)], f"generation {g}: tokens differ after killing {victim.url}"
        events = model.last_stats.failovers
        assert len(events) == 1, f"generation {g}: expected one failover, got {events}"
        stalls.append(events[0].stall_s)
        replays.append(events[0].replay_s)
        records.append(
            dict(
                generation=g,
                killed_at_token=kill_at,
                position=events[0].position,
                stall_s=round(events[0].stall_s, 4),
                replay_s=round(events[0].replay_s, 4),
                replay_tokens=events[0].replay_tokens,
                code=events[0].code,
            )
        )
        print(f"\nFAULT EVENT {json.dumps(records[-1])}", flush=True)
        restarter.join()
        victim.process.wait()
        replicas["nodes"] = [n for n in replicas["nodes"] if n is not victim] + [replacement["node"]]
        model.urls = [n.url for n in replicas["nodes"]]
        model.discover()
    overhead = [s - r for s, r in zip(stalls, replays, strict=True)]
    summary = {
        "generations": GENERATIONS,
        "replay": policy.replay,
        "stall_median_s": round(statistics.median(stalls), 3),
        "stall_max_s": round(max(stalls), 3),
        "stall_without_replay_median_s": round(statistics.median(overhead), 3),
        "stall_without_replay_max_s": round(max(overhead), 3),
        "replay_median_s": round(statistics.median(replays), 3),
        "events": records,
    }
    print("\nFAULT SUMMARY " + json.dumps(summary))
