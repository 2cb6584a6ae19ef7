"""``POST /v1/embeddings`` through the official ``openai`` package, against one real portal (daphne) whose
tracker lists two real MiniLM nodes (0:3, 3:6): the vectors equal local ``transformers``' (mean-pooled,
normalised, max abs diff <= 1e-5), the input tokens are charged, and what a stranger with an API key can
send (huge lists, huge strings, token ids, a decoder's or an unknown model's name, no credits) gets a clear
OpenAI-shaped error while the portal keeps answering."""

from __future__ import annotations

import json
import os
import urllib.request

import openai
import pytest
import torch
from transformers import AutoModel, AutoTokenizer

from portal.processes import live_portal, manage
from swarmnode.launcher import LocalSwarm
from swarmnode.models import resolve_model
from swarmnode.testing.polling import wait_until
from swarmnode.testing.sentences import SENTENCES

pytestmark = [pytest.mark.slow, pytest.mark.model]


def _get(url: str, key: str | None = None) -> dict:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10) as r:
        return json.loads(r.read())


SETUP = """
import json
from django.contrib.auth.models import User
from portal.accounts.models import ApiKey, NodeToken
from portal.ledger.books import deposit
from portal.swarm.catalogue import catalogue_model

catalogue_model("minilm", "wheel", "minilm")
catalogue_model("smollm2", "wheel", "smollm2")  # a decoder: /v1/embeddings refuses it
out = {}
for name, credits in (("volunteer", 0), ("reader", 1_000_000), ("pauper", 0)):
    user = User.objects.create_user(name, password=name + "-password-1")
    if credits:
        deposit(user, credits, "embedding-tests")
    out[name] = ApiKey.create_for(user, "tests")[1]
out["node_token"] = NodeToken.create_for(User.objects.get(username="volunteer"), "tests")[1]
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def portal(tmp_path_factory):
    folder = tmp_path_factory.mktemp("embeddings")
    resolve_model("minilm")  # fetched by `make model`
    with live_portal(folder, f"layerswarm_embeddings_{os.getpid()}", celery=False) as portal:
        made = json.loads(manage(["shell", "-c", SETUP], portal.env).stdout.strip().splitlines()[-1])  # one process
        args = ["--portal", portal.url, "--token", made["node_token"]]
        with LocalSwarm("minilm", 6, 2, extra_args=args, log_dir=folder):
            covered = lambda: {m["model"]: m["covered"] for m in _get(f"{portal.url}/api/v1/swarm/health/")["models"]}  # noqa: E731
            wait_until(lambda: covered().get("minilm") is True, 90, "minilm covered")
            portal.key, portal.pauper = made["reader"], made["pauper"]
            yield portal


@pytest.fixture(scope="module")
def client(portal) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{portal.url}/v1", api_key=portal.key, max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def local():
    path = resolve_model("minilm")
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path, dtype=torch.float32).eval()

    def embed(text: str) -> tuple[torch.Tensor, int]:
        batch = tokenizer([text], return_tensors="pt")
        with torch.inference_mode():
            vector = torch.nn.functional.normalize(model(**batch).last_hidden_state.mean(dim=1), dim=1)[0]
        return vector, batch["input_ids"].shape[1]

    return embed


def test_eight_sentences_embed_as_the_local_model_does_and_their_tokens_are_charged(portal, client, local):
    before = _get(f"{portal.url}/api/v1/ledger/balance/", portal.key)["tokens_affordable"]
    result = client.embeddings.create(model="minilm", input=SENTENCES)  # the SDK asks for base64
    expected = [local(s) for s in SENTENCES]
    assert [d.index for d in result.data] == list(range(8))
    got = torch.tensor([d.embedding for d in result.data])
    assert got.shape == (8, 384)
    assert (got - torch.stack([v for v, _ in expected])).abs().max().item() <= 1e-5
    tokens = sum(n for _, n in expected)
    assert result.usage.prompt_tokens == result.usage.total_tokens == tokens
    assert result.model == "minilm"
    after = _get(f"{portal.url}/api/v1/ledger/balance/", portal.key)["tokens_affordable"]
    assert before - after == tokens


def test_one_string_as_floats(client, local):
    result = client.embeddings.create(model="minilm", input="The cat sat on the mat.", encoding_format="float")
    vector, n = local("The cat sat on the mat.")
    assert len(result.data) == 1 and result.usage.prompt_tokens == n
    assert (torch.tensor(result.data[0].embedding) - vector).abs().max().item() <= 1e-5


@pytest.mark.parametrize(
    "kwargs, error, code",
    [
        (dict(model="no-such-model", input="hi"), openai.NotFoundError, "model_not_found"),
        (dict(model="smollm2", input="hi"), openai.BadRequestError, "model_not_embedding"),  # a decoder
        (dict(model="minilm", input=["hi"] * 300), openai.BadRequestError, "invalid_value"),  # too many inputs
        (dict(model="minilm", input="word " * 400), openai.BadRequestError, "context_length_exceeded"),
        (dict(model="minilm", input=["fine", "word " * 30 * 40]), openai.BadRequestError, "context_length_exceeded"),
        (dict(model="minilm", input=[[1, 2, 3]]), openai.BadRequestError, "unsupported_parameter"),  # token ids
        (dict(model="minilm", input=[]), openai.BadRequestError, "invalid_value"),
        (dict(model="minilm", input=["ok", ""]), openai.BadRequestError, "invalid_value"),
        (dict(model="minilm", input="hi", dimensions=64), openai.BadRequestError, "invalid_value"),
        (dict(model="minilm", input="hi", encoding_format="int8"), openai.BadRequestError, "invalid_value"),
        (dict(model="minilm", input="x" * 300_000), openai.APIStatusError, "payload_too_large"),  # 413
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_a_strangers_bad_requests_get_clear_errors(portal, client, kwargs, error, code):
    before = _get(f"{portal.url}/api/v1/ledger/balance/", portal.key)["tokens_affordable"]
    with pytest.raises(error) as refused:
        client.embeddings.create(**kwargs)
    assert refused.value.body["code"] == code
    assert refused.value.status_code in (400, 404, 413)
    assert _get(f"{portal.url}/api/v1/ledger/balance/", portal.key)["tokens_affordable"] == before  # nothing charged


def test_no_key_no_credits_no_embeddings(portal, client):
    anonymous = openai.OpenAI(base_url=f"{portal.url}/v1", api_key="lsk_not-a-key", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        anonymous.embeddings.create(model="minilm", input="hi")
    pauper = openai.OpenAI(base_url=f"{portal.url}/v1", api_key=portal.pauper, max_retries=0)
    affordable = _get(f"{portal.url}/api/v1/ledger/balance/", portal.pauper)["tokens_affordable"]  # the starting grant
    assert 0 < affordable < 600
    with pytest.raises(openai.APIStatusError, match="costs .* tokens and your credits pay for") as refused:
        pauper.embeddings.create(model="minilm", input=["word " * 200] * 3)  # each fits; together > affordable
    assert refused.value.status_code == 402 and refused.value.body["code"] == "insufficient_quota"
    assert _get(f"{portal.url}/api/v1/ledger/balance/", portal.pauper)["tokens_affordable"] == affordable
    assert pauper.embeddings.create(model="minilm", input="hi").usage.prompt_tokens == 3  # what it can pay for
    assert len(client.embeddings.create(model="minilm", input="still here").data) == 1  # the portal carries on
