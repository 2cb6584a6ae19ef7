"""The OpenAI-compatible API with the official ``openai`` package as the client, against a real daphne and
three real nodes that registered with the portal's tracker (the gateway finds them there)."""

from __future__ import annotations

import os
import signal
import time

import openai
import pytest
import torch

from portal.generation.prompts import chat_prompt
from portal.processes import create_user_with_node_token, live_portal, manage
from swarmnode.client import AutoDistributedModelForCausalLM
from swarmnode.launcher import LocalSwarm
from swarmnode.testing.polling import wait_until

pytestmark = [pytest.mark.slow, pytest.mark.model]
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def _covered(url: str) -> bool:
    import json
    import urllib.request

    with urllib.request.urlopen(f"{url}/api/v1/swarm/health/?model=smollm2", timeout=10) as r:
        return json.loads(r.read())["models"][0]["covered"]


@pytest.fixture(scope="module")
def portal(tmp_path_factory):
    folder = tmp_path_factory.mktemp("openai")
    env = {
        "CHAT_CONTEXT_TOKENS": "1024",  # small enough for a 'context too long' test within the input limits
        "CHAT_MAX_GENERATIONS_PER_USER": "2",  # the 429 test's limit
    }
    with live_portal(folder, f"layerswarm_openai_{os.getpid()}", celery=False, env=env) as portal:
        token = create_user_with_node_token(portal.env, "volunteer", "volunteer-password-1")
        swarm = LocalSwarm(
            "smollm2", 30, 3, extra_args=["--backend", "torch", "--portal", portal.url, "--token", token],
            log_dir=folder,
        )  # fmt: skip
        with swarm:
            wait_until(lambda: _covered(portal.url), 90, "the tracker to see all 3 nodes")
            portal.swarm = swarm
            portal.key = manage(["create_api_key", "volunteer"], portal.env).stdout.strip().splitlines()[-1]
            # Every generated token is charged (also of streams left early): enough bought credits for the module.
            manage(
                ["shell", "-c", "from django.contrib.auth.models import User; from portal.ledger.books import deposit; "
                 "deposit(User.objects.get(username='volunteer'), 3_000_000, 'openai-tests')"],
                portal.env,
            )  # fmt: skip
            yield portal


@pytest.fixture(scope="module")
def client(portal) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{portal.url}/v1", api_key=portal.key, max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def reference(portal):
    """The swarm client itself, through the same tracker: what greedy generation must return."""
    model = AutoDistributedModelForCausalLM.from_pretrained("smollm2", portal=portal.url)

    def greedy(ids: list[int], n: int) -> str:
        out = model.generate(torch.tensor([ids]), max_new_tokens=n, do_sample=False, top_k=None)
        return model.tokenizer.decode(out[0, len(ids) :], skip_special_tokens=True)

    greedy.tokenizer = model.tokenizer
    return greedy


def test_it_lists_the_swarms_models(client):
    models = {m.id: m for m in client.models.list()}
    assert models["smollm2"].owned_by == "layerswarm" and models["smollm2"].model_extra["covered"] is True


def test_it_answers_a_chat_exactly_like_the_swarm_client(client, reference):
    whole = client.chat.completions.create(model="smollm2", messages=QUESTION, max_tokens=20, temperature=0)
    ids = chat_prompt(reference.tokenizer, QUESTION, 20, 8192).ids
    expected = reference(ids, 20)
    assert whole.choices[0].message.content == expected and "Paris" in expected
    assert whole.choices[0].finish_reason in ("stop", "length") and whole.object == "chat.completion"
    assert whole.usage.prompt_tokens == len(ids) and 0 < whole.usage.completion_tokens <= 20
    assert whole.usage.total_tokens == whole.usage.prompt_tokens + whole.usage.completion_tokens

    chunks = list(
        client.chat.completions.create(
            model="smollm2", messages=QUESTION, max_tokens=20, temperature=0, stream=True,
            stream_options={"include_usage": True},
        )
    )  # fmt: skip
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(pieces) > 1 and "".join(pieces) == expected
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == whole.choices[0].finish_reason
    assert chunks[-1].usage.total_tokens == whole.usage.total_tokens


def test_it_continues_a_raw_prompt_and_honours_stop_strings(client, reference):
    prompt = "The capital of France is"
    ids = reference.tokenizer(prompt, add_special_tokens=False)["input_ids"]
    whole = client.completions.create(model="smollm2", prompt=prompt, max_tokens=12, temperature=0)
    assert whole.choices[0].text == reference(ids, 12)
    streamed = client.completions.create(model="smollm2", prompt=prompt, max_tokens=12, temperature=0, stream=True)
    assert "".join(c.choices[0].text for c in streamed) == whole.choices[0].text

    stop = whole.choices[0].text.strip().split()[1]  # a word from the middle of the greedy answer
    cut = client.completions.create(model="smollm2", prompt=prompt, max_tokens=12, temperature=0, stop=[stop])
    assert cut.choices[0].finish_reason == "stop"
    assert cut.choices[0].text == whole.choices[0].text[: whole.choices[0].text.index(stop)]


def test_it_cancels_the_generation_when_a_streaming_client_goes_away(client, portal):
    from tests.portal.chat.conftest import open_sessions

    ask = dict(model="smollm2", messages=[{"role": "user", "content": "Tell me a long story."}], max_tokens=500)
    with client.chat.completions.create(**ask, temperature=0, stream=True) as stream:
        for i, _ in enumerate(stream):
            if i == 5:
                assert open_sessions(portal.swarm.urls) == [1, 1, 1]
                break
    wait_until(lambda: open_sessions(portal.swarm.urls) == [0, 0, 0], 5, "the nodes to close the session")


def _shell(portal, code: str) -> str:
    """Run ``code`` in the portal's Django (its database); return the last line it printed."""
    return manage(["shell", "-c", code], portal.env).stdout.strip().splitlines()[-1]


BILL = (
    "from django.contrib.auth.models import User; from portal.ledger.books import balance_of; "
    "from portal.chat.models import Reservation as R; u = User.objects.get(username='volunteer'); "
    "r = R.objects.filter(user_id=u.pk).order_by('-pk').first(); "
    "print(balance_of(u), r and r.state, r and r.used, r and r.reference)"
)


def test_it_charges_every_generated_token_when_a_streaming_client_leaves_mid_answer(client, portal):
    # The attack: the key's owner (here also the nodes' owner) streams and hangs up after a few pieces.
    # Before the fix nothing was charged, while the gateway had generated (and the nodes served) every token.
    before = int(_shell(portal, BILL).split()[0])
    ask = dict(model="smollm2", messages=[{"role": "user", "content": "Tell me a long story."}], max_tokens=500)
    with client.chat.completions.create(**ask, temperature=0, stream=True) as stream:
        pieces = [chunk for _, chunk in zip(range(8), stream, strict=False)]
    bill = {}

    def settled() -> bool:
        balance, state, used, reference = _shell(portal, BILL).split()
        bill.update(balance=int(balance), used=int(used), reference=reference)
        return state == "settled"

    wait_until(settled, 30, "the gateway to settle the abandoned stream")
    assert len(pieces) == 8 and bill["used"] > 7 + 10  # the prompt and at least the pieces read
    price = int(_shell(portal, "from django.conf import settings; print(settings.LEDGER_CREDITS_PER_TOKEN)"))
    assert before - bill["balance"] == bill["used"] * price  # exactly what was generated, charged once


def test_it_refuses_more_streams_at_once_than_the_per_user_limit_with_429(client):
    ask = dict(model="smollm2", messages=[{"role": "user", "content": "Tell me a long story."}], max_tokens=300)
    first = client.chat.completions.create(**ask, stream=True)
    second = client.chat.completions.create(**ask, stream=True)
    try:
        with pytest.raises(openai.RateLimitError) as caught:
            client.chat.completions.create(**ask, stream=True)
        assert caught.value.status_code == 429 and caught.value.body["code"] == "too_many_generations"
    finally:
        first.close()
        second.close()
    deadline = time.monotonic() + 15  # the gateway settles the two cancelled streams: the limit is free again
    while True:
        try:
            assert client.chat.completions.create(**{**ask, "max_tokens": 2}).choices[0].message.content is not None
            break
        except openai.RateLimitError:
            assert time.monotonic() < deadline, "the cancelled streams still count against the limit"
            time.sleep(0.5)


def test_it_samples_reproducibly_with_a_seed(client):
    ask = dict(model="smollm2", messages=QUESTION, max_tokens=12, temperature=0.9, top_p=0.95, seed=7)
    first = client.chat.completions.create(**ask).choices[0].message.content
    assert client.chat.completions.create(**ask).choices[0].message.content == first


@pytest.mark.parametrize(
    ("kwargs", "error", "status", "code", "text"),
    [
        ({"model": "gpt-17"}, openai.NotFoundError, 404, "model_not_found", "does not exist"),
        ({"max_tokens": -1}, openai.BadRequestError, 400, "invalid_value", "max_tokens must be an integer"),
        ({"temperature": 1e9}, openai.BadRequestError, 400, "invalid_value", "temperature must be"),
        ({"n": 2}, openai.BadRequestError, 400, "invalid_value", "only n=1"),
        ({"messages": [{"role": "wizard", "content": "hi"}]}, openai.BadRequestError, 400, "invalid_value", "role"),
        (
            {"messages": [{"role": "user", "content": "word " * 1500}]},
            openai.BadRequestError, 400, "context_length_exceeded", "context is 1024 tokens",
        ),
    ],
)  # fmt: skip
def test_it_refuses_bad_requests_with_openai_shaped_errors(client, kwargs, error, status, code, text):
    ask = {"model": "smollm2", "messages": QUESTION, "max_tokens": 8, **kwargs}
    with pytest.raises(error) as caught:
        client.chat.completions.create(**ask)
    assert caught.value.status_code == status
    body = caught.value.body
    assert body["code"] == code and text in body["message"] and set(body) == {"message", "type", "param", "code"}


def test_it_refuses_calls_without_a_valid_api_key(portal):
    for key in ("lsk_forged_key", "sk-someone-elses", portal.key + "x"):
        bad = openai.OpenAI(base_url=f"{portal.url}/v1", api_key=key, max_retries=0)
        with pytest.raises(openai.AuthenticationError) as caught:
            bad.chat.completions.create(model="smollm2", messages=QUESTION, max_tokens=4)
        assert caught.value.body["type"] == "authentication_error"

    import json
    import urllib.error
    import urllib.request

    anonymous = urllib.request.Request(f"{portal.url}/v1/chat/completions", data=b"{}", method="POST")
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(anonymous, timeout=10)
    assert caught.value.code == 401 and "missing API key" in json.loads(caught.value.read())["error"]["message"]


def test_it_reports_the_models_own_logprobs_whole_and_streamed(client, portal, reference):
    whole = client.chat.completions.create(
        model="smollm2", messages=QUESTION, max_tokens=8, temperature=0, logprobs=True, top_logprobs=3
    )
    choice = whole.choices[0]
    entries = choice.logprobs.content
    assert "".join(e.token for e in entries) == choice.message.content and len(entries) > 2
    for e in entries:  # greedy: each token is the most likely one, and the alternatives come in order
        assert len(e.top_logprobs) == 3 and e.top_logprobs[0].token == e.token
        assert e.logprob == e.top_logprobs[0].logprob >= e.top_logprobs[1].logprob >= e.top_logprobs[2].logprob
        assert e.bytes == list(e.token.encode())
    # The values are log_softmax of the model's logits at those positions (the swarm without cache, here).
    ids = chat_prompt(reference.tokenizer, QUESTION, 8, 8192).ids
    new = reference.tokenizer(choice.message.content, add_special_tokens=False)["input_ids"]
    model = AutoDistributedModelForCausalLM.from_pretrained("smollm2", portal=portal.url)
    expected = torch.log_softmax(model(torch.tensor([ids + new]))[0, len(ids) - 1 : -1].float(), dim=-1)
    got = torch.tensor([e.logprob for e in entries])
    assert len(new) == len(entries)
    assert torch.allclose(got, expected[torch.arange(len(new)), torch.tensor(new)], atol=2e-3)

    chunks = list(
        client.chat.completions.create(
            model="smollm2", messages=QUESTION, max_tokens=8, temperature=0, logprobs=True, stream=True
        )
    )
    streamed = [e for c in chunks if c.choices and c.choices[0].logprobs for e in c.choices[0].logprobs.content]
    for c in chunks:  # each chunk's entries spell its own text
        if c.choices and c.choices[0].delta.content:
            assert "".join(e.token for e in c.choices[0].logprobs.content) == c.choices[0].delta.content
    assert [(e.token, e.logprob) for e in streamed] == [(e.token, e.logprob) for e in entries]

    text = client.completions.create(model="smollm2", prompt="The capital of France is", max_tokens=6,
                                     temperature=0, logprobs=2)  # fmt: skip
    legacy = text.choices[0].logprobs
    assert "".join(legacy.tokens) == text.choices[0].text and len(legacy.token_logprobs) == len(legacy.tokens)
    assert all(len(alternatives) == 2 for alternatives in legacy.top_logprobs)
    assert legacy.text_offset[0] == len("The capital of France is")
    plain = client.chat.completions.create(model="smollm2", messages=QUESTION, max_tokens=2, temperature=0)
    assert plain.choices[0].logprobs is None  # only when asked for


def test_it_gets_a_model_by_id_and_refuses_tools_naming_the_field(client):
    assert client.models.retrieve("smollm2").id == "smollm2"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-17")
    weather = {"type": "function", "function": {"name": "weather", "parameters": {"type": "object", "properties": {}}}}
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="smollm2", messages=QUESTION, tools=[weather])
    assert caught.value.body["param"] == "tools" and caught.value.body["code"] == "unsupported_parameter"
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="smollm2", messages=QUESTION, response_format={"type": "json_object"})
    assert caught.value.body["param"] == "response_format"


def test_max_tokens_left_out_fills_the_room_left_in_the_context(client, reference):
    prompt = "one two three four five six seven eight nine ten " * 98  # ~1000 of the 1024 tokens of context
    whole = client.completions.create(model="smollm2", prompt=prompt, temperature=0)
    usage = whole.usage
    assert usage.prompt_tokens == len(reference.tokenizer(prompt, add_special_tokens=False)["input_ids"])
    assert 950 < usage.prompt_tokens < 1024 and usage.completion_tokens > 0
    assert whole.choices[0].finish_reason == "stop" or usage.total_tokens == 1024  # 1024: CHAT_CONTEXT_TOKENS


def test_langchain_chat_openai_chats_streams_and_reads_logprobs(portal, monkeypatch, tmp_path):
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))  # nothing here may need tiktoken's downloads
    from langchain_core.messages import HumanMessage
    from langchain_openai import ChatOpenAI

    chat = ChatOpenAI(model="smollm2", base_url=f"{portal.url}/v1", api_key=portal.key, temperature=0,
                      max_tokens=12, max_retries=0, timeout=120)  # fmt: skip
    answer = chat.invoke([HumanMessage("What is the capital of France?")])
    assert "Paris" in answer.content and answer.usage_metadata["output_tokens"] > 0
    pieces = [chunk.content for chunk in chat.stream("What is the capital of France?")]
    assert len([p for p in pieces if p]) > 1 and "".join(pieces) == answer.content
    scored = chat.bind(logprobs=True).invoke("What is the capital of France?")
    content = scored.response_metadata["logprobs"]["content"]
    assert "".join(e["token"] for e in content) == scored.content and all(e["logprob"] <= 0 for e in content)
    weather = {"type": "function", "function": {"name": "weather", "parameters": {"type": "object", "properties": {}}}}
    with pytest.raises(openai.BadRequestError) as caught:
        chat.bind_tools([weather]).invoke("What is the weather in Paris?")
    assert caught.value.body["param"] == "tools"


def test_it_answers_503_when_the_swarm_does_not_cover_the_model(client, portal):
    manage(
        ["shell", "-c", "from portal.swarm.models import SwarmModel; "
         "SwarmModel.objects.create(name='tinyllama', num_blocks=22, hidden_size=2048)"],
        portal.env,
    )  # fmt: skip
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(model="tinyllama", messages=QUESTION, max_tokens=4)
    assert caught.value.status_code == 503 and "node serves tinyllama" in caught.value.body["message"]

    last = portal.swarm.nodes[2].process
    last.send_signal(signal.SIGINT)  # blocks 20-29 leave the swarm (the node says goodbye to the tracker)
    last.wait(timeout=30)
    wait_until(lambda: not _covered(portal.url), 10, "the tracker to see node 20:30 leave")
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(model="smollm2", messages=QUESTION, max_tokens=4)
    assert caught.value.status_code == 503 and caught.value.body["code"] == "swarm_unavailable"
    assert "does not cover smollm2" in caught.value.body["message"]
