"""The client's input side: a bare table lookup only where that is exactly what the model's stack computes."""

from __future__ import annotations

import shutil

import pytest
import torch

from swarmnode.client.head import load_client_head
from swarmnode.models import Checkpoint
from swarmnode.models.families import FAMILIES, tiny_config

# Plain lookups (llama, qwen2), input sides that add positions (gpt2, opt), and scaled ones (gemma's scaling
# lives in its embedding module, granite's multiplier in the stack).
FAMILY_ROWS = [
    pytest.param(f, id=f.model_type)
    for f in FAMILIES
    if f.model_type in {"llama", "qwen2", "gpt2", "opt", "gemma", "granite"}
]
LOOKUP = {"llama", "qwen2"}  # a bare lookup
POSITIONAL = {"gpt2", "opt"}  # position embeddings added: the stack's own way


def _tiny(fam, out, tokenizer_from):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(tiny_config(fam)).eval().save_pretrained(out)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tokenizer_from / name, out / name)
    return out


def _ids(vocab: int, seed: int, shape=(2, 4)) -> torch.Tensor:
    return torch.randint(0, vocab, shape, generator=torch.Generator().manual_seed(seed))


def test_the_default_models_tokens_enter_as_table_rows_equal_to_its_stacks_input(smollm2_dir):
    head = load_client_head(Checkpoint(smollm2_dir))
    vocab = int(head.embed.weight.shape[0])
    for past, seed in ((0, 1), (17, 2), (300, 3)):
        ids = _ids(vocab, seed)
        assert torch.equal(head.embed_tokens(ids, past), head.parts.embed(ids, past))
    assert head._plain_embed is True


@pytest.mark.parametrize("fam", FAMILY_ROWS)
def test_every_familys_input_side_is_the_stacks_own(fam, tmp_path, smollm2_dir):
    head = load_client_head(Checkpoint(_tiny(fam, tmp_path / fam.model_type, smollm2_dir)))
    vocab = int(head.embed.weight.shape[0])
    for past, seed in ((0, 1), (9, 2)):
        ids = _ids(vocab, seed)
        assert torch.equal(head.embed_tokens(ids, past), head.parts.embed(ids, past))
    if fam.model_type in LOOKUP | POSITIONAL:
        assert head._plain_embed is (fam.model_type in LOOKUP)
