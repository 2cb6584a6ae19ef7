// A browser tab as a swarm node (main-thread side): identity, worker, tracker registration and heartbeats.
// The span runs in ./worker.js; frames from the relay are handed to it and its replies sent back.
import { RelayLink } from "./relay_link.js";

function b64url(bytes) {
  let s = "";
  for (const b of new Uint8Array(bytes)) s += String.fromCharCode(b);
  return btoa(s).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

/** The node's long-lived keys (swarmnode/trust/identity.py): Ed25519 signs, X25519 agrees session keys. */
export class NodeKeys {
  static async generate() {
    const keys = new NodeKeys();
    keys.signing = await crypto.subtle.generateKey({ name: "Ed25519" }, false, ["sign", "verify"]);
    keys.agreement = await crypto.subtle.generateKey({ name: "X25519" }, false, ["deriveBits"]);
    keys.ed25519 = new Uint8Array(await crypto.subtle.exportKey("raw", keys.signing.publicKey));
    keys.x25519 = new Uint8Array(await crypto.subtle.exportKey("raw", keys.agreement.publicKey));
    return keys;
  }

  /** ``ed25519:<b64url>,x25519:<b64url>``, as announced to the tracker and in ``info_reply`` (§1.4). */
  get publicKey() {
    return `ed25519:${b64url(this.ed25519)},x25519:${b64url(this.x25519)}`;
  }

  /** Proof for the tracker that this tab holds its key: a signed portal nonce (swarmnode/trust/identity.py
   * ``key_proof_message``), so nobody who copies the public key can register it and collect its earnings. */
  async proveKey(nonce) {
    const message = new TextEncoder().encode(`layerswarm.node-key-proof.v1\0${nonce}\0${this.publicKey}`);
    return { nonce, signature: b64url(await crypto.subtle.sign({ name: "Ed25519" }, this.signing.privateKey, message)) };
  }
}

export class BrowserNode extends EventTarget {
  /**
   * @param {object} config ``{tokenUrl, csrfToken, relayUrl, portalUrl}`` from the page
   */
  constructor(config) {
    super();
    this.config = config;
    this.worker = null;
    this.state = "idle"; // idle -> loading -> joining -> online -> leaving -> stopped | failed
    this.nodeId = null;
    this.token = null;
    this.keys = null;
    this.link = null;
    this.pending = new Map(); // seq -> resolve
    this.seq = 0;
    this.stats = {};
    this.heartbeatTimer = null;
  }

  _emit(type, detail = {}) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }

  _setState(state, detail = {}) {
    this.state = state;
    this._emit("state", { state, ...detail });
  }

  /** Load ``manifest``'s span (verified), then join the swarm through the relay. */
  async start(manifest, { cacheTokens = 4096, join = true, numThreads = 0 } = {}) {
    this.manifest = manifest;
    this._setState("loading");
    this.keys = await NodeKeys.generate();
    let nonce = "";
    if (join) {
      try {
        this.token = this.token || (await this._newToken());
        nonce = await this._challenge();
      } catch (exc) {
        this._fail(exc);
        throw exc;
      }
    }
    this.worker = new Worker(new URL("./worker.js", import.meta.url), { type: "module" });
    const loaded = new Promise((resolve, reject) => {
      this.worker.onmessage = (event) => this._onWorker(event.data, resolve, reject);
      this.worker.onerror = (event) => reject(new Error(event.message || "the worker failed to start"));
    });
    this.worker.postMessage({
      op: "load",
      manifest,
      options: {
        cacheTokens, nonce, numThreads, publicKey: this.keys.publicKey, signingKey: this.keys.signing.privateKey,
      },
    });
    try {
      this.loaded = await loaded;
    } catch (exc) {
      this._fail(exc);
      throw exc;
    }
    this._emit("loaded", this.loaded);
    this.spanProof = { sha256: manifest.sha256, nonce, proof: this.loaded.proof, at: Date.now() };
    if (join) await this.join();
    else this._setState("loaded");
    return this.loaded;
  }

  _onWorker(msg, resolveLoad, rejectLoad) {
    switch (msg.event) {
      case "progress":
        this._emit("progress", msg);
        break;
      case "loaded":
        resolveLoad(msg);
        break;
      case "reply": {
        const done = this.pending.get(msg.seq);
        this.pending.delete(msg.seq);
        if (done) done.resolve(new Uint8Array(msg.bytes));
        break;
      }
      case "proof": {
        const done = this.pending.get(msg.seq);
        this.pending.delete(msg.seq);
        if (done) done.resolve(msg.proof);
        break;
      }
      case "receipt":
        this._submitReceipt(msg.signed);
        break;
      case "stats":
        this.stats = msg;
        this._emit("stats", msg);
        break;
      case "error":
        if (msg.fatal) rejectLoad(new Error(msg.message));
        else {
          const done = this.pending.get(msg.seq);
          this.pending.delete(msg.seq);
          if (done) done.reject(new Error(msg.message));
          this._emit("log", { message: msg.message });
        }
        break;
      case "log":
        this._emit("log", msg);
        break;
      default:
        break;
    }
  }

  /** Hand a countersigned receipt to the portal (spec §8.4), which credits this tab's owner once settled. */
  async _submitReceipt(signed) {
    if (!this.token) return; // not joined (tests, benchmarks): nobody to pay
    const { receipt, client_signature, node_signature } = signed;
    try {
      await this._api("/api/v1/receipts/", { receipt, client_signature, node_signature });
      this._emit("receipt", signed);
    } catch (exc) {
      this._emit("log", { message: `receipt not accepted: ${exc.message}` });
    }
  }

  /** One protocol frame from connection ``conn`` in, the encoded reply out (computed in the worker). */
  handleFrame(bytes, conn = "local") {
    const seq = ++this.seq;
    const copy = new Uint8Array(bytes).slice().buffer;
    return new Promise((resolve, reject) => {
      this.pending.set(seq, { resolve, reject });
      this.worker.postMessage({ op: "frame", conn, seq, bytes: copy }, [copy]);
    });
  }

  /** A client connection through the relay ended: free its sessions. */
  closeConnection(conn) {
    if (this.worker) this.worker.postMessage({ op: "close", conn });
  }

  async _api(path, body) {
    const response = await fetch(this.config.portalUrl + path, {
      method: "POST",
      headers: { "Content-Type": "application/json", Authorization: `Bearer ${this.token}` },
      body: JSON.stringify(body || {}),
    });
    const data = await response.json().catch(() => ({}));
    if (!response.ok) {
      const err = new Error(data.detail || JSON.stringify(data) || `HTTP ${response.status}`);
      err.status = response.status;
      throw err;
    }
    return data;
  }

  /** A fresh nonce from the tracker, to prove with the span file's bytes that this tab holds the span. */
  async _challenge() {
    return (await this._api("/api/v1/nodes/span-challenge/", { sha256: this.manifest.sha256 })).nonce;
  }

  /** A new proof for registering again, computed by the worker from the (re-verified) file. */
  async _prove() {
    const nonce = await this._challenge();
    const seq = ++this.seq;
    const proof = await new Promise((resolve, reject) => {
      this.pending.set(seq, { resolve, reject });
      this.worker.postMessage({ op: "prove", seq, nonce });
    });
    this.spanProof = { sha256: this.manifest.sha256, nonce, proof, at: Date.now() };
  }

  async _newToken() {
    const response = await fetch(this.config.tokenUrl, {
      method: "POST",
      headers: { "X-CSRFToken": this.config.csrfToken },
      credentials: "same-origin",
    });
    if (!response.ok) throw new Error(`could not get a node token (HTTP ${response.status})`);
    return (await response.json()).token;
  }

  /** Register the loaded span (and only that span) with the tracker as a relayed node, then heartbeat. */
  async join({ retrying = false } = {}) {
    if (!retrying) this._setState("joining");
    const info = this.loaded.info;
    try {
      this.token = this.token || (await this._newToken());
      // The tracker's nonce lives 10 minutes: prove again with a fresh one when registering later.
      if (!this.spanProof.nonce || Date.now() - this.spanProof.at > 540_000) await this._prove();
      if (!this.link) {
        this.link = new RelayLink(this, this.config.relayUrl, this.token, this.keys);
        this.link.onDrop = () => this._reattach();
        await this.link.connect();
      }
      const registration = {
        model: info.model,
        start_block: info.start_block, // what the worker loaded and verified: nothing else can be claimed
        end_block: info.end_block,
        url: this.link.address, // R/<key_id>: clients reach this tab through the relay (spec §9.1)
        relay: true,
        backend: "onnxruntime-web",
        device: info.device,
        dtype: "float32",
        throughput: this.loaded.throughput.decode,
        cache_tokens_left: info.cache_tokens_left,
        max_session_length: info.max_session_length,
        version: info.version,
        public_key: this.keys.publicKey,
        key_proof: await this.keys.proveKey((await this._api("/api/v1/nodes/key-challenge/", {})).nonce),
        span_proof: { sha256: this.spanProof.sha256, nonce: this.spanProof.nonce, proof: this.spanProof.proof },
      };
      const reply = await this._api("/api/v1/nodes/register/", registration);
      this.nodeId = reply.id;
      this.heartbeatInterval = (reply.heartbeat_interval || 10) * 1000;
    } catch (exc) {
      if (retrying) {
        if (this.link) this.link.close();
        this.link = null;
      } else this._fail(exc);
      throw exc;
    }
    this._setState("online", { nodeId: this.nodeId });
    this._beat();
  }

  _beat() {
    this.heartbeatTimer = setTimeout(async () => {
      if (this.state !== "online") return;
      try {
        const s = this.stats;
        await this._api(`/api/v1/nodes/${this.nodeId}/heartbeat/`, {
          cache_tokens_left: s.cacheTokensLeft ?? 0,
          open_sessions: s.openSessions ?? 0,
          throughput: this.loaded.throughput.decode,
        });
      } catch (exc) {
        this._emit("log", { message: `heartbeat failed: ${exc.message}` });
        if (exc.status === 410) {
          await this.join({ retrying: true }).catch(() => this._reattach()); // expired (the tab slept): again
          return;
        }
      }
      this._beat();
    }, this.heartbeatInterval);
  }

  /** The relay link dropped (the portal restarted, the network blinked): attach again, with backoff. */
  async _reattach(attempt = 0) {
    if (this.state !== "online" && this.state !== "reconnecting") return;
    this._setState("reconnecting");
    this.link = null;
    await new Promise((r) => setTimeout(r, Math.min(1000 * 2 ** attempt, 30_000)));
    if (this.state !== "reconnecting") return;
    try {
      clearTimeout(this.heartbeatTimer);
      await this.join({ retrying: true });
    } catch (exc) {
      this._emit("log", { message: `relay: ${exc.message}` });
      if (this.state === "failed") return;
      await this._reattach(attempt + 1);
    }
  }

  _fail(exc) {
    this._setState("failed", { message: exc.message || String(exc) });
    this._teardown();
  }

  _teardown() {
    clearTimeout(this.heartbeatTimer);
    if (this.link) this.link.close();
    if (this.worker) this.worker.terminate();
    this.link = null;
    this.worker = null;
  }

  /** Leave gracefully: stop taking sessions, tell the tracker, close the relay link and the worker. */
  async stop() {
    if (this.state === "stopped") return;
    this._setState("leaving");
    if (this.worker) this.worker.postMessage({ op: "drain" });
    clearTimeout(this.heartbeatTimer);
    if (this.nodeId !== null) {
      try {
        await this._api(`/api/v1/nodes/${this.nodeId}/leave/`);
      } catch (exc) {
        this._emit("log", { message: `leave failed: ${exc.message}` });
      }
    }
    this._teardown();
    this._setState("stopped");
  }
}
