// The browser node's link to the portal's relay (spec §9): a tab cannot listen, so it dials out to
// ``/ws/relay``, proves it holds its Ed25519 key, and serves every client the relay opens for it — each
// client end-to-end encrypted to the node's X25519 key (§10), so the relay only forwards ciphertext.
import { decode as msgpackDecode, encode as msgpackEncode } from "../msgpack/index.mjs";
import { encodeFrame } from "./protocol.js";
import { ChannelError, isHandshakeFrame, nodeAccept } from "./secure_channel.js";

const PROOF_CONTEXT = new TextEncoder().encode("layerswarm relay proof v1\0");
const MAX_PENDING_FRAMES = 64; // a client has one request in flight (§1.3): 64 is generous
const NO_EXT = {
  decode: () => {
    throw new Error("msgpack extension types are not allowed");
  },
  tryToEncode: () => null,
};

export class RelayRefused extends Error {}

function pack(type, fields) {
  return msgpackEncode({ v: 1, type, ...fields }, { useBigInt64: true });
}

/** Parse one relay envelope frame (§9.2, §9.4); returns null (and counts it) for anything malformed. */
export function unpackEnvelope(frame) {
  let body;
  try {
    body = msgpackDecode(frame, { extensionCodec: NO_EXT, maxBinLength: 1 << 30 });
  } catch {
    return null;
  }
  if (body === null || typeof body !== "object" || Array.isArray(body) || body.v !== 1 || typeof body.type !== "string") return null;
  const conn = body.conn;
  if (["relay_open", "relay_data", "relay_close"].includes(body.type) && !Number.isSafeInteger(conn)) return null;
  if (body.type === "relay_data" && !(body.data instanceof Uint8Array)) return null;
  return body;
}

export class RelayLink {
  /**
   * @param {BrowserNode} node answers frames (``handleFrame(bytes, conn)``, ``closeConnection(conn)``)
   * @param {string} url the relay, ``ws(s)://portal/ws/relay``
   * @param {string} token the node token (the portal's relay requires it)
   * @param {NodeKeys} keys the node's identity
   */
  constructor(node, url, token, keys) {
    this.node = node;
    this.url = url.replace(/\/+$/, "");
    this.token = token;
    this.keys = keys;
    this.address = "";
    this.ws = null;
    this.conns = new Map(); // conn -> {channel, chain, pending}
    this.stats = { malformed: 0, clients: 0 };
    this.closed = false;
    this.onDrop = () => {};
  }

  /** Attach (hello, challenge, proof, registered); resolves with the relay address ``R/<key_id>``. */
  connect() {
    return new Promise((resolve, reject) => {
      const ws = new WebSocket(this.url);
      ws.binaryType = "arraybuffer";
      this.ws = ws;
      let stage = "hello";
      const fail = (exc) => {
        stage = "failed";
        reject(exc);
        ws.close();
      };
      const timer = setTimeout(() => fail(new RelayRefused(`the relay at ${this.url} did not answer in time`)), 20_000);
      ws.onopen = () => ws.send(pack("relay_hello", { id: 1, public_key: this.keys.publicKey, token: this.token, dial_back: "" }));
      ws.onerror = () => {
        if (stage !== "attached") fail(new RelayRefused(`cannot reach the relay at ${this.url}`));
      };
      ws.onclose = () => {
        clearTimeout(timer);
        if (stage === "attached") this._dropped();
        else if (stage !== "failed") fail(new RelayRefused("the relay closed the link"));
      };
      ws.onmessage = async (event) => {
        const msg = unpackEnvelope(new Uint8Array(event.data));
        if (stage === "attached") return this._onFrame(msg);
        if (!msg) return fail(new RelayRefused("the relay sent a malformed frame"));
        if (msg.type === "error") return fail(new RelayRefused(`the relay refused: ${msg.code}: ${msg.message}`));
        if (stage === "hello" && msg.type === "relay_challenge" && msg.nonce instanceof Uint8Array && typeof msg.relay === "string") {
          stage = "proof";
          const text = new TextEncoder();
          const message = new Uint8Array([
            ...PROOF_CONTEXT, ...msg.nonce, 0, ...text.encode(msg.relay), 0, ...text.encode(this.keys.publicKey),
          ]);
          const signature = new Uint8Array(await crypto.subtle.sign({ name: "Ed25519" }, this.keys.signing.privateKey, message));
          ws.send(pack("relay_proof", { id: 1, signature }));
        } else if (stage === "proof" && msg.type === "relay_registered" && typeof msg.address === "string") {
          stage = "attached";
          clearTimeout(timer);
          this.address = msg.address;
          resolve(msg.address);
        } else {
          fail(new RelayRefused(`unexpected ${msg.type} while attaching`));
        }
      };
    });
  }

  /** One frame from the relay once attached; nothing in it can throw out of here. */
  _onFrame(msg) {
    if (!msg) {
      this.stats.malformed++;
      return;
    }
    const conn = msg.conn;
    if (msg.type === "relay_open") {
      this.conns.set(conn, { channel: null, chain: Promise.resolve(), pending: 0 });
      this.stats.clients++;
    } else if (msg.type === "relay_data") {
      const state = this.conns.get(conn);
      if (!state) {
        this._send(pack("error", { code: "unknown_target", message: "no such connection", conn }));
      } else if (state.pending >= MAX_PENDING_FRAMES) {
        this._closeConn(conn, "client floods the node");
      } else {
        state.pending++;
        state.chain = state.chain
          .then(() => this._client(conn, state, msg.data))
          .catch((exc) => this.node._emit?.("log", { message: `relayed client ${conn}: ${exc.message}` }))
          .finally(() => state.pending--);
      }
    } else if (msg.type === "relay_close") {
      if (this.conns.delete(conn)) this.node.closeConnection(conn);
    } else if (msg.type === "error") {
      this.node._emit?.("log", { message: `relay: ${msg.code}: ${msg.message}` });
    } else {
      this.stats.malformed++;
    }
  }

  // One client frame, in order: the §10 handshake, then sealed frames, or plaintext like a direct connection.
  async _client(conn, state, data) {
    if (!this.conns.has(conn)) return;
    if (!state.channel && isHandshakeFrame(data)) {
      try {
        const { reply, channel } = await nodeAccept(this.keys, data);
        state.channel = channel;
        this._send(pack("relay_data", { conn, data: reply }));
      } catch (exc) {
        const code = exc instanceof ChannelError ? exc.code : "bad_handshake";
        this._send(pack("relay_data", { conn, data: encodeFrame({ type: "error", code, message: exc.detail || exc.message }) }));
      }
      return;
    }
    let frame = data;
    if (state.channel) {
      try {
        frame = await state.channel.open(data);
      } catch (exc) {
        this._send(pack("relay_data", { conn, data: encodeFrame({ type: "error", code: "bad_seal", message: exc.detail || exc.message }) }));
        this._closeConn(conn, "bad_seal"); // §10.4: the channel is dead; its sessions are freed
        return;
      }
    }
    const reply = await this.node.handleFrame(frame, conn);
    if (!this.conns.has(conn)) return;
    const out = state.channel ? await state.channel.seal(reply) : reply;
    this._send(pack("relay_data", { conn, data: out }));
  }

  _closeConn(conn, reason) {
    if (this.conns.delete(conn)) this.node.closeConnection(conn);
    this._send(pack("relay_close", { conn, reason }));
  }

  _send(bytes) {
    if (this.ws && this.ws.readyState === WebSocket.OPEN) this.ws.send(bytes);
  }

  _dropped() {
    for (const conn of this.conns.keys()) this.node.closeConnection(conn);
    this.conns.clear();
    this.address = "";
    if (!this.closed) this.onDrop();
  }

  /** Detach: the relay closes every client's connection and they fail over. */
  close() {
    this.closed = true;
    if (this.ws) this.ws.close();
  }
}
