"""The in-page node in headless chromium: the span it runs with onnxruntime-web gives the Python ONNX span's
outputs through the wire protocol (spec §4), bad frames get error replies (§5) and never stop it, and a span
file that does not match its SHA-256 is refused with a visible error."""

from __future__ import annotations

import base64
import urllib.request

import msgpack
import numpy as np
import pytest
import torch

from swarmnode.protocol import Error, Info, OpenSession, Step, StepResult, decode, encode, tensor_from_numpy
from swarmnode.protocol.signing import decode_signature, result_digest
from swarmnode.trust.identity import parse_public_key, verify_signature

pytestmark = [pytest.mark.slow, pytest.mark.model]
HIDDEN = 576
# onnxruntime-web (WASM) and native ONNX Runtime run the same graph with different kernels: the documented
# tolerance of a browser span against the Python ONNX span is a max abs difference of 1e-3 on its output.
TOLERANCE = 1e-3

SEND = """async (b64) => {
  const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  const reply = await window.layerswarmNode.handleFrame(bytes, "test-connection");
  let s = "";
  for (let i = 0; i < reply.length; i += 8192) s += String.fromCharCode(...reply.subarray(i, i + 8192));
  return btoa(s);
}"""


@pytest.fixture(scope="module")
def node_page(browser_portal, chromium):
    """A signed-in contribute page whose node loaded blocks 10:20 (without joining the swarm)."""
    context = chromium.new_context()
    page = context.new_page()
    page.set_default_timeout(30_000)
    browser_portal.login(page)
    page.goto(f"{browser_portal.url}/contribute/browser/?nojoin")
    assert page.evaluate("crossOriginIsolated") is True  # COOP + COEP: threads may share memory
    page.fill("#cache-tokens", "4096")
    page.click("#start-node")
    page.wait_for_selector('#node-live[data-state="loaded"], #node-live[data-state="failed"]', timeout=240_000)
    assert page.get_attribute("#node-live", "data-state") == "loaded", page.inner_text("#node-error")
    yield page
    context.close()


@pytest.fixture(scope="module")
def python_span():
    """The same blocks in the Python ONNX Runtime backend, running the same (portable) graph as the browser."""
    from swarmnode.models import Checkpoint, load_span, resolve_model
    from swarmnode.runtime.onnx_backend import OnnxBackend

    span = load_span(Checkpoint(resolve_model("smollm2")), 10, 20, torch.float32, "cpu")
    return OnnxBackend(span, threads=1, fused=False)


def send(page, frame: bytes):
    """One frame to the page's node; its decoded reply."""
    reply = base64.b64decode(page.evaluate(SEND, base64.b64encode(frame).decode()))
    return decode(reply)


def test_it_gives_the_python_onnx_spans_outputs(node_page, python_span):
    rng = np.random.default_rng(7)
    cache = python_span.new_cache()
    node_key = parse_public_key(send(node_page, encode(Info(id=1))).public_key).ed25519
    opened = send(node_page, encode(OpenSession(id=1, session_id="parity", max_length=64)))
    assert opened.TYPE == "session_opened" and opened.cache_tokens_left == 4096 - 64
    position, worst = 0, 0.0
    for request_id, tokens in enumerate([7, 1, 1, 1, 1], start=2):  # a prompt, then decoding steps
        hidden = tensor_from_numpy(rng.standard_normal((1, tokens, HIDDEN), dtype=np.float32))
        reply = send(node_page, encode(Step(id=request_id, session_id="parity", position=position, hidden=hidden)))
        assert isinstance(reply, StepResult), reply
        position += tokens
        assert (reply.id, reply.position, reply.hidden.shape) == (request_id, position, (1, tokens, HIDDEN))
        expected = python_span.step(hidden, cache).to_numpy()
        worst = max(worst, float(np.abs(reply.hidden.to_numpy() - expected).max()))
        digest = result_digest("step", "parity", position - tokens, 10, 20, hidden, reply.hidden)
        assert verify_signature(node_key, decode_signature(reply.signature), digest.to_bytes())  # spec §11
    assert worst < TOLERANCE, f"browser span differs from the Python ONNX span by {worst}"


def test_it_answers_in_the_senders_dtype(node_page, python_span):
    hidden = tensor_from_numpy(np.random.default_rng(8).standard_normal((1, 3, HIDDEN), dtype=np.float32))
    send(node_page, encode(OpenSession(id=1, session_id="half", max_length=8, dtype="float16")))
    half = tensor_from_numpy(hidden.to_numpy().astype(np.float16))
    reply = send(node_page, encode(Step(id=2, session_id="half", position=0, hidden=half)))
    assert reply.hidden.dtype == "float16"
    expected = python_span.step(half, python_span.new_cache()).to_numpy().astype(np.float32)
    assert np.abs(reply.hidden.to_numpy().astype(np.float32) - expected).max() < 0.05  # float16 rounding


def _frame(**fields) -> bytes:
    return msgpack.packb({"v": 1, "id": 9, **fields}, use_bin_type=True)


def test_it_answers_malformed_frames_with_errors_and_keeps_serving(node_page):
    send(node_page, encode(OpenSession(id=1, session_id="bad-input", max_length=16)))
    good = np.ones((1, 1, HIDDEN), np.float32)
    nan = good.copy()
    nan[0, 0, 5] = np.nan
    step = {"type": "step", "session_id": "bad-input", "position": 0}
    cases = {
        b"\xc1\xc1 not msgpack": "bad_frame",
        msgpack.packb([1, 2, 3]): "bad_frame",
        msgpack.packb({"v": 1, "type": "info", "x": msgpack.ExtType(5, b"boom")}): "bad_frame",
        _frame(type="info", v=2): "bad_version",
        _frame(type="launch_missiles"): "unknown_type",
        _frame(type="info", id=True): "bad_field",
        _frame(type="open_session", session_id="", max_length=4): "bad_field",
        _frame(**step, hidden={"dtype": "float32", "shape": [1, 1, HIDDEN], "data": b"\0" * 12}): "bad_tensor",
        _frame(**step, hidden={"dtype": "int64", "shape": [1], "data": b"\0" * 8}): "bad_dtype",
        _frame(**step, hidden={"dtype": "float32", "shape": [1, 10**9, HIDDEN], "data": b""}): "bad_tensor",
        _frame(**step, hidden={"dtype": "float32", "shape": [1, 1, 8], "data": b"\0" * 32}): "wrong_hidden_size",
        _frame(**step, hidden=tensor_from_numpy(nan).to_wire()): "not_finite",
        _frame(**{**step, "position": 3}, hidden=tensor_from_numpy(good).to_wire()): "bad_position",
        _frame(**{**step, "session_id": "nobody"}, hidden=tensor_from_numpy(good).to_wire()): "unknown_session",
        _frame(**step, hidden=tensor_from_numpy(good).to_wire(), push_key="k" * 16, route=["ws://x:1/"]): (
            "unexpected_message"
        ),
        _frame(type="step_result"): "unexpected_message",
    }
    for frame, code in cases.items():
        reply = send(node_page, frame)
        assert isinstance(reply, Error) and reply.code == code, (frame[:40], reply)
    reply = send(node_page, encode(Step(id=3, session_id="bad-input", position=0, hidden=tensor_from_numpy(good))))
    assert isinstance(reply, StepResult) and reply.position == 1  # the failed steps changed nothing (§4.3)
    assert node_page.get_attribute("#node-live", "data-state") == "loaded"


def test_it_refuses_a_tampered_span_file_with_a_visible_error(browser_portal, chromium):
    path = browser_portal.portal_span_path()
    original = path.read_bytes()
    tampered = bytearray(original)
    tampered[len(tampered) // 2] ^= 0xFF  # one flipped byte deep inside the weights
    path.write_bytes(bytes(tampered))
    context = chromium.new_context()  # its own HTTP cache: the good file cannot come from there
    try:
        page = context.new_page()
        browser_portal.login(page)
        page.goto(f"{browser_portal.url}/contribute/browser/?nojoin")
        page.click("#start-node")
        page.wait_for_selector('#node-live[data-state="failed"]', timeout=120_000)
        error = page.inner_text("#node-error")
        assert page.is_visible("#node-error") and "failed verification" in error and browser_portal.sha256 in error
        assert page.is_enabled("#start-node")  # the visitor can try again
    finally:
        path.write_bytes(original)
        context.close()


def test_it_serves_the_runtime_with_wasm_type_and_isolation_headers(browser_portal):
    def head(path):
        with urllib.request.urlopen(browser_portal.url + path) as r:
            return r.headers

    wasm = head("/browser-node/ort/ort-wasm-simd-threaded.wasm")
    assert wasm["Content-Type"] == "application/wasm"
    assert wasm["Cross-Origin-Resource-Policy"] == "same-origin"
    assert head("/browser-node/ort/ort.wasm.min.mjs")["Content-Type"] == "text/javascript"
    spans = head(f"/browser-node/spans/{browser_portal.sha256}.onnx")
    assert "immutable" in spans["Cache-Control"]
    for missing in ("/browser-node/ort/package.json", "/browser-node/ort/..%2F..%2F..%2Fpackage.json"):
        with pytest.raises(urllib.error.HTTPError) as err:
            head(missing)
        assert err.value.code == 404


def test_it_proves_holding_its_span_as_the_portal_checks(node_page, browser_portal):
    from portal.swarm.browser_node import span_proof

    data = browser_portal.portal_span_path().read_bytes()
    nonce = "a-nonce-the-tracker-signed"
    in_page = node_page.evaluate(
        """async ([url, nonce]) => {
          const { spanProof } = await import("/browser-node/node/engine.js");
          const bytes = new Uint8Array(await (await fetch(url)).arrayBuffer());
          return spanProof(nonce, bytes);
        }""",
        [f"/browser-node/spans/{browser_portal.sha256}.onnx", nonce],
    )
    assert in_page == span_proof(nonce, lambda offset, length: data[offset : offset + length], len(data))


def test_it_countersigns_usage_receipts_for_what_it_served(node_page):
    from swarmnode.protocol import CloseSession, SessionClosed
    from swarmnode.trust.identity import NodeIdentity
    from swarmnode.trust.receipts import SignedReceipt, UsageReceipt, key_of, signing_key

    node_key = signing_key(send(node_page, encode(Info(id=1))).public_key)
    client = NodeIdentity.generate()
    hidden = tensor_from_numpy(np.ones((1, 3, HIDDEN), np.float32))

    def session_with_receipt(sid: str, tokens: int, node: str = node_key) -> SessionClosed:
        send(node_page, encode(OpenSession(id=1, session_id=sid, max_length=8)))
        send(node_page, encode(Step(id=2, session_id=sid, position=0, hidden=hidden)))
        receipt = UsageReceipt.new(
            session_id=sid, model="smollm2", start_block=10, end_block=20, tokens=tokens,
            client_key=key_of(client), node_key=node,
        )  # fmt: skip
        close = CloseSession(
            id=3, session_id=sid, receipt=receipt.to_text(), client_signature=receipt.sign_as_client(client)
        )
        reply = send(node_page, encode(close))
        assert isinstance(reply, SessionClosed) and reply.tokens == 3
        if reply.node_signature:
            SignedReceipt(receipt, close.client_signature, reply.node_signature).verify()  # both signatures hold
        return reply

    assert session_with_receipt("paid", 3).receipt_error == ""
    greedy = session_with_receipt("greedy", 4)
    assert greedy.node_signature == "" and "claims 4 tokens" in greedy.receipt_error
    stranger = session_with_receipt("stranger", 3, node=key_of(NodeIdentity.generate()))
    assert stranger.node_signature == "" and "another node" in stranger.receipt_error
