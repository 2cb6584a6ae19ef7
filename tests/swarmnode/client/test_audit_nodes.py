"""Auditing with real node processes: a node that perturbs its outputs (``serve --corrupt-fraction``) is
caught, routed around, and in verified mode never changes a token the user sees (spec §11)."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from swarmnode.client import AuditPolicy, AutoDistributedModelForCausalLM, RemoteSpan
from swarmnode.client.routing import RoutingPolicy
from swarmnode.client.session import InferenceSession
from swarmnode.launcher import start_node
from swarmnode.protocol import Forward, OpenSession, Step, tensor_from_numpy
from swarmnode.trust.attestation import signed_result

pytestmark = pytest.mark.slow

ARGS = ["--backend", "torch", "--no-measure", "--num-threads", "1"]
PROMPT = torch.tensor([[1, 504, 3290, 314, 2683, 30, 1012, 17]])


@pytest.fixture(scope="module")
def swarm(tiny_models, tmp_path_factory):
    """Tiny llama: two honest nodes for 0:3; for 3:6 a corrupt node and two honest ones (so that blocks 3:6
    can still be audited once the corrupt node is gone)."""
    logs = tmp_path_factory.mktemp("audit-logs")
    model = str(tiny_models["llama"])
    spec = {
        "a0": ("0:3", []),
        "a1": ("0:3", []),
        "bad": ("3:6", ["--corrupt-fraction", "1.0"]),
        "b1": ("3:6", []),
        "b2": ("3:6", []),
    }
    nodes = {}
    try:
        for name, (blocks, extra) in spec.items():
            nodes[name] = start_node(model, blocks, extra_args=ARGS + extra, log_path=logs / f"{name}.log")
        yield nodes
    finally:
        for n in nodes.values():
            n.process.kill()
            n.process.wait()


@pytest.fixture(scope="module")
def infos(swarm):
    out = {}
    for name, node in swarm.items():
        span = RemoteSpan(node.url)
        out[name] = span.info()
        span.close()
    return out


@pytest.fixture(scope="module")
def local(tiny_models):
    return AutoModelForCausalLM.from_pretrained(tiny_models["llama"], dtype=torch.float32).eval()


def _hidden(seed: int, tokens: int) -> torch.Tensor:
    return torch.randn(1, tokens, 64, generator=torch.Generator().manual_seed(seed))


def test_it_signs_every_step_and_forward_with_the_announced_key(swarm, infos):
    """§11.2."""
    span = RemoteSpan(swarm["a0"].url)
    try:
        span.request(OpenSession(session_id="signed", max_length=16))
        x = tensor_from_numpy(_hidden(0, 3).numpy())
        step = span.request(Step(session_id="signed", position=0, hidden=x))
        assert signed_result("step", "signed", 0, (0, 3), x, step.hidden, step.signature).verify(infos["a0"].public_key)
        fwd = span.request(Forward(hidden=x))
        assert signed_result("forward", "", 0, (0, 3), x, fwd.hidden, fwd.signature).verify(infos["a0"].public_key)
        assert not signed_result("step", "signed", 0, (0, 3), x, step.hidden, step.signature).verify(
            infos["a1"].public_key
        )
        # A client that checks no signatures asks for none; the result is the same, unsigned.
        y = tensor_from_numpy(_hidden(1, 1).numpy())
        quick = span.request(Step(session_id="signed", position=3, hidden=y, skip_signature=True))
        assert quick.signature == "" and quick.position == 4
    finally:
        span.close()


def test_a_session_asks_for_signatures_only_when_it_audits(swarm, infos):
    sent = []
    for audit in (None, AuditPolicy(rate=0.5, seed=1)):
        session = InferenceSession(
            [infos["a0"], infos["b1"]], 8, audit=audit, peers=[p for k, p in infos.items() if k != "bad"]
        )
        span = session._hops[0].span
        request = span.request
        span.request = lambda m, timeout=None, request=request: sent.append(m) or request(m, timeout)
        try:
            session.step(_hidden(2, 1))
        finally:
            del span.request  # the connection goes back to the pool: the next session gets it unwatched
            session.close()
        assert [m.skip_signature for m in sent if isinstance(m, Step)] == [audit is None]
        sent.clear()


def test_it_keeps_the_corrupt_flag_out_of_sight(swarm, infos):
    import subprocess
    import sys

    helptext = subprocess.run([sys.executable, "-m", "swarmnode", "serve", "--help"], capture_output=True, text=True)
    assert "corrupt" not in helptext.stdout
    assert infos["bad"].public_key and infos["bad"].throughput == infos["b1"].throughput  # looks like any node


def test_it_catches_the_corrupt_node_in_sample_mode_and_goes_on_correctly(infos):
    peers = list(infos.values())
    evidence = []
    policy = AuditPolicy(rate=0.05, seed=3)
    with (
        InferenceSession(
            [infos["a0"], infos["bad"]], 256, peers=peers, num_blocks=6, audit=policy, on_evidence=evidence.append
        ) as audited,
        InferenceSession([infos["a1"], infos["b1"]], 256, peers=peers, num_blocks=6) as clean,
    ):
        audited.step(_hidden(0, 8))
        clean.step(_hidden(0, 8))
        for i in range(1, 100):
            got = audited.step(_hidden(i, 1))
            want = clean.step(_hidden(i, 1))
        stats = audited.audit_stats
        assert stats.first_detection_step is not None and stats.first_detection_step <= policy.max_gap
        assert stats.caught == [infos["bad"].url] and infos["bad"].url in audited.distrusted
        assert infos["bad"].url not in [p.url for p in audited.chain]
        assert torch.equal(got, want)  # rebuilt from the inputs: bit-identical to a run that never met it
    failed = [e for e in evidence if not e.passed]
    assert len(failed) == 1 and failed[0].node.url == infos["bad"].url
    assert failed[0].claim.verify(infos["bad"].public_key)  # attributable: the node signed the bad output
    assert failed[0].reference.verify(failed[0].auditor.public_key) and failed[0].auditor.url != infos["bad"].url
    assert failed[0].relative_error > failed[0].tolerance
    assert all(e.passed for e in evidence if e.node.url != infos["bad"].url)


def test_it_lets_no_perturbed_token_reach_the_user_in_verified_mode(swarm, tiny_models, local):
    expected = local.generate(PROMPT, max_new_tokens=24, do_sample=False, eos_token_id=None, pad_token_id=0)

    def through_bad_node(audit):
        remote = AutoDistributedModelForCausalLM.from_pretrained(
            str(tiny_models["llama"]),
            peers=[n.url for n in swarm.values()],
            audit=audit,
            routing=RoutingPolicy(rtt_weight=0.0),  # equal costs (no RTT noise): the first node listed wins
        )
        remote.peers.sort(key=lambda p: p.url != swarm["bad"].url)
        assert swarm["bad"].url in [p.url for p in remote.chain()]
        return remote

    unaudited = through_bad_node(None)
    assert unaudited.generate(PROMPT, max_new_tokens=24, do_sample=False, eos_token_id=None).tolist() != (
        expected.tolist()
    )  # the perturbation does change what users would see

    verified = through_bad_node(AuditPolicy(rate=0.2, mode="verified", seed=5))
    released = []
    for token in verified.stream(PROMPT, max_new_tokens=24, do_sample=False, eos_token_id=None):
        released.append(int(token[0]))
    assert released == expected[0, PROMPT.shape[1] :].tolist()
    stats = verified.last_stats.audits
    assert stats.failed == 1 and stats.rollbacks == 1 and swarm["bad"].url in verified.distrusted
