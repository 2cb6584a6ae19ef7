"""Fixtures for swarmnode tests: tiny random-weight models and real node processes."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from swarmnode.launcher import LocalSwarm, start_node
from swarmnode.models import resolve_model

_TINY = dict(  # 6 blocks of hidden size 64: loads instantly, still a real architecture
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=6,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=49152,
    max_position_embeddings=512,
)
TINY_CONFIGS = {
    "llama": dict(_TINY, model_type="llama", tie_word_embeddings=True, rope_theta=10000.0),
    "qwen2": dict(_TINY, model_type="qwen2", tie_word_embeddings=False),
    "mistral": dict(_TINY, model_type="mistral", tie_word_embeddings=False, sliding_window=None),
}


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """The default model's checkpoint directory (fetched by ``make model``)."""
    return resolve_model("smollm2")


def make_tiny_model(model_type: str, out: Path, tokenizer_from: Path) -> Path:
    """Save a tiny random-weight model of ``model_type`` with the default model's tokenizer."""
    from transformers import AutoConfig, AutoModelForCausalLM

    spec = dict(TINY_CONFIGS[model_type])
    config = AutoConfig.for_model(spec.pop("model_type"), **spec)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    with torch.no_grad():  # larger weights than the init so that tokens differ across positions
        for p in model.parameters():
            p.mul_(4.0) if p.dim() > 1 else None
    model.save_pretrained(out)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        if (tokenizer_from / name).exists():
            shutil.copy(tokenizer_from / name, out / name)
    return out


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory, smollm2_dir) -> dict[str, Path]:
    """Tiny random-weight checkpoints (6 blocks, hidden 64) for several architectures."""
    root = tmp_path_factory.mktemp("tiny")
    return {name: make_tiny_model(name, root / name, smollm2_dir) for name in TINY_CONFIGS}


@pytest.fixture(scope="session")
def tiny_node(tiny_models, tmp_path_factory):
    """One real node process serving all 6 blocks of the tiny llama, with a small cache budget."""
    logs = tmp_path_factory.mktemp("logs")
    node = start_node(
        str(tiny_models["llama"]),
        "0:6",
        extra_args=[
            "--backend",
            "torch",
            "--cache-tokens",
            "1000",
            "--max-frame-bytes",
            "200000",
            "--max-tokens-per-step",
            "256",
        ],
        log_path=logs / "tiny-node.log",
    )
    node.ready_model_path = tiny_models["llama"]
    yield node
    node.process.kill()
    node.process.wait()


@pytest.fixture(scope="session")
def smollm2_swarm(smollm2_dir, tmp_path_factory):
    """Three real node processes serving SmolLM2 as 0:10, 10:20, 20:30."""
    # PyTorch nodes: the exact-parity backend (ONNX Runtime parity is tested on its own).
    logs = tmp_path_factory.mktemp("swarm-logs")
    with LocalSwarm("smollm2", 30, 3, extra_args=["--backend", "torch"], log_dir=logs) as swarm:
        yield swarm
