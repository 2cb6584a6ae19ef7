"""Memory planning (``--max-memory``, ``--num-blocks auto``) for an encoder: its blocks' weights, and no KV cache."""

import torch
from transformers import AutoModel, BertForMaskedLM

from swarmnode.models import Checkpoint
from swarmnode.models.families import ENCODER_FAMILIES, tiny_config
from swarmnode.runtime.planning import block_bytes, kv_bytes_per_token, plan_memory

BERT = next(f for f in ENCODER_FAMILIES if f.model_type == "bert")


def test_an_encoder_plans_its_blocks_weights_and_no_cache(tmp_path):
    torch.manual_seed(0)
    model = AutoModel.from_config(tiny_config(BERT))
    model.save_pretrained(tmp_path / "base")
    BertForMaskedLM(tiny_config(BERT)).save_pretrained(tmp_path / "with-head")  # keys under "bert."
    params = sum(p.numel() for p in model.encoder.layer[0].parameters())
    for folder in ("base", "with-head"):
        ck = Checkpoint(tmp_path / folder)
        assert block_bytes(ck, "float32") == 4 * params
        assert kv_bytes_per_token(ck, "float32") == 0
        assert plan_memory(ck, "float32", 3 * 4 * params, cache_tokens=100_000).max_blocks == 3
