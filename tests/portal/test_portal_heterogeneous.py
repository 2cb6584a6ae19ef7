"""A heterogeneous swarm (#20 item 5): one real portal (daphne, the embedded gateway) and nodes of three catalogued
models at once: SmolLM2, a tiny random-weight Llama with SmolLM2's chat template (a second chat model) and a tiny
random-weight Qwen2 without one (a completion model), the tiny ones catalogued from their checkpoint directories
as an admin would. Everything goes through the same portal and the same gateway pool: the chat page's websocket
answers with the model chosen there, ``/v1/chat/completions`` with SmolLM2, ``/v1/completions`` with the Qwen2
(the official ``openai`` package as the client); greedy answers of the tiny models are exactly local
``transformers``' tokens, so a gateway that answered with another model's weights would fail."""

from __future__ import annotations

import http.cookiejar
import json
import os
import urllib.request
from pathlib import Path

import openai
import pytest
import torch
from websockets.sync.client import connect

from portal.generation.prompts import chat_prompt
from portal.processes import create_user_with_node_token, live_portal, manage
from swarmnode.launcher import LocalSwarm
from swarmnode.models import resolve_model
from swarmnode.testing.polling import wait_until
from tests.swarmnode.conftest import make_tiny_model

pytestmark = [pytest.mark.slow, pytest.mark.model]
CHAT, BASE = "tiny-llama", "tiny-qwen2"  # their directories' names: what their nodes announce
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def _coverage(url: str) -> dict[str, bool]:
    with urllib.request.urlopen(f"{url}/api/v1/swarm/health/", timeout=10) as r:
        return {m["model"]: m["covered"] for m in json.loads(r.read())["models"]}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hetero")
    models = {
        CHAT: make_tiny_model("llama", root / CHAT, resolve_model("smollm2")),  # with SmolLM2's chat template
        BASE: make_tiny_model("qwen2", root / BASE, resolve_model("smollm2")),
    }
    (models[BASE] / "chat_template.jinja").unlink(missing_ok=True)  # a base model: completions only
    return models


@pytest.fixture(scope="module")
def portal(tmp_path_factory, tiny):
    folder = tmp_path_factory.mktemp("heterogeneous")
    with live_portal(folder, f"layerswarm_hetero_{os.getpid()}", celery=False) as portal:
        code = "from portal.swarm.catalogue import catalogue_model\n"
        code += "".join(f"catalogue_model({name!r}, 'directory', {str(path)!r})\n" for name, path in tiny.items())
        manage(["shell", "-c", code], portal.env)
        token = create_user_with_node_token(portal.env, "volunteer", "volunteer-password-1")
        args = ["--backend", "torch", "--portal", portal.url, "--token", token]
        args += ["--machine-lock", str(folder / "compute.lock")]  # every model's nodes take turns on the cores
        # Few processes on a shared machine: SmolLM2 and the tiny chat model whole on one node each.
        swarms = [
            LocalSwarm("smollm2", 30, 1, extra_args=args, log_dir=folder),
            LocalSwarm(str(tiny[CHAT]), 6, 1, extra_args=args, log_dir=folder),
            LocalSwarm(str(tiny[BASE]), 6, 2, extra_args=args, log_dir=folder),
        ]
        try:
            for swarm in swarms:
                swarm.start()
            every = {"smollm2": True, CHAT: True, BASE: True}
            wait_until(lambda: _coverage(portal.url) == every, 90, "every model covered")
            portal.key = manage(["create_api_key", "volunteer"], portal.env).stdout.strip().splitlines()[-1]
            manage(
                ["shell", "-c", "from django.contrib.auth.models import User; from portal.ledger.books import deposit; "
                 "deposit(User.objects.get(username='volunteer'), 1_000_000, 'hetero-tests')"],
                portal.env,
            )  # fmt: skip
            yield portal
        finally:
            for swarm in swarms:
                swarm.stop()


@pytest.fixture(scope="module")
def client(portal) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{portal.url}/v1", api_key=portal.key, max_retries=0, timeout=120)


def _local_greedy(path: Path, ids: list[int], n: int) -> str:
    """Greedy tokens of local ``transformers`` (whole forward each step), stopping at the tokenizer's EOS."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    new: list[int] = []
    with torch.inference_mode():
        for _ in range(n):
            token = int(model(torch.tensor([ids + new])).logits[0, -1].argmax())
            if token == tokenizer.eos_token_id:
                break
            new.append(token)
    return tokenizer.decode(new, skip_special_tokens=True)


def _chat_page_answer(url: str, model: str, question: str, n: int) -> dict:
    """Ask ``question`` on the chat page's websocket (an anonymous visitor's session) with ``model`` chosen."""
    jar = http.cookiejar.CookieJar()
    urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar)).open(f"{url}/chat/", timeout=30).read()
    session = next(c.value for c in jar if c.name == "sessionid")
    ws_url = url.replace("http://", "ws://") + "/ws/chat/"
    headers = {"Cookie": f"sessionid={session}", "Origin": url}
    with connect(ws_url, additional_headers=headers, open_timeout=30) as ws:
        ws.send(json.dumps({"type": "send", "conversation": None, "content": question, "model": model,
                            "settings": {"temperature": 0, "max_new_tokens": n}}))  # fmt: skip
        while (event := json.loads(ws.recv(timeout=120)))["type"] not in ("done", "error"):
            pass
    assert event["type"] == "done", event
    return event["message"]


def test_one_portal_serves_models_of_every_kind_side_by_side(portal, client, tiny):
    listed = {m.id: (m.model_extra["kind"], m.model_extra["covered"]) for m in client.models.list()}
    assert listed == {"smollm2": ("chat", True), CHAT: ("chat", True), BASE: ("completion", True)}

    # The chat page with the second chat model chosen: its own chat template, its own weights.
    answer = _chat_page_answer(portal.url, CHAT, QUESTION[0]["content"], 8)
    from transformers import AutoTokenizer

    ids = chat_prompt(AutoTokenizer.from_pretrained(tiny[CHAT]), QUESTION, 8, 512).ids
    assert answer["content"] == _local_greedy(tiny[CHAT], ids, 8) and answer["content"]

    chat = client.chat.completions.create(model="smollm2", messages=QUESTION, max_tokens=12, temperature=0)
    assert "Paris" in chat.choices[0].message.content

    prompt = "The capital of France is"
    completion = client.completions.create(model=BASE, prompt=prompt, max_tokens=8, temperature=0)
    ids = AutoTokenizer.from_pretrained(tiny[BASE])(prompt)["input_ids"]
    assert completion.choices[0].text == _local_greedy(tiny[BASE], ids, 8)
    assert completion.model == BASE and completion.usage.completion_tokens > 0

    # SmolLM2 again after the others: the gateway's pool keeps every model's client parts loaded side by side.
    again = client.chat.completions.create(model="smollm2", messages=QUESTION, max_tokens=12, temperature=0)
    assert again.choices[0].message.content == chat.choices[0].message.content

    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model=BASE, messages=[{"role": "user", "content": "hi"}], max_tokens=4)
    assert refused.value.body["code"] == "model_not_chat"
