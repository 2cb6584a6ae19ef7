"""The CUDA path: nodes on a GPU speak the same protocol and match local ``transformers``.

Skips where PyTorch sees no GPU (CI machines). Run on a GPU machine with ``bench/gpu.sh``.
The model has SmolLM2-135M's shapes with random weights (no weights can be fetched there).
"""

import json
import os
import statistics
import time
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU: the CUDA path is not tested here")

SMOLLM2_SHAPES = dict(
    hidden_size=576,
    intermediate_size=1536,
    num_hidden_layers=30,
    num_attention_heads=9,
    num_key_value_heads=3,
    vocab_size=49152,
    max_position_embeddings=2048,
    tie_word_embeddings=True,
    rope_theta=100000.0,
)


def write_word_tokenizer(out: Path, vocab_size: int) -> None:
    """A word-level tokenizer with ``vocab_size`` entries, so the client has one to load."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"w{i}": i for i in range(3, vocab_size)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>").save_pretrained(
        out
    )


@pytest.fixture(scope="module")
def gpu_model(tmp_path_factory):
    from transformers import LlamaConfig, LlamaForCausalLM

    out = tmp_path_factory.mktemp("gpu-model")
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**SMOLLM2_SHAPES))
    with torch.no_grad():  # sharper logits than the init, so greedy choices are not near-ties
        model.lm_head.weight.mul_(8.0)
    model.save_pretrained(out)
    write_word_tokenizer(out, SMOLLM2_SHAPES["vocab_size"])
    return out


def _swarm(model_dir, dtype, tmp_path):
    from swarmnode.launcher import LocalSwarm

    args = ["--device", "cuda", "--backend", "torch", "--dtype", dtype]
    return LocalSwarm(str(model_dir), 30, 3, extra_args=args, log_dir=tmp_path)


def _remote(model_dir, swarm, dtype):
    from swarmnode.client import AutoDistributedModelForCausalLM
    from swarmnode.client.head import load_client_head
    from swarmnode.models import Checkpoint

    remote = AutoDistributedModelForCausalLM.from_pretrained(str(model_dir), peers=swarm.urls)
    remote.head = load_client_head(Checkpoint(model_dir), dtype, device="cuda")
    return remote


def _timed(fn, n, runs=3):
    fn()
    speeds = []
    for _ in range(runs):
        torch.cuda.synchronize()
        start = time.perf_counter()
        out = fn()
        torch.cuda.synchronize()
        speeds.append(n / (time.perf_counter() - start))
    return statistics.median(speeds), out


def test_fp32_on_cuda_gives_the_local_tokens(gpu_model, tmp_path):
    from transformers import AutoModelForCausalLM

    local = AutoModelForCausalLM.from_pretrained(gpu_model, dtype=torch.float32).cuda().eval()
    ids = torch.randint(3, 49152, (1, 24), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        expected = local.generate(ids.cuda(), max_new_tokens=32, do_sample=False, eos_token_id=None, pad_token_id=0)
    with _swarm(gpu_model, "float32", tmp_path) as swarm:
        got = _remote(gpu_model, swarm, torch.float32).generate(
            ids, max_new_tokens=32, do_sample=False, eos_token_id=None
        )
    assert got.tolist() == expected.cpu().tolist()


def test_bf16_on_cuda_speed_and_agreement(gpu_model, tmp_path):
    from transformers import AutoModelForCausalLM

    n = 64
    ids = torch.randint(3, 49152, (1, 24), generator=torch.Generator().manual_seed(2))
    local = AutoModelForCausalLM.from_pretrained(gpu_model, dtype=torch.bfloat16).cuda().eval()

    def run_local():
        with torch.inference_mode():
            out = local.generate(ids.cuda(), max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0)
        return out[0, 24:].tolist()

    local_tok_s, local_tokens = _timed(run_local, n)
    with _swarm(gpu_model, "auto", tmp_path) as swarm:
        assert {node.ready["dtype"] for node in swarm.nodes} == {"bfloat16"}  # auto precision on a bf16 GPU
        remote = _remote(gpu_model, swarm, torch.bfloat16)

        def run_swarm():
            return remote.generate(ids, max_new_tokens=n, do_sample=False, eos_token_id=None)[0, 24:].tolist()

        swarm_tok_s, swarm_tokens = _timed(run_swarm, n)
    result = {
        "device": torch.cuda.get_device_name(0),
        "local_bf16_tok_s": round(local_tok_s, 1),
        "swarm_bf16_tok_s": round(swarm_tok_s, 1),
        "ratio": round(swarm_tok_s / local_tok_s, 3),
        "tokens_agree": sum(a == b for a, b in zip(local_tokens, swarm_tokens, strict=True)) / n,
    }
    print("GPU_RESULT " + json.dumps(result))
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "gpu_result.json").write_text(json.dumps(result) + "\n")
    assert result["tokens_agree"] >= 0.5
