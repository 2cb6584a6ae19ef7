"""``swarmnode bench-fetch`` end to end on a tiny model: real seeder processes, a real node from the fetched
span; the report has the fields the README quotes (no speed is asserted)."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from swarmnode.bench.fetch import run_bench_fetch

pytestmark = pytest.mark.slow


def test_bench_fetch_reports_every_peer_count_and_a_serving_node(tmp_path):
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=128,
    )  # fmt: skip
    LlamaForCausalLM(config).save_pretrained(tmp_path / "tiny")
    result = run_bench_fetch(str(tmp_path / "tiny"), blocks=2, peer_counts=(1, 2))
    assert set(result["fetch_mb_s"]) == {"1", "2"} and result["verified"] is True
    assert sum(result["bytes_by_peer"]["2"].values()) == sum(result["bytes_by_peer"]["1"].values()) > 0
    assert result["raw_copy_mb_s"] > 0 and result["ratio_2_peers"] > 0 and result["time_to_serving_s"] > 0
