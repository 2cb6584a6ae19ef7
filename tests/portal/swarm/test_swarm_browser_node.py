"""The browser node's pages and files: the contribute page (cross-origin isolated), node tokens for a tab,
the onnxruntime-web runtime from npm, and span files addressed by their SHA-256."""

import hashlib
import json

import pytest
from django.test import Client

from portal.accounts.models import NodeToken
from portal.swarm.browser_node import SpanFileError, export_span_file
from portal.swarm.models import SpanFile


@pytest.fixture
def span_file(smollm2, settings, tmp_path):
    """A (fake-content) span file for blocks 10:20, recorded as the exporter would."""
    settings.SWARM_SPAN_FILES_DIR = tmp_path
    data = b"not really onnx, but content-addressed all the same"
    sha = hashlib.sha256(data).hexdigest()
    (tmp_path / f"{sha}.onnx").write_bytes(data)
    return SpanFile.objects.create(
        model=smollm2,
        start_block=10,
        end_block=20,
        weights_digest="w" * 24,
        sha256=sha,
        size=len(data),
        num_kv_heads=3,
        head_dim=64,
        opset=17,
    )


def test_it_isolates_the_contribute_from_browser_page(owner_client, span_file):
    response = owner_client.get("/contribute/browser/")
    assert response.status_code == 200
    assert response["Cross-Origin-Opener-Policy"] == "same-origin"
    assert response["Cross-Origin-Embedder-Policy"] == "require-corp"
    page = response.content.decode()
    assert "smollm2 blocks 10:20" in page and "/browser-node/node/contribute_browser.js" in page
    assert "Stop" in page and "per cached token" in page  # what it costs, and how to leave


def test_it_links_the_browser_page_from_contribute_a_gpu(owner_client, smollm2):
    assert 'href="/contribute/browser/"' in owner_client.get("/contribute/").content.decode()


def test_it_says_when_no_span_is_prepared_for_browsers(owner_client, smollm2, settings, tmp_path):
    settings.SWARM_SPAN_FILES_DIR = tmp_path
    page = owner_client.get("/contribute/browser/").content.decode()
    assert 'id="no-spans"' in page and "export_browser_span" in page


def test_it_requires_log_in_to_contribute_from_a_browser(db):
    response = Client().get("/contribute/browser/")
    assert response.status_code == 302 and response.url.startswith("/accounts/login/")
    assert Client().post("/contribute/browser/token/").status_code == 302


def test_it_gives_a_tab_its_own_node_token(owner, owner_client):
    response = owner_client.post("/contribute/browser/token/")
    assert response.status_code == 201
    assert NodeToken.authenticate(response.json()["token"]).user == owner
    assert owner_client.get("/contribute/browser/token/").status_code == 405


def test_it_serves_the_runtime_from_npm_with_the_right_types(db):
    wasm = Client().get("/browser-node/ort/ort-wasm-simd-threaded.wasm")
    assert wasm.status_code == 200 and wasm["Content-Type"] == "application/wasm"
    assert wasm["Cross-Origin-Resource-Policy"] == "same-origin"
    assert b"".join(wasm.streaming_content)[:4] == b"\0asm"
    assert Client().get("/browser-node/ort/ort.wasm.min.mjs")["Content-Type"] == "text/javascript"
    assert Client().get("/browser-node/msgpack/utils/int.mjs").status_code == 200
    assert Client().get("/browser-node/node/worker.js").status_code == 200


@pytest.mark.parametrize(
    "path",
    [
        "/browser-node/ort/package.json",
        "/browser-node/ort/../package.json",
        "/browser-node/msgpack/../../onnxruntime-web/package.json",
        "/browser-node/node_modules/onnxruntime-web/package.json",
        "/browser-node/node/../../portal.css",
    ],
)
def test_it_serves_nothing_else_from_node_modules(db, path):
    assert Client().get(path).status_code == 404


def test_it_lists_and_serves_span_files_by_sha256(span_file):
    listing = json.loads(Client().get("/browser-node/models/smollm2/spans/").content)
    (entry,) = listing["spans"]
    assert entry["sha256"] == span_file.sha256 and entry["size"] == span_file.size
    assert (entry["start_block"], entry["end_block"], entry["num_layers"], entry["hidden_size"]) == (10, 20, 10, 576)
    assert entry["url"] == f"http://testserver/browser-node/spans/{span_file.sha256}.onnx"
    response = Client().get(f"/browser-node/spans/{span_file.sha256}.onnx")
    body = b"".join(response.streaming_content)
    assert hashlib.sha256(body).hexdigest() == span_file.sha256
    assert "immutable" in response["Cache-Control"]
    assert Client().get(f"/browser-node/spans/{'0' * 64}.onnx").status_code == 404
    assert Client().get("/browser-node/models/nope/spans/").status_code == 404


def test_it_lists_no_span_whose_file_is_gone(span_file, settings):
    (settings.SWARM_SPAN_FILES_DIR / f"{span_file.sha256}.onnx").unlink()
    assert json.loads(Client().get("/browser-node/models/smollm2/spans/").content)["spans"] == []
    assert Client().get(f"/browser-node/spans/{span_file.sha256}.onnx").status_code == 404


def test_it_refuses_to_export_spans_outside_the_model(smollm2):
    with pytest.raises(SpanFileError, match="outside"):
        export_span_file("smollm2", 20, 31)
    with pytest.raises(SpanFileError, match="no model|does not serve"):
        export_span_file("nope", 0, 1)
