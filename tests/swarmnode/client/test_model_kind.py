"""The causal-LM client refuses an encoder-only model with a clear error naming the client that embeds."""

import pytest
from transformers import BertConfig, BertModel

from swarmnode.client import AutoDistributedModelForCausalLM


def test_an_encoder_only_model_is_refused_with_the_embedding_client_named(tmp_path):
    config = BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32)
    BertModel(config).save_pretrained(tmp_path / "tiny-bert")
    with pytest.raises(ValueError, match=r"encoder-only model .*AutoDistributedModel\.from_pretrained"):
        AutoDistributedModelForCausalLM.from_pretrained(str(tmp_path / "tiny-bert"), peers=["ws://127.0.0.1:9/x"])
