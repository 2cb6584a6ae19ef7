"""The fallback list of last known good peers (swarmnode/dht/source.py) and what counts as a local swarm."""

from __future__ import annotations

import json

from swarmnode.dht.source import MAX_FALLBACK_PEERS, bootstrap_is_local, dht_peers, fallback_path, recall, remember
from swarmnode.discovery import PeerInfo


def peer(i: int) -> PeerInfo:
    return PeerInfo(
        url=f"ws://10.0.0.{i}:7000/layerswarm/v1",
        model="smollm2",
        start_block=0,
        end_block=10,
        public_key=f"ed25519:k{i},x25519:x{i}",
    )


def test_it_remembers_and_recalls_the_peers_of_one_model(tmp_path):
    remember("smollm2", [peer(1), peer(2)], tmp_path)
    got = recall("smollm2", tmp_path)
    assert [(p.url, p.public_key, p.start_block, p.end_block) for p in got] == [
        (peer(i).url, peer(i).public_key, 0, 10) for i in (1, 2)
    ]
    assert recall("othermodel", tmp_path) == []


def test_it_keeps_a_bounded_list_and_survives_a_garbled_file(tmp_path):
    remember("smollm2", [peer(i) for i in range(200)], tmp_path)
    assert len(recall("smollm2", tmp_path)) == MAX_FALLBACK_PEERS
    fallback_path("smollm2", tmp_path).write_text("{not json")
    assert recall("smollm2", tmp_path) == []
    fallback_path("smollm2", tmp_path).write_text(json.dumps({"peers": [{"url": 1}]}))
    assert recall("smollm2", tmp_path) == []


def test_it_falls_back_to_the_list_when_no_bootstrap_peer_answers(tmp_path, monkeypatch):
    monkeypatch.setenv("LAYERSWARM_HOME", str(tmp_path))
    remember("smollm2", [peer(3)], None)
    # A port where nothing listens, under a well-formed peer id: the join fails, the list is used.
    dead = "/ip4/127.0.0.1/tcp/9/p2p/12D3KooWGyyTE9Pr9QioMu6dwR855G76phcw4EQwYBA9XPXFiG8a"
    peers, source = dht_peers([dead], "smollm2", 30, timeout=10)
    assert source == "fallback" and [p.url for p in peers] == [peer(3).url]


def test_only_an_all_private_bootstrap_list_is_a_local_swarm():
    assert bootstrap_is_local(["/ip4/127.0.0.1/tcp/1/p2p/X", "/ip4/192.168.1.2/tcp/2/p2p/Y"])
    assert not bootstrap_is_local(["/ip4/127.0.0.1/tcp/1/p2p/X", "/ip4/8.8.8.8/tcp/2/p2p/Y"])
    assert not bootstrap_is_local(["/dns4/boot.example.org/tcp/1/p2p/X"])
    assert not bootstrap_is_local([])
