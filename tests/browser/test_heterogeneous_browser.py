"""The heterogeneous demo of #20 in a real browser: one portal serving SmolLM2 (chat), Gemma 3 270M (a base
model) and all-MiniLM-L6-v2 (an encoder), each catalogued from its wheel, through real nodes of all three at
once. In chromium the health map shows the three with their kinds, the chat's model selector offers SmolLM2
only (Gemma has no chat template, MiniLM generates no text) and a question is answered by SmolLM2; from the
same portal, ``/v1/completions`` answers with Gemma 3 270M exactly local ``transformers``' greedy tokens and
``/v1/embeddings`` with MiniLM local ``transformers``' vectors (the official ``openai`` package as the client)."""

from __future__ import annotations

import json
import os
import urllib.request

import openai
import pytest
import torch

from portal.processes import create_user_with_node_token, live_portal, manage
from swarmnode.launcher import LocalSwarm
from swarmnode.models import resolve_model
from swarmnode.testing.polling import wait_until

pytestmark = [pytest.mark.slow, pytest.mark.model]
PASSWORD = "dora-password-1"
PROMPT = "The capital of France is"


def _coverage(url: str) -> dict[str, bool]:
    with urllib.request.urlopen(f"{url}/api/v1/swarm/health/", timeout=10) as r:
        return {m["model"]: m["covered"] for m in json.loads(r.read())["models"]}


@pytest.fixture(scope="module")
def gemma3_dir():
    try:
        resolve_model("minilm", fetch=False)
        return resolve_model("gemma3-270m", fetch=False)
    except (FileNotFoundError, KeyError):
        pytest.skip("Gemma 3 270M or MiniLM is not fetched: run `make model`")


@pytest.fixture(scope="module")
def portal(tmp_path_factory, gemma3_dir):
    folder = tmp_path_factory.mktemp("hetero-browser")
    with live_portal(folder, f"layerswarm_hetero_browser_{os.getpid()}", celery=False) as portal:
        code = "from portal.swarm.catalogue import catalogue_model; "
        code += "catalogue_model('gemma3-270m', 'wheel'); catalogue_model('minilm', 'wheel')"
        manage(["shell", "-c", code], portal.env)
        token = create_user_with_node_token(portal.env, "dora", PASSWORD)
        code = "from django.contrib.auth.models import User; from portal.ledger.books import deposit; "
        code += "deposit(User.objects.get(username='dora'), 1_000_000, 'hetero-browser-tests')"
        manage(["shell", "-c", code], portal.env)
        args = ["--backend", "torch", "--portal", portal.url, "--token", token]
        args += ["--machine-lock", str(folder / "compute.lock")]  # every node takes turns on the cores
        # SmolLM2 and MiniLM whole on one node each, Gemma split over two: few processes on a shared machine.
        spans = (("smollm2", 30, 1), ("gemma3-270m", 18, 2), ("minilm", 6, 1))
        swarms = [LocalSwarm(m, blocks, n, extra_args=args, log_dir=folder) for m, blocks, n in spans]
        try:
            for swarm in swarms:
                swarm.start()
            every = {"smollm2": True, "gemma3-270m": True, "minilm": True}
            wait_until(lambda: _coverage(portal.url) == every, 120, "every model covered")
            portal.key = manage(["create_api_key", "dora"], portal.env).stdout.strip().splitlines()[-1]
            yield portal
        finally:
            for swarm in swarms:
                swarm.stop()


def _local_greedy(path, prompt: str, n: int) -> str:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    ids = tokenizer(prompt, return_tensors="pt")["input_ids"]  # with <bos>, as the portal sends a plain prompt
    out = model.generate(ids, max_new_tokens=n, do_sample=False, top_k=None, top_p=None)
    return tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)


def test_chat_with_smollm2_in_the_browser_while_gemma_completes_and_minilm_embeds(portal, browser, gemma3_dir):
    context = browser.new_context()
    try:
        page = context.new_page()
        page.set_default_timeout(30_000)
        page.goto(f"{portal.url}/accounts/login/?next=/chat/")
        page.fill("#id_username", "dora")
        page.fill("#id_password", PASSWORD)
        page.click("#login-form button[type=submit]")
        page.wait_for_url(f"{portal.url}/chat/")
        page.wait_for_selector('#chat-status[data-live="true"]')
        offered = page.eval_on_selector_all("#model option", "os => os.map(o => [o.value, o.disabled])")
        assert offered == [["smollm2", False]]  # Gemma 3 270M and MiniLM are served, but cannot chat
        page.goto(f"{portal.url}/swarm/")  # the health map lists all three, each with its kind, every block covered
        for model, kind in (("smollm2", "chat"), ("gemma3-270m", "completion"), ("minilm", "embedding")):
            section = page.locator(f'section.model-health[data-model="{model}"]')
            assert section.locator("small").get_attribute("data-kind") == kind
            assert section.locator(".banner").get_attribute("data-covered") == "true"
        page.goto(f"{portal.url}/chat/")
        page.wait_for_selector('#chat-status[data-live="true"]')
        page.click(".chat-settings summary")
        page.fill("#temperature", "0")
        page.fill("#chat-input", "What is the capital of France?")
        page.click("#send")
        page.wait_for_selector(".turn.assistant[data-finish]", timeout=90_000)
        assert "Paris" in page.inner_text(".turn.assistant .body")
    finally:
        context.close()

    client = openai.OpenAI(base_url=f"{portal.url}/v1", api_key=portal.key, max_retries=0, timeout=180)
    kinds = {"gemma3-270m": "completion", "minilm": "embedding", "smollm2": "chat"}
    assert {m.id: m.model_extra["kind"] for m in client.models.list()} == kinds
    completion = client.completions.create(model="gemma3-270m", prompt=PROMPT, max_tokens=8, temperature=0)
    assert completion.choices[0].text == _local_greedy(gemma3_dir, PROMPT, 8)
    assert "capital" in completion.choices[0].text  # " the capital of the country of France" (FACTS.md)

    sentences = ["The capital of France is Paris.", "Embeddings map sentences to vectors."]
    vectors = torch.tensor([e.embedding for e in client.embeddings.create(model="minilm", input=sentences).data])
    assert (vectors - _local_embeddings(resolve_model("minilm", fetch=False), sentences)).abs().max() <= 1e-5


def _local_embeddings(path, sentences: list[str]) -> torch.Tensor:
    """Mean-pooled, normalised sentence embeddings of local ``transformers`` (one sentence at a time: no padding)."""
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path, dtype=torch.float32).eval()
    with torch.inference_mode():
        rows = [model(**tokenizer([s], return_tensors="pt")).last_hidden_state.mean(dim=1)[0] for s in sentences]
    return torch.nn.functional.normalize(torch.stack(rows), dim=1)
