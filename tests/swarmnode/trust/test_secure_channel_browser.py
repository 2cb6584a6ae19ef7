"""The browser node's side of §10.2 (``frontend/browser_node/secure_channel.js``) agrees with the Python
client: the same signed ephemeral key, the same keys, both suites. Runs the real module under Node's
WebCrypto (X25519, Ed25519, HKDF, AES-GCM), which is what a browser tab uses; no chromium needed."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import msgpack
import pytest

from swarmnode.trust.secure_channel import SUITES, ChannelError, client_handshake, finish_handshake

FRONTEND = Path(__file__).resolve().parents[3] / "frontend"
NODE_MODULES = FRONTEND / "node_modules"

# Reads hex frames, one a line: the first is a secure_hello, the rest sealed frames it echoes back sealed.
HARNESS = """
import { createInterface } from "node:readline";
import { nodeAccept } from "./secure_channel.js";
const keys = {};
keys.signing = await crypto.subtle.generateKey({ name: "Ed25519" }, false, ["sign", "verify"]);
keys.agreement = await crypto.subtle.generateKey({ name: "X25519" }, false, ["deriveBits"]);
keys.ed25519 = new Uint8Array(await crypto.subtle.exportKey("raw", keys.signing.publicKey));
keys.x25519 = new Uint8Array(await crypto.subtle.exportKey("raw", keys.agreement.publicKey));
const b64 = (b) => Buffer.from(b).toString("base64url");
console.log(`ed25519:${b64(keys.ed25519)},x25519:${b64(keys.x25519)}`);
let channel = null;
for await (const line of createInterface({ input: process.stdin })) {
  const frame = new Uint8Array(Buffer.from(line.trim(), "hex"));
  if (!channel) {
    const accepted = await nodeAccept(keys, frame);
    channel = accepted.channel;
    console.log(Buffer.from(accepted.reply).toString("hex"));
  } else {
    console.log(Buffer.from(await channel.seal(await channel.open(frame))).toString("hex"));
  }
}
"""


@pytest.fixture(scope="module")
def harness(tmp_path_factory) -> Path:
    if shutil.which("node") is None or not (NODE_MODULES / "@msgpack" / "msgpack").is_dir():
        pytest.skip("node and frontend/node_modules (npm ci in frontend/) are needed")
    root = tmp_path_factory.mktemp("browser-node")
    (root / "browser_node").mkdir()
    shutil.copy(FRONTEND / "browser_node" / "secure_channel.js", root / "browser_node" / "secure_channel.js")
    (root / "msgpack").symlink_to(NODE_MODULES / "@msgpack" / "msgpack" / "dist.esm")  # as the portal serves them
    (root / "noble").symlink_to(NODE_MODULES / "@noble" / "ciphers")
    (root / "browser_node" / "harness.mjs").write_text(HARNESS)
    return root / "browser_node" / "harness.mjs"


class BrowserNode:
    def __init__(self, harness: Path) -> None:
        self.proc = subprocess.Popen(["node", str(harness)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.public_key = self.proc.stdout.readline().strip()

    def exchange(self, frame: bytes) -> bytes:
        self.proc.stdin.write(frame.hex() + "\n")
        self.proc.stdin.flush()
        return bytes.fromhex(self.proc.stdout.readline().strip())

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=10)


@pytest.mark.parametrize("suite", sorted(SUITES))
def test_a_python_client_and_a_browser_node_agree_on_forward_secret_keys(harness, suite):
    node = BrowserNode(harness)
    try:
        hello, pending = client_handshake(node.public_key, suite)
        ready = node.exchange(hello)
        assert len(msgpack.unpackb(ready)["key"]) == 32 and len(msgpack.unpackb(ready)["sig"]) == 64
        channel = finish_handshake(pending, ready)  # the signature and confirm verify in Python
        for i in range(3):
            assert channel.open(node.exchange(channel.seal(b"hidden states %d" % i))) == b"hidden states %d" % i
    finally:
        node.close()


def test_a_swapped_ephemeral_key_from_a_browser_node_is_refused(harness):
    node = BrowserNode(harness)
    try:
        hello, pending = client_handshake(node.public_key, "x25519-aes256gcm")
        ready = msgpack.unpackb(node.exchange(hello))
        ready["key"] = bytes(31) + b"\x09"  # a man in the middle's key
        with pytest.raises(ChannelError, match="not signed"):
            finish_handshake(pending, msgpack.packb(ready))
    finally:
        node.close()
