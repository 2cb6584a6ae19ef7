"""Log-probabilities on the gateway and the default answer length, with a scripted model (no swarm): the
decoding loop hands each piece of text the entries of exactly the tokens it holds; stop strings and EOS carry
none; ``max_tokens`` left out fills the context."""

from __future__ import annotations

import math
import threading

import pytest
import torch

from portal.generation.decoding import run_generation
from portal.generation.logprobs import FLOOR, LogprobRecorder, tokens_within
from portal.generation.prompts import Prompt, fit_prompt
from portal.generation.protocol import GenerationRequest

VOCAB = 8
EOS = 7


class CharTokenizer:
    """Token i is the letter 'a'+i (EOS: none); chat messages render as their contents, one token a letter."""

    eos_token_id = EOS
    bos_token_id = 0

    def decode(self, ids, skip_special_tokens=False):
        return "".join("" if i == EOS else chr(ord("a") + i) for i in ids)

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [ord(c) - ord("a") for c in text]}

    def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=True):
        return "".join(m["content"] for m in messages)


class ScriptedModel:
    """Emits ``script`` token by token, each from logits that favour it, reporting them to ``on_logits``."""

    def __init__(self, script: list[int]) -> None:
        self.tokenizer = CharTokenizer()
        self.generation_config = type("G", (), {"eos_token_id": EOS})()
        self.script = script
        self.asked: dict = {}

    def stream(self, ids, generator=None, on_logits=None, **kwargs):
        self.asked = kwargs
        for k, tid in enumerate(self.script[: kwargs["max_new_tokens"]]):
            logits = torch.arange(VOCAB, dtype=torch.float32)[None, :] * 0.1  # (1, V)
            logits[0, tid] = 3.0
            token = torch.tensor([tid])
            if on_logits is not None:
                on_logits(k, logits, token)
            yield token


def _generate(script, **fields):
    model = ScriptedModel(script)
    request = GenerationRequest(model="m", prompt="ab", temperature=0, **fields)
    pieces: list[tuple[str, list | None]] = []

    def emit(text, completion_tokens, logprobs=None):
        pieces.append((text, logprobs))

    outcome = run_generation(model, request, Prompt([0, 1]), emit, threading.Event())
    return outcome, pieces


def test_every_answer_token_gets_its_logprob_once_with_its_alternatives():
    outcome, pieces = _generate([2, 3, 4, EOS], logprobs=True, top_logprobs=3, max_new_tokens=10)
    assert outcome.text == "cde" and outcome.finish_reason == "stop"
    entries = [e for _, logprobs in pieces for e in logprobs]
    assert [e["token"] for e in entries] == ["c", "d", "e"]  # EOS has no entry
    expected = torch.log_softmax(torch.tensor([0.0, 0.1, 3.0, 0.3, 0.4, 0.5, 0.6, 0.7]), -1)[2].item()
    assert math.isclose(entries[0]["logprob"], expected, rel_tol=1e-6)
    first = entries[0]["top_logprobs"]
    assert [t["token"] for t in first] == ["c", "", "g"] and first[0]["logprob"] == entries[0]["logprob"]
    assert all(e["bytes"] == list(e["token"].encode()) for e in entries)
    assert sum(math.exp(t["logprob"]) for t in first) < 1


def test_a_stop_string_and_held_back_text_keep_their_tokens_aligned():
    # "cdfe": the stop string "fe" is held back while it may start; its tokens get no entries.
    outcome, pieces = _generate([2, 3, 5, 4, 2], logprobs=True, stop=["fe"], max_new_tokens=10)
    assert outcome.text == "cd" and outcome.finish_reason == "stop"
    for text, logprobs in pieces:  # each piece carries the entries of the tokens that spell it
        assert "".join(e["token"] for e in logprobs) == text
    assert [e["token"] for _, lp in pieces for e in lp] == ["c", "d"]


def test_without_logprobs_nothing_is_computed_or_sent():
    outcome, pieces = _generate([2, 3], max_new_tokens=2)
    assert outcome.text == "cd" and all(logprobs is None for _, logprobs in pieces)


def test_the_recorder_replaces_a_rolled_back_step_and_floors_impossible_tokens():
    recorder = LogprobRecorder(CharTokenizer(), top=2)
    recorder(0, torch.zeros(1, VOCAB), torch.tensor([1]))
    recorder(0, torch.tensor([[0.0, -math.inf, 1, 1, 1, 1, 1, 1]]), torch.tensor([1]))  # after a rollback
    (entry,) = recorder.entries(0, 5)
    assert entry["token"] == "b" and entry["logprob"] == FLOOR and len(entry["top_logprobs"]) == 2


def test_tokens_within_counts_the_tokens_a_text_prefix_holds():
    tok = CharTokenizer()
    assert [tokens_within(tok, [2, 3, 4], n) for n in range(5)] == [0, 1, 2, 3, 3]
    assert tokens_within(tok, [2, EOS], 1) == 2  # EOS spells nothing


@pytest.mark.parametrize("budget", [0, 50])
def test_max_tokens_left_out_fills_the_room_the_prompt_leaves(settings, budget):
    settings.CHAT_MAX_NEW_TOKENS = 1000
    request = GenerationRequest(model="m", prompt="abcd", max_new_tokens=None, token_budget=budget)
    prompt = fit_prompt(CharTokenizer(), request, limit=100)
    assert len(prompt.ids) == 4
    assert request.max_new_tokens == (96 if not budget else 46)  # the context's room, or what credits pay for
    settings.CHAT_MAX_NEW_TOKENS = 20  # the operator's cap per answer still holds
    request = GenerationRequest(model="m", messages=[{"role": "user", "content": "ab"}], max_new_tokens=None)
    fit_prompt(CharTokenizer(), request, limit=100)
    assert request.max_new_tokens == 20


def test_a_prompt_that_fills_the_context_is_still_refused_without_max_tokens():
    from portal.generation.protocol import BadRequest

    request = GenerationRequest(model="m", prompt="abcd", max_new_tokens=None)
    with pytest.raises(BadRequest) as caught:
        fit_prompt(CharTokenizer(), request, limit=4)
    assert caught.value.code == "context_length_exceeded"
