// The node's request handling, as swarmnode/server/node.py does it (spec §4, §5): one reply per frame,
// sessions owned by the connection that opened them, a KV-cache budget in tokens, and never an
// exception for anything a peer sends.
import { DEFAULT_LIMITS, ProtocolError, WireTensor, checkHidden, decodeFrame, encodeFrame, resultDigest } from "./protocol.js";
import { ReceiptError, b64url, countersign } from "./receipts.js";

const VERSION = "0.1.0-web";

export class NodeCore {
  /**
   * @param {SpanEngine} engine the loaded span
   * @param {object} manifest the span file's manifest (model, start_block, end_block, num_blocks, hidden_size)
   * @param {object} options ``{cacheTokens, idleTimeoutS, limits, publicKey, signingKey, onReceipt}``: ``signingKey``
   *   (the identity's Ed25519 private CryptoKey) countersigns usage receipts (§8), handed to ``onReceipt``
   */
  constructor(engine, manifest, options = {}) {
    this.engine = engine;
    this.manifest = manifest;
    this.limits = { ...DEFAULT_LIMITS, ...(options.limits || {}) };
    this.cacheTokens = options.cacheTokens || 4096;
    this.idleTimeoutMs = (options.idleTimeoutS || 300) * 1000;
    this.publicKey = options.publicKey || "";
    this.signingKey = options.signingKey || null;
    this.onReceipt = options.onReceipt || (() => {});
    this.throughput = { decode: 0, prefill: 0 };
    this.state = "online";
    this.sessions = new Map(); // session_id -> {maxLength, cache, owner, position, lastUsed}
    this.stats = { tokens: 0, steps: 0, frames: 0, errors: 0, computeMs: 0, receipts: 0, blockTokens: 0 };
    this.queue = Promise.resolve(); // frames are handled one at a time (§1.3), in arrival order
  }

  get tokensLeft() {
    let used = 0;
    for (const s of this.sessions.values()) used += s.maxLength;
    return this.cacheTokens - used;
  }

  info(id = 0) {
    const m = this.manifest;
    return {
      type: "info_reply", id, model: m.model, start_block: m.start_block, end_block: m.end_block, num_blocks: m.num_blocks,
      hidden_size: m.hidden_size, dtype: "float32", backend: "onnxruntime-web", device: this.engine.device, version: VERSION,
      cache_tokens_left: this.tokensLeft, max_session_length: this.limits.maxSessionLength, open_sessions: this.sessions.size,
      throughput: this.throughput.decode, prefill_throughput: this.throughput.prefill, state: this.state, public_key: this.publicKey,
    };
  }

  /** One frame in, one encoded reply out (never throws). ``owner`` is any value naming the connection. */
  handleFrame(frame, owner) {
    const run = this.queue.then(() => this._handle(frame, owner));
    this.queue = run.catch(() => {});
    return run;
  }

  async _handle(frame, owner) {
    let id = 0;
    let sessionId = "";
    this.stats.frames++;
    try {
      const msg = decodeFrame(frame, this.limits);
      id = msg.id;
      sessionId = msg.session_id || "";
      return encodeFrame(await this._dispatch(msg, owner));
    } catch (exc) {
      this.stats.errors++;
      if (exc instanceof ProtocolError) return encodeFrame({ type: "error", id, code: exc.code, message: exc.message, session_id: sessionId });
      // A failure inside the engine: the session's cache may be partly written (§4.3).
      if (sessionId) this.sessions.delete(sessionId);
      return encodeFrame({ type: "error", id, code: "internal", message: `${exc.name}: ${exc.message}`, session_id: sessionId });
    }
  }

  _session(sessionId, owner) {
    const s = this.sessions.get(sessionId);
    if (!s || s.owner !== owner) throw new ProtocolError("unknown_session", `no open session ${JSON.stringify(sessionId)} on this connection`);
    s.lastUsed = performance.now();
    return s;
  }

  async _dispatch(msg, owner) {
    switch (msg.type) {
      case "info":
        return this.info(msg.id);
      case "open_session":
        return this._open(msg, owner);
      case "step":
        return this._step(msg, owner);
      case "forward":
        return this._forward(msg);
      case "close_session":
        return this._close(msg, owner);
      default:
        throw new ProtocolError("unexpected_message", `a node does not accept ${JSON.stringify(msg.type)} messages`);
    }
  }

  _open(msg, owner) {
    if (this.state === "draining") throw new ProtocolError("out_of_cache", "this node is leaving: open the session elsewhere");
    if (!msg.session_id || msg.session_id.length > this.limits.maxSessionIdLen) {
      throw new ProtocolError("bad_field", `session_id must be 1..${this.limits.maxSessionIdLen} characters`);
    }
    if (!(msg.max_length >= 1 && msg.max_length <= this.limits.maxSessionLength)) {
      throw new ProtocolError("bad_field", `max_length must be between 1 and ${this.limits.maxSessionLength}, got ${msg.max_length}`);
    }
    if (!["float32", "float16", "bfloat16"].includes(msg.dtype)) throw new ProtocolError("bad_dtype", `dtype ${JSON.stringify(msg.dtype)} not allowed`);
    if (this.sessions.has(msg.session_id)) throw new ProtocolError("session_exists", `session ${JSON.stringify(msg.session_id)} is already open`);
    if (msg.max_length > this.tokensLeft) {
      throw new ProtocolError("out_of_cache", `session needs ${msg.max_length} cache tokens but only ${this.tokensLeft} are free`);
    }
    this.sessions.set(msg.session_id, {
      maxLength: msg.max_length, cache: this.engine.newCache(), owner, position: 0, served: 0, lastUsed: performance.now(),
    });
    return { type: "session_opened", id: msg.id, session_id: msg.session_id, cache_tokens_left: this.tokensLeft };
  }

  async _step(msg, owner) {
    if (msg.push_key) {
      throw new ProtocolError("unexpected_message", "a browser node does not take part in server-to-server push (§7): send steps to it directly");
    }
    const s = this._session(msg.session_id, owner);
    const values = checkHidden(msg.hidden, this.manifest.hidden_size, this.limits);
    const [b, t] = msg.hidden.shape;
    if (msg.position !== s.position) {
      throw new ProtocolError("bad_position", `step at position ${msg.position} but the session's cache holds ${s.position}`);
    }
    if (s.position + t > s.maxLength) {
      throw new ProtocolError("session_full", `${s.position + t} tokens would exceed the session's max_length ${s.maxLength}`);
    }
    const started = performance.now();
    const out = await this.engine.step(values, b, t, s.cache);
    const ms = performance.now() - started;
    s.position += t;
    s.served += b * t; // B x T (§8.2)
    this._count(b * t, ms);
    const hidden = WireTensor.fromFloat32(out, msg.hidden.shape.slice(), msg.hidden.dtype);
    const signature = msg.skip_signature ? "" : await this._sign("step", msg.session_id, msg.position, msg.hidden, hidden);
    return {
      type: "step_result", id: msg.id, session_id: msg.session_id, position: s.position, hidden, compute_us: Math.round(ms * 1000), signature,
    };
  }

  async _close(msg, owner) {
    const served = this._session(msg.session_id, owner).served;
    this.sessions.delete(msg.session_id);
    const reply = { type: "session_closed", id: msg.id, session_id: msg.session_id, tokens: served, node_signature: "", receipt_error: "" };
    if (!msg.receipt) return reply;
    try {
      if (!this.signingKey) throw new ReceiptError("this node has no signing key");
      const nodeKey = this.publicKey.split(",")[0];
      const m = this.manifest;
      const signed = await countersign(this.signingKey, nodeKey, msg.receipt, msg.client_signature, {
        sessionId: msg.session_id, model: m.model, startBlock: m.start_block, endBlock: m.end_block, served,
      });
      reply.node_signature = signed.node_signature;
      this.stats.receipts++;
      this.stats.blockTokens += signed.block_tokens;
      this.onReceipt(signed);
    } catch (exc) {
      reply.receipt_error = exc.message; // §8.3: closed anyway, not countersigned
    }
    return reply;
  }

  async _forward(msg) {
    const values = checkHidden(msg.hidden, this.manifest.hidden_size, this.limits);
    const [b, t] = msg.hidden.shape;
    const started = performance.now();
    const out = await this.engine.step(values, b, t, this.engine.newCache(b));
    const ms = performance.now() - started;
    this._count(b * t, ms);
    const hidden = WireTensor.fromFloat32(out, msg.hidden.shape.slice(), msg.hidden.dtype);
    const signature = await this._sign("forward", "", 0, msg.hidden, hidden);
    return { type: "forward_result", id: msg.id, hidden, compute_us: Math.round(ms * 1000), signature };
  }

  // §11: sign the digest of every result, so an output is attributable to this node (audits, evidence).
  async _sign(kind, sessionId, position, input, output) {
    if (!this.signingKey) return "";
    const m = this.manifest;
    const digest = await resultDigest(kind, sessionId, position, m.start_block, m.end_block, input, output);
    return b64url(new Uint8Array(await crypto.subtle.sign({ name: "Ed25519" }, this.signingKey, digest)));
  }

  _count(tokens, ms) {
    this.stats.tokens += tokens;
    this.stats.steps += 1;
    this.stats.computeMs += ms;
  }

  /** Free the sessions of a closed connection (§1.3); returns how many. */
  closeOwnedBy(owner) {
    let n = 0;
    for (const [id, s] of this.sessions) {
      if (s.owner === owner) {
        this.sessions.delete(id);
        n++;
      }
    }
    return n;
  }

  /** Close sessions idle longer than the idle timeout (§4.5); returns their ids. */
  evictIdle(now = performance.now()) {
    const evicted = [];
    for (const [id, s] of this.sessions) {
      if (now - s.lastUsed > this.idleTimeoutMs) {
        this.sessions.delete(id);
        evicted.push(id);
      }
    }
    return evicted;
  }
}
