"""Nodes in the DHT (``swarmnode serve --dht ... --dht-only``), with tiny real node processes.

A stopped node leaves the lookups within one re-announce period (its tombstone); a killed one when its record
expires; records a stranger forges or stores under another node's id never reach a lookup; where the DHT engine
cannot load, the node says so and announces to the portal tracker instead.
"""

from __future__ import annotations

import asyncio
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import msgpack
import pytest

from swarmnode.dht.records import SIGNING_CONTEXT, block_key, make_record, node_id, sign
from swarmnode.discovery import PeerInfo
from swarmnode.launcher import start_node
from swarmnode.testing.polling import wait_until
from swarmnode.trust.identity import NodeIdentity
from tests.swarmnode.dht.conftest import kill_with_daemons

pytestmark = pytest.mark.slow

TTL = 6.0  # seconds a record lives: re-announced every 2 s


def tiny_node(model, bootstrap, log_path, *extra):
    args = ["--backend", "torch", "--no-measure", "--dht", ",".join(bootstrap.addrs), "--dht-ttl", str(TTL)]
    return start_node(str(model), "0:6", extra_args=[*args, *extra], log_path=log_path, timeout=180)


def urls(dht_client, model="llama"):
    return {p.url for p in dht_client.lookup(model, range(6))}


@pytest.fixture(scope="module")
def nodes(tiny_models, bootstrap, tmp_path_factory):
    logs = tmp_path_factory.mktemp("tiny-dht")
    started = [tiny_node(tiny_models["llama"], bootstrap, logs / f"node-{i}.log", "--dht-only") for i in range(2)]
    yield started
    for n in started:
        if n.process.poll() is None:
            kill_with_daemons(n.process)


def test_nodes_appear_in_lookups_with_their_signed_records(nodes, dht_client):
    expected = {n.url for n in nodes}
    assert wait_until(lambda: urls(dht_client) == expected, 30, "both nodes in the DHT")
    keys = {p.public_key for p in dht_client.lookup("llama", range(6))}
    assert len(keys) == 2 and all(k.startswith("ed25519:") for k in keys)


def _attack(bootstrap_addrs, victim: PeerInfo) -> dict:
    """A stranger's DHT peer (plain hivemind: no validator of ours) stores forged values; returns what honest
    peers accepted (``exclude_self``: its own storage does not count)."""
    from hivemind.dht.node import DHTNode

    mallory = NodeIdentity.generate()
    now = time.time()
    hijack = PeerInfo(**{**victim.__dict__, "url": "ws://127.0.0.1:9/layerswarm/v1", "public_key": mallory.public_key})
    unsigned = msgpack.packb({"r": msgpack.packb(make_record(victim, 60, now=now)), "s": b""})
    body = msgpack.packb(make_record(PeerInfo(**{**victim.__dict__, "url": "ws://127.0.0.1:9/layerswarm/v1"}), 60))
    forged = msgpack.packb({"r": body, "s": mallory.sign(SIGNING_CONTEXT + body)})  # the victim's key, not its sig
    foreign = sign(make_record(hijack, 60), mallory)  # valid for Mallory, stored as the victim's subkey
    victim_id = node_id(victim.public_key)
    attacks = {"unsigned": unsigned, "forged": forged, "foreign-key": foreign}

    async def run():
        node = await DHTNode.create(initial_peers=bootstrap_addrs, host_maddrs=["/ip4/127.0.0.1/tcp/0"])
        try:
            accepted = {}
            for name, value in attacks.items():
                key = block_key("llama", 0)
                result = await node.store_many([key], [value], now + 60, subkeys=[victim_id], exclude_self=True)
                accepted[name] = result[(key, victim_id)]
            return accepted
        finally:
            await node.shutdown()

    return asyncio.run(run())


def test_forged_unsigned_and_foreign_key_records_are_refused(nodes, dht_client, bootstrap):
    wait_until(lambda: len(urls(dht_client)) == 2, 30, "both nodes in the DHT")
    victim = next(p for p in dht_client.lookup("llama", range(6)) if p.url == nodes[0].url)
    assert _attack(bootstrap.addrs, victim) == {"unsigned": False, "forged": False, "foreign-key": False}
    after = dht_client.lookup("llama", range(6))
    assert {p.url for p in after} == {n.url for n in nodes}  # the victim is still listed, with its own URL
    assert next(p for p in after if p.url == nodes[0].url).public_key == victim.public_key


def test_a_stopped_node_leaves_lookups_within_one_reannounce_period(nodes, dht_client):
    wait_until(lambda: nodes[1].url in urls(dht_client), 30, "the node in the DHT")
    nodes[1].stop()
    assert nodes[1].process.returncode == 0
    stopped_at = time.monotonic()
    wait_until(lambda: nodes[1].url not in urls(dht_client), TTL / 3, "the stopped node gone from lookups")
    assert time.monotonic() - stopped_at <= TTL / 3 + 1  # its tombstone, not its record's expiry
    assert nodes[0].url in urls(dht_client)


def test_a_killed_node_expires(nodes, dht_client):
    wait_until(lambda: nodes[0].url in urls(dht_client), 30, "the node in the DHT")
    kill_with_daemons(nodes[0].process)
    killed_at = time.monotonic()
    assert nodes[0].url in urls(dht_client)  # no tombstone: the record stays until it expires
    wait_until(lambda: nodes[0].url not in urls(dht_client), TTL + 5, "the killed node's record to expire")
    assert time.monotonic() - killed_at > 1.0


def test_failover_re_queries_the_dht_and_finds_a_node_that_joined_later(tiny_models, bootstrap, dht_client, tmp_path):
    """Blocks 3:6's only node dies mid-generation; the replacement joined the DHT after the client started, so
    only a fresh DHT lookup can find it. Every token is still local transformers' greedy token."""
    import torch
    from transformers import AutoModelForCausalLM

    from swarmnode.client import AutoDistributedModelForCausalLM

    path = str(tiny_models["qwen2"])
    prompt, opts = torch.tensor([[1, 504, 3290, 314, 2683, 30, 1012, 17]]), dict(max_new_tokens=12, do_sample=False)
    local = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    expected = local.generate(prompt, pad_token_id=0, eos_token_id=None, **opts)[0].tolist()
    args = ["--backend", "torch", "--no-measure", "--dht", ",".join(bootstrap.addrs), "--dht-only"]
    with ThreadPoolExecutor(2) as pool:
        first = list(
            pool.map(lambda b: start_node(path, b, extra_args=args, log_path=tmp_path / f"{b}.log"), ["0:3", "3:6"])
        )
    late = None
    try:
        urls = {n.url for n in first}  # a node is ready before it has joined the DHT
        wait_until(lambda: urls <= {p.url for p in dht_client.lookup("qwen2", range(6))}, 60, "both nodes in the DHT")
        model = AutoDistributedModelForCausalLM.from_pretrained(path, dht=bootstrap.addrs, head_backend="torch")
        assert {p.url for p in model.peers} == {n.url for n in first}
        late = start_node(path, "3:6", extra_args=args, log_path=tmp_path / "late.log", timeout=180)
        out = [prompt]
        for i, token in enumerate(model.stream(prompt, eos_token_id=None, **opts)):
            out.append(token[:, None])
            if i == 4:
                kill_with_daemons(first[1].process)
        assert torch.cat(out, dim=1)[0].tolist() == expected
        [event] = model.last_stats.failovers
        assert event.url == first[1].url
        assert late.url in {p.url for p in model.peers}  # learnt from the DHT during the failover
    finally:
        for n in [*first, late]:
            if n is not None and n.process.poll() is None:
                kill_with_daemons(n.process)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_without_the_dht_engine_the_node_falls_back_to_the_portal_tracker(tiny_models, bootstrap, tmp_path):
    """hivemind made unimportable (as on Windows, where it has no wheel): one clear line, then the tracker."""
    broken = tmp_path / "site"
    (broken / "hivemind").mkdir(parents=True)
    (broken / "hivemind" / "__init__.py").write_text("raise ImportError('no hivemind build for this platform')\n")
    log = tmp_path / "node.log"
    portal = f"http://127.0.0.1:{_closed_port()}"
    node = start_node(
        str(tiny_models["llama"]),
        "0:6",
        extra_args=["--backend", "torch", "--no-measure", "--dht", ",".join(bootstrap.addrs), "--dht-only"]
        + ["--portal", portal, "--token", "lsn_test"],
        env={"PYTHONPATH": str(broken)},
        log_path=log,
        timeout=180,
    )
    try:
        line = "the DHT is unavailable on this machine (ImportError: no hivemind build for this platform): "
        wait_until(lambda: line + f"falling back to the portal tracker at {portal}" in log.read_text(), 30, line)
        wait_until(lambda: f"portal {portal} unreachable" in log.read_text(), 30, "announcing to the tracker")
        assert node.process.poll() is None  # still serving
    finally:
        node.stop()


def test_blocks_auto_and_rebalancing_read_the_dht(tiny_models, bootstrap, dht_client, tmp_path):
    """--dht-only nodes see each other only through the DHT: ``--blocks auto`` takes the uncovered window, and
    a node with ``--rebalance-interval`` moves where it raises the swarm's bottleneck."""
    from swarmnode.client import RemoteSpan
    from swarmnode.protocol import Info

    path = str(tiny_models["mistral"])
    args = ["--backend", "torch", "--no-measure", "--dht", ",".join(bootstrap.addrs), "--dht-only", "--dht-ttl", "6"]
    others, mover = [], None
    try:
        others.append(start_node(path, "0:3", extra_args=args, log_path=tmp_path / "first.log"))
        wait_until(lambda: others[0].url in {p.url for p in dht_client.lookup("mistral", range(6))}, 60, "in DHT")
        others.append(start_node(path, None, extra_args=[*args, "--blocks", "auto", "--num-blocks", "3"]))
        assert (others[1].ready["start_block"], others[1].ready["end_block"]) == (3, 6)  # the window nobody serves
        mover = start_node(
            path,
            "0:3",
            extra_args=[*args, "--rebalance-interval", "2", "--rebalance-margin", "0.1"],
            log_path=tmp_path / "mover.log",
        )

        def moved():
            try:
                span = RemoteSpan(mover.url, timeout=5)
                info = span.request(Info())
                span.close()
                return (info.start_block, info.end_block) != (0, 3) and (info.start_block, info.end_block)
            except Exception:
                return False  # restarting

        assert wait_until(moved, 120, "the node to move") == (0, 6)  # the whole model raises the bottleneck
        log = (tmp_path / "mover.log").read_text()
        assert f"link to {others[1].url}" in log  # its next hop 3:6, which only the DHT lists
    finally:
        for n in [*others, mover]:
            if n is not None and n.process.poll() is None:
                kill_with_daemons(n.process)
