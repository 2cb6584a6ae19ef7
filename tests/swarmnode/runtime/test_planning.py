"""Fitting a node to its hardware: precision, memory sizing, backend choice."""

import pytest
import torch

from swarmnode.models import Checkpoint
from swarmnode.runtime.planning import (
    DoesNotFit,
    block_bytes,
    kv_bytes_per_token,
    parse_bytes,
    plan_memory,
    resolve_device,
    resolve_precision,
)


@pytest.mark.parametrize(
    "text, value", [("2GB", 2 * 10**9), ("512MiB", 512 * 2**20), ("1.5g", 1_500_000_000), ("1000", 1000)]
)
def test_it_parses_memory_sizes(text, value):
    assert parse_bytes(text) == value


def test_it_refuses_nonsense_sizes():
    with pytest.raises(ValueError, match="not a memory size"):
        parse_bytes("lots")


def test_cpu_gets_fp32_and_no_int8_on_gpu():
    assert resolve_precision("cpu", "auto")[0] == "float32"
    assert resolve_precision("cpu", "int8")[0] == "int8"
    with pytest.raises(ValueError, match="int8"):
        resolve_precision("cuda", "int8")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
def test_asking_for_cuda_without_a_gpu_is_a_clear_error():
    assert resolve_device("auto") == "cpu"
    with pytest.raises(ValueError, match="no CUDA GPU"):
        resolve_device("cuda")


def test_it_counts_smollm2_blocks_and_cache(smollm2_dir):
    ck = Checkpoint(smollm2_dir)
    # per block: q 576x576, k/v 576x192 each, o 576x576, gate/up 576x1536, down 1536x576, 2 norms
    params = 2 * 576 * 576 + 2 * 576 * 192 + 3 * 576 * 1536 + 2 * 576
    assert block_bytes(ck, "float32") == 4 * params
    assert block_bytes(ck, "int8") == params
    assert kv_bytes_per_token(ck, "float32") == 2 * 3 * 64 * 4


def test_it_sizes_spans_to_the_budget(smollm2_dir):
    ck = Checkpoint(smollm2_dir)
    per_block = block_bytes(ck, "float32") + kv_bytes_per_token(ck, "float32") * 1000
    assert plan_memory(ck, "float32", 7 * per_block + 1, 1000).max_blocks == 7
    assert plan_memory(ck, "float32", 10**12, 1000).max_blocks == 30
    with pytest.raises(DoesNotFit, match="not even one block"):
        plan_memory(ck, "float32", per_block - 1, 1000)
