"""The default model split over three real node processes (0:10, 10:20, 20:30).

Greedy fp32 generation through the swarm must return exactly local ``transformers``' tokens.
"""

import json
import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM

from swarmnode.client import AutoDistributedModelForCausalLM

pytestmark = [pytest.mark.slow, pytest.mark.model]

LONG_TEXT = (
    "The history of lighthouses begins with fires lit on hilltops to guide ships home. Over centuries these "
    "simple beacons became towers of stone and iron, fitted with lenses that could throw a beam of light far "
    "across the water. Keepers lived in small cottages at the foot of the towers, trimming wicks, polishing "
    "brass and winding the clockwork that turned the great lens through the night. Storms tested them, and many "
    "stories tell of keepers who rowed out into heavy seas to rescue sailors whose ships had struck the rocks. "
    "In the twentieth century electricity replaced oil lamps, and automatic timers replaced the keepers, until "
    "most lighthouses were left to run themselves, watched from far away by engineers who visit a few times a "
    "year. Today many old lighthouses are museums, where visitors climb the spiral stairs and look out over the "
    "sea the keepers once watched. "
)


@pytest.fixture(scope="module")
def local(smollm2_dir):
    return AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def remote(smollm2_swarm):
    return AutoDistributedModelForCausalLM.from_pretrained("smollm2", peers=smollm2_swarm.urls)


def chat_ids(tokenizer, text):
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": text}], add_generation_prompt=True, return_tensors="pt", return_dict=True
    )["input_ids"]


def test_it_uses_three_spans(remote):
    assert [(p.start_block, p.end_block) for p in remote.chain()] == [(0, 10), (10, 20), (20, 30)]


def test_a_short_chat_prompt_gives_the_local_tokens(remote, local):
    ids = chat_ids(remote.tokenizer, "What is the capital of France?")
    expected = local.generate(ids, max_new_tokens=48, do_sample=False)
    got = remote.generate(ids, max_new_tokens=48, do_sample=False)
    assert got.tolist() == expected.tolist()
    assert "Paris" in remote.tokenizer.decode(got[0, ids.shape[1] :])


def test_a_300_token_prompt_gives_the_local_tokens(remote, local):
    ids = chat_ids(remote.tokenizer, "Summarize this text in two sentences.\n\n" + LONG_TEXT * 2)
    assert 280 <= ids.shape[1] <= 420
    expected = local.generate(ids, max_new_tokens=64, do_sample=False, eos_token_id=None, pad_token_id=0)
    got = remote.generate(ids, max_new_tokens=64, do_sample=False, eos_token_id=None)
    assert got.tolist() == expected.tolist()


def test_the_cli_answers_paris(smollm2_swarm):
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "swarmnode",
            "generate",
            "--peers",
            ",".join(smollm2_swarm.urls),
            "--model",
            "smollm2",
            "--chat",
            "--prompt",
            "What is the capital of France?",
            "--greedy",
            "--max-new-tokens",
            "32",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert "Paris" in result["text"]
    assert result["token_ids"] and result["ttft_s"] > 0 and result["tokens_per_s"] > 0
