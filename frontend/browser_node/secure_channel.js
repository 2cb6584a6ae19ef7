// The node's side of end-to-end encryption (spec §10, swarmnode/trust/secure_channel.py), with WebCrypto:
// X25519 agreement, HKDF-SHA256, AES-256-GCM; ChaCha20-Poly1305 (the Python clients' default suite, which
// WebCrypto lacks) from @noble/ciphers, installed from npm like the rest of the runtime.
import { decode as msgpackDecode, encode as msgpackEncode } from "../msgpack/index.mjs";
import { chacha20poly1305 } from "../noble/chacha.js";

export const SUITES = ["x25519-chacha20poly1305", "x25519-aes256gcm"];
const HKDF_INFO = new TextEncoder().encode("layerswarm secure channel v2");
const SIGN_CONTEXT = new TextEncoder().encode("layerswarm secure ready v2");
const READY_TEXT = new TextEncoder().encode("layerswarm secure ready");
const MAX_HELLO_BYTES = 1024;
const HELLO_MARK = new TextEncoder().encode("secure_hello");
const NO_EXT = {
  decode: () => {
    throw new ChannelError("bad_seal", "msgpack extension types are not allowed");
  },
  tryToEncode: () => null,
};

export class ChannelError extends Error {
  constructor(code, message) {
    super(`${code}: ${message}`);
    this.code = code;
    this.detail = message;
  }
}

function nonce(seq) {
  const n = new Uint8Array(12);
  new DataView(n.buffer).setBigUint64(4, BigInt(seq), false); // 4 zero bytes, then seq big-endian
  return n;
}

function concat(...parts) {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

/** An AEAD for one direction: ``seal(seq, plaintext)`` / ``open(seq, box)`` (box = ciphertext || 16-byte tag). */
async function aead(suite, key) {
  if (suite === "x25519-aes256gcm") {
    const k = await crypto.subtle.importKey("raw", key, { name: "AES-GCM" }, false, ["encrypt", "decrypt"]);
    return {
      seal: async (seq, data) => new Uint8Array(await crypto.subtle.encrypt({ name: "AES-GCM", iv: nonce(seq) }, k, data)),
      open: async (seq, box) => new Uint8Array(await crypto.subtle.decrypt({ name: "AES-GCM", iv: nonce(seq) }, k, box)),
    };
  }
  return {
    seal: async (seq, data) => chacha20poly1305(key, nonce(seq)).encrypt(data),
    open: async (seq, box) => chacha20poly1305(key, nonce(seq)).decrypt(box),
  };
}

function unpackMap(frame, what) {
  let body;
  try {
    body = msgpackDecode(frame, { extensionCodec: NO_EXT, useBigInt64: true, maxBinLength: 1 << 30 });
  } catch (exc) {
    throw exc instanceof ChannelError ? exc : new ChannelError("bad_seal", `${what} is not msgpack`);
  }
  if (body === null || typeof body !== "object" || Array.isArray(body) || body.v !== 1) {
    throw new ChannelError("bad_seal", `${what} is not a version 1 map`);
  }
  return body;
}

/** Cheap test whether a frame may be a ``secure_hello`` (small, with the type string inside), as §10.2 says. */
export function isHandshakeFrame(frame) {
  if (frame.length > MAX_HELLO_BYTES) return false;
  outer: for (let i = 0; i + HELLO_MARK.length <= frame.length; i++) {
    for (let j = 0; j < HELLO_MARK.length; j++) if (frame[i + j] !== HELLO_MARK[j]) continue outer;
    return true;
  }
  return false;
}

/** One side of an established channel; frames must be sealed and opened in order (callers serialize). */
export class SecureChannel {
  constructor(suite, send, recv, sendSeq, recvSeq) {
    this.suite = suite;
    this.send = send;
    this.recv = recv;
    this.sendSeq = sendSeq;
    this.recvSeq = recvSeq;
    this.dead = false;
  }

  async seal(plaintext) {
    const seq = this.sendSeq++;
    const box = await this.send.seal(seq, plaintext);
    return msgpackEncode({ v: 1, type: "sealed", seq, box }, { useBigInt64: true });
  }

  /** The plaintext of the next sealed frame; anything else kills the channel (§10.4). */
  async open(frame) {
    if (this.dead) throw new ChannelError("bad_seal", "the channel failed earlier");
    try {
      const body = unpackMap(frame, "a sealed frame");
      const seq = typeof body.seq === "bigint" ? Number(body.seq) : body.seq;
      if (body.type !== "sealed" || !Number.isInteger(seq) || !(body.box instanceof Uint8Array)) {
        throw new ChannelError("bad_seal", "expected a sealed frame {seq, box}");
      }
      if (seq !== this.recvSeq) {
        throw new ChannelError("bad_seal", `frame ${seq} ${seq < this.recvSeq ? "replayed" : "out of order (frames missing)"}; expected ${this.recvSeq}`);
      }
      let plaintext;
      try {
        plaintext = await this.recv.open(seq, body.box);
      } catch {
        throw new ChannelError("bad_seal", `frame ${seq} was altered in transit (authentication failed)`);
      }
      this.recvSeq++;
      return plaintext;
    } catch (exc) {
      this.dead = true;
      throw exc instanceof ChannelError ? exc : new ChannelError("bad_seal", String(exc.message || exc));
    }
  }
}

/**
 * The node's side of the handshake (§10.2): parse ``secure_hello``, agree keys with our static X25519 key.
 * @param {NodeKeys} keys the node's identity (``agreement`` key pair, raw ``x25519`` and ``ed25519`` publics)
 * @returns {Promise<{reply: Uint8Array, channel: SecureChannel}>}
 * @throws {ChannelError} ``bad_handshake``
 */
export async function nodeAccept(keys, frame) {
  let body;
  try {
    body = unpackMap(frame, "secure_hello");
  } catch {
    throw new ChannelError("bad_handshake", "secure_hello is not a version 1 msgpack map");
  }
  const { suite, key: eph, node_key: nodeKey } = body;
  if (body.type !== "secure_hello") throw new ChannelError("bad_handshake", "expected secure_hello");
  if (!SUITES.includes(suite)) throw new ChannelError("bad_handshake", `unsupported suite ${JSON.stringify(String(suite)).slice(0, 64)}; one of ${SUITES}`);
  if (!(eph instanceof Uint8Array) || eph.length !== 32) throw new ChannelError("bad_handshake", "key must be 32 raw bytes");
  if (nodeKey !== undefined && nodeKey !== null && !(nodeKey instanceof Uint8Array && nodeKey.every((b, i) => b === keys.x25519[i]) && nodeKey.length === 32)) {
    throw new ChannelError("bad_handshake", "secure_hello addressed to another node key (stale announcement?)");
  }
  // A fresh ephemeral key per connection (forward secrecy, §10.2), signed by the identity together with the client's.
  const nodeEph = await crypto.subtle.generateKey({ name: "X25519" }, false, ["deriveBits"]);
  const nodeEphPub = new Uint8Array(await crypto.subtle.exportKey("raw", nodeEph.publicKey));
  let ephemeral, statik;
  try {
    const peer = await crypto.subtle.importKey("raw", eph, { name: "X25519" }, false, []);
    statik = new Uint8Array(await crypto.subtle.deriveBits({ name: "X25519", public: peer }, keys.agreement.privateKey, 256));
    ephemeral = new Uint8Array(await crypto.subtle.deriveBits({ name: "X25519", public: peer }, nodeEph.privateKey, 256));
  } catch {
    throw new ChannelError("bad_handshake", "the ephemeral key is invalid");
  }
  const transcript = concat(new TextEncoder().encode(suite), new Uint8Array([0]), eph, nodeEphPub, keys.x25519, keys.ed25519);
  const info = concat(HKDF_INFO, new Uint8Array([0]), transcript);
  const ikm = await crypto.subtle.importKey("raw", concat(ephemeral, statik), "HKDF", false, ["deriveBits"]);
  const okm = new Uint8Array(await crypto.subtle.deriveBits({ name: "HKDF", hash: "SHA-256", salt: new Uint8Array(0), info }, ikm, 512));
  const toNode = await aead(suite, okm.slice(0, 32));
  const toClient = await aead(suite, okm.slice(32, 64));
  const confirm = await toClient.seal(0, READY_TEXT);
  const sig = new Uint8Array(await crypto.subtle.sign({ name: "Ed25519" }, keys.signing.privateKey, concat(SIGN_CONTEXT, new Uint8Array([0]), transcript)));
  const id = Number.isInteger(body.id) || typeof body.id === "bigint" ? body.id : 0;
  const reply = msgpackEncode({ v: 1, type: "secure_ready", id, suite, key: nodeEphPub, sig, confirm }, { useBigInt64: true });
  return { reply, channel: new SecureChannel(suite, toClient, toNode, 1, 0) };
}
