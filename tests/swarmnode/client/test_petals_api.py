"""Petals code runs on Layerswarm with only its import changed (issue #22, item 5).

The examples below are Petals' own (its README and its multi-turn chatbot example); each test runs
the text with ``from petals import`` replaced by ``from swarmnode.client import`` and lists every
other edit it makes. The client finds the nodes as Petals' finds its swarm without arguments: here
through ``$LAYERSWARM_INITIAL_PEERS`` (or ``initial_peers=[...]``, as in Petals).
"""

import textwrap

import pytest
import torch
from transformers import AutoModelForCausalLM

from swarmnode.client import AutoDistributedModelForCausalLM
from swarmnode.client.parts import INITIAL_PEERS_ENV, split_peers
from swarmnode.launcher import start_node

PETALS_README = """
from transformers import AutoTokenizer
from petals import AutoDistributedModelForCausalLM

# Connect to a distributed network hosting model layers
tokenizer = AutoTokenizer.from_pretrained(model_name)
model = AutoDistributedModelForCausalLM.from_pretrained(model_name)

# Run the model as if it were on your computer
inputs = tokenizer("A cat sat", return_tensors="pt")["input_ids"]
outputs = model.generate(inputs, max_new_tokens=5)
print(tokenizer.decode(outputs[0]))  # A cat sat on a mat...
"""

PETALS_CHATBOT = """
from transformers import AutoTokenizer
from petals import AutoDistributedModelForCausalLM

tokenizer = AutoTokenizer.from_pretrained(model_name)
model = AutoDistributedModelForCausalLM.from_pretrained(model_name)
fake_token = tokenizer("^")["input_ids"][0]  # Workaround to make tokenizer.decode() keep leading spaces

with model.inference_session(max_length=512) as sess:
    while True:
        prompt = input('Human: ')
        if prompt == "":
            break
        prefix = f"Human: {prompt}\\nFriendly AI:"
        prefix = tokenizer(prefix, return_tensors="pt")["input_ids"].cuda()
        print("Friendly AI:", end="", flush=True)

        while True:
            outputs = model.generate(prefix, max_new_tokens=1, session=sess,
                                     do_sample=True, temperature=0.9, top_p=0.6)
            outputs = tokenizer.decode([fake_token, outputs[0, -1].item()])[1:]
            print(outputs, end="", flush=True)
            if "\\n" in outputs or "</s>" in outputs:
                break
            prefix = None  # Prefix is passed only for the 1st token of the bot's response
"""

TURNS = ["Hi there", "What is a cat?"]
ANSWER_TOKENS = 6  # the inner loop stops at a newline; a random-weight model writes none, so it is bounded


def ported(source: str, *edits: tuple[str, str]) -> str:
    """Petals ``source`` with its import changed, and ``edits`` (each must apply) made."""
    edits = (("from petals import", "from swarmnode.client import"), *edits)
    for old, new in edits:
        assert old in source, old
        source = source.replace(old, new)
    return source


def run_example(source: str, model_name: str, inputs: list[str] | None = None) -> dict:
    """Execute an example; ``input()`` answers from ``inputs``, then with "" (the chatbot's exit)."""
    answers = iter(inputs or [])
    scope = {"model_name": model_name, "input": lambda _prompt="": next(answers, "")}
    exec(compile(textwrap.dedent(source), "<petals example>", "exec"), scope)
    return scope


@pytest.fixture(scope="module")
def nodes(tiny_models, tmp_path_factory):
    logs = tmp_path_factory.mktemp("petals-api-logs")
    started = [
        start_node(str(tiny_models["llama"]), b, extra_args=["--backend", "torch"], log_path=logs / f"{b}.log")
        for b in ("0:4", "4:6")
    ]
    yield started
    for n in started:
        n.process.kill()
        n.process.wait()


@pytest.fixture
def swarm_env(nodes, monkeypatch):
    monkeypatch.setenv(INITIAL_PEERS_ENV, ",".join(n.url for n in nodes))


@pytest.fixture(scope="module")
def local(tiny_models):
    return AutoModelForCausalLM.from_pretrained(tiny_models["llama"], dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def remote(nodes, tiny_models):
    return AutoDistributedModelForCausalLM.from_pretrained(
        str(tiny_models["llama"]), initial_peers=[n.url for n in nodes]
    )


def test_it_runs_the_petals_readme_example_unchanged_but_for_the_import(swarm_env, tiny_models, local, capsys):
    scope = run_example(ported(PETALS_README), str(tiny_models["llama"]))
    expected = local.generate(scope["inputs"], max_new_tokens=5, do_sample=False)
    assert scope["outputs"].tolist() == expected.tolist()
    assert scope["outputs"].shape[1] > scope["inputs"].shape[1]
    assert capsys.readouterr().out.startswith("A cat sat")


def greedy_chat_reference(local, tokenizer) -> list[int]:
    """What local ``transformers`` answers, greedily, in the chatbot's conversation: every turn's prompt
    follows the whole conversation so far."""
    ids = torch.empty((1, 0), dtype=torch.long)
    for turn in TURNS:
        prefix = tokenizer(f"Human: {turn}\nFriendly AI:", return_tensors="pt")["input_ids"]
        ids = torch.cat([ids, prefix], dim=1)
        ids = local.generate(ids, max_new_tokens=ANSWER_TOKENS, do_sample=False, eos_token_id=None, pad_token_id=0)
    return ids[0].tolist()


def test_the_petals_chatbot_keeps_one_session_and_sends_only_new_tokens(swarm_env, tiny_models, local, capsys):
    greedy = ("do_sample=True, temperature=0.9, top_p=0.6", "do_sample=False, eos_token_id=None")
    source = ported(
        PETALS_CHATBOT,
        (".cuda()", ""),  # no GPU on this machine
        ("        while True:\n            outputs", f"        for _ in range({ANSWER_TOKENS}):\n            outputs"),
        greedy,  # exact parity needs greedy decoding; the sampling version runs in the next test
    )
    scope = run_example(source, str(tiny_models["llama"]), TURNS)
    sess, tokenizer = scope["sess"], scope["tokenizer"]
    conversation = sess.output_ids[0].tolist()
    assert conversation == greedy_chat_reference(local, tokenizer)
    # Each node ran every position once (the last token is chosen, never run): no prefix was sent again.
    assert sess.position == len(conversation) - 1
    served = [hop.served for hop in sess.hop_sessions]
    assert served == [len(conversation) - 1] * 2, served
    assert sess.steps == len(TURNS) * ANSWER_TOKENS  # one step per generate call
    printed = capsys.readouterr().out
    assert printed.count("Friendly AI:") == len(TURNS)


def test_the_petals_chatbot_samples_as_written(swarm_env, tiny_models):
    torch.manual_seed(0)
    source = ported(
        PETALS_CHATBOT,
        (".cuda()", ""),
        ("        while True:\n            outputs", f"        for _ in range({ANSWER_TOKENS}):\n            outputs"),
    )
    sess = run_example(source, str(tiny_models["llama"]), TURNS)["sess"]
    assert sess.position == sess.output_ids.shape[1] - 1
    assert [hop.served for hop in sess.hop_sessions] == [sess.position] * 2


def test_generate_inside_a_session_block_continues_it(remote, local):
    first = torch.tensor([[1, 504, 3290, 314, 2683]])
    second = torch.tensor([[30, 1012, 17]])
    with remote.inference_session(max_length=64) as sess:
        out1 = remote.generate(first, max_new_tokens=4, eos_token_id=None)  # no session=: the block's
        out2 = remote.generate(second, max_new_tokens=5, eos_token_id=None)
        out3 = remote.generate(None, session=sess, max_new_tokens=2, eos_token_id=None)
    assert out1[:, :5].tolist() == first.tolist() and out1.shape[1] == 9
    assert out2[:, :3].tolist() == second.tolist() and out2.shape[1] == 8  # Petals: from the new tokens on
    assert out3.shape[1] == 2
    whole = torch.cat([out1, out2, out3], dim=1)
    expected = local.generate(torch.cat([out1, second], dim=1), max_new_tokens=7, do_sample=False, eos_token_id=None)
    assert whole.tolist() == expected.tolist()
    assert [hop.served for hop in sess.hop_sessions] == [whole.shape[1] - 1] * 2


def test_a_generation_outside_any_block_opens_its_own_session(remote):
    with remote.inference_session(max_length=16) as sess:
        pass
    out = remote.generate(torch.tensor([[1, 2, 3]]), max_new_tokens=2, eos_token_id=None)
    assert out.shape == (1, 5) and sess.output_ids is None


def test_a_session_refuses_what_it_cannot_hold(remote):
    with pytest.raises(ValueError, match="max_length"):
        with remote.inference_session(max_length=10**7):
            pass
    with remote.inference_session(max_length=8) as sess:
        with pytest.raises(ValueError, match="exceeds"):
            remote.generate(torch.tensor([[1, 2, 3, 4]]), max_new_tokens=8, session=sess)
        remote.generate(torch.tensor([[1, 2, 3, 4]]), max_new_tokens=5, session=sess, eos_token_id=None)
        assert sess.position == 8
        with pytest.raises(ValueError, match="exceeds"):
            remote.generate(None, max_new_tokens=1, session=sess)
        with pytest.raises(ValueError, match="sequences"):
            remote.generate(torch.tensor([[1], [2]]), max_new_tokens=1, session=sess)
    with pytest.raises(ValueError, match="input_ids"):
        remote.generate(None, max_new_tokens=1)


def test_petals_parts_compute_what_the_whole_model_does(remote, local):
    """Petals' own test (test_full_model.py), step by step through ``transformer.h``'s session."""
    config = remote.config
    assert len(remote.transformer.h) == config.num_hidden_layers
    assert remote.model is remote.transformer and remote.lm_head is remote.get_output_embeddings()
    test_inputs = torch.tensor([[1, 504, 3290, 314, 2683, 30, 1012, 17, 88, 901, 55]])
    with torch.inference_mode():
        parallel_outputs = remote(test_inputs)
        embs = remote.transformer.word_embeddings(test_inputs)
        embs = remote.transformer.word_embeddings_layernorm(embs)
        recurrent_outputs = []
        with remote.transformer.h.inference_session(max_length=embs.shape[1]) as sess:
            recurrent_outputs.append(sess.step(torch.empty(1, 0, config.hidden_size)))
            for t in range(embs.shape[1]):
                if t == 4:
                    recurrent_outputs.append(sess.step(embs[:, 4:9, :]))
                elif 4 < t < 9:
                    continue
                else:
                    recurrent_outputs.append(sess.step(embs[:, t : t + 1, :]))
        recurrent_outputs = torch.cat(recurrent_outputs, dim=1)
        recurrent_outputs = remote.lm_head(remote.transformer.ln_f(recurrent_outputs))
        reference = local(test_inputs).logits
        through_h = remote.lm_head(remote.transformer.ln_f(remote.transformer.h(embs)))
    torch.testing.assert_close(recurrent_outputs, parallel_outputs, rtol=0, atol=3e-3)
    torch.testing.assert_close(parallel_outputs, reference, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(through_h, reference, rtol=1e-5, atol=1e-5)


def test_initial_peers_name_nodes_and_a_portal(monkeypatch):
    nodes = ["ws://10.0.0.1:7000/layerswarm/v1", "wss://n.example/layerswarm/v1"]
    assert split_peers([*nodes, "https://portal.example/"], None) == (nodes, "https://portal.example")
    assert split_peers(nodes, "http://mine:8000") == (nodes, "http://mine:8000")
    monkeypatch.setenv(INITIAL_PEERS_ENV, " ws://a:1/x ,http://p:8000  ")
    assert split_peers([], None) == (["ws://a:1/x"], "http://p:8000")
    assert split_peers([], None, use_env=False) == ([], None)
    assert split_peers([], "http://q") == ([], "http://q")  # a portal given: the variable is not read
    with pytest.raises(ValueError, match="neither"):
        split_peers(["/ip4/1.2.3.4/tcp/31337/p2p/QmXyz"], None)  # a Petals multiaddr
    with pytest.raises(ValueError, match="portals"):
        split_peers(["http://a", "http://b"], None)


def test_from_pretrained_without_any_peers_says_how_to_give_them(tiny_models, monkeypatch):
    monkeypatch.delenv(INITIAL_PEERS_ENV, raising=False)
    with pytest.raises(ValueError, match=INITIAL_PEERS_ENV):
        AutoDistributedModelForCausalLM.from_pretrained(str(tiny_models["llama"]))
