"""Throughput measurement and its cache (per hardware + model + span + precision + backend)."""

import json

from swarmnode.server.config import NodeConfig
from swarmnode.server.node import Node
from swarmnode.server.throughput import (
    Throughput,
    ThroughputCache,
    cache_key,
    cached_rate,
    hardware_id,
    node_throughput,
)


def test_it_caches_measurements_by_configuration(tmp_path):
    cache = ThroughputCache(tmp_path / "t.json")
    key = cache_key("cpu:x:2", "smollm2", 0, 10, "float32", "torch", 2)
    assert cache.get(key) is None
    cache.put(key, Throughput(12.0, 300.0))
    assert ThroughputCache(tmp_path / "t.json").get(key) == Throughput(12.0, 300.0)
    assert cache.get(cache_key("cpu:x:2", "smollm2", 10, 20, "float32", "torch", 2)) is None


def test_it_survives_a_corrupt_cache_file(tmp_path):
    path = tmp_path / "t.json"
    path.write_text("{not json")
    cache = ThroughputCache(path)
    assert cache.get("k") is None
    cache.put("k", Throughput(1.0, 2.0))
    assert json.loads(path.read_text())["k"] == {"decode": 1.0, "prefill": 2.0}


def test_it_measures_a_span_once_and_then_reads_the_cache(tiny_models, tmp_path, monkeypatch):
    monkeypatch.setenv("LAYERSWARM_HOME", str(tmp_path))
    node = Node(NodeConfig(model=str(tiny_models["llama"]), blocks="0:6", backend="torch", dtype="float32"))
    first = node_throughput(node)
    assert first.decode > 0 and first.prefill > 0
    assert node_throughput(node) == first  # from the cache: the same numbers
    assert (tmp_path / "throughput.json").is_file()
    rate = cached_rate(hardware_id("cpu"), node.model_name, "float32")
    assert rate == first.decode * 6  # block-tokens/s for a joining node's estimate
