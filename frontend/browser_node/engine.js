// A span's ONNX graph run by onnxruntime-web: fetched, verified by SHA-256, then stepped with a KV cache.
// The graph is the one the Python ONNX Runtime backend exports (swarmnode/runtime/graph.py SpanGraph):
//   (hidden (B,T,H), past_k/past_v (L,B,KV,P,D), position_ids (B,T) int64, attn_mask (B,1,T,P+T))
//   -> (out (B,T,H), new_k/new_v (L,B,KV,T,D))
let ort = null; // the onnxruntime-web build in use: WASM, or WebGPU on a real adapter

const MASKED = -3.4028234663852886e38; // torch.finfo(float32).min, as swarmnode's causal_mask

export class VerificationError extends Error {}

function hex(buffer) {
  return Array.from(new Uint8Array(buffer), (b) => b.toString(16).padStart(2, "0")).join("");
}

/** Download ``manifest.url`` with progress, refuse anything but exactly ``manifest.size`` bytes with ``manifest.sha256``. */
export async function fetchVerified(manifest, onProgress = () => {}) {
  const response = await fetch(manifest.url, { cache: "force-cache" });
  if (!response.ok) throw new Error(`span file: HTTP ${response.status}`);
  const bytes = new Uint8Array(manifest.size);
  let loaded = 0;
  const reader = response.body.getReader();
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    if (loaded + value.byteLength > manifest.size) {
      await reader.cancel();
      throw new VerificationError(`span file is larger than the announced ${manifest.size} bytes: refused`);
    }
    bytes.set(value, loaded);
    loaded += value.byteLength;
    onProgress({ phase: "download", loaded, total: manifest.size });
  }
  if (loaded !== manifest.size) {
    throw new VerificationError(`span file has ${loaded} bytes, the portal announced ${manifest.size}: refused`);
  }
  onProgress({ phase: "verify", loaded, total: manifest.size });
  const digest = hex(await crypto.subtle.digest("SHA-256", bytes));
  if (digest !== manifest.sha256) {
    throw new VerificationError(
      `span file failed verification: its SHA-256 is ${digest}, expected ${manifest.sha256}. Refusing to run it.`,
    );
  }
  return bytes;
}

/**
 * Proof of holding the span file's bytes (portal/swarm/browser_node.py span_proof): SHA-256 of the nonce and of
 * 16 ranges of 4096 bytes at offsets derived from it. The portal checks it when the node registers.
 */
export async function spanProof(nonce, bytes) {
  const RANGES = 16;
  const RANGE_BYTES = 4096;
  const prefix = new TextEncoder().encode(nonce);
  const room = BigInt(Math.max(1, bytes.length - RANGE_BYTES + 1));
  const parts = [prefix];
  for (let i = 0; i < RANGES; i++) {
    const seed = new Uint8Array(prefix.length + 4);
    seed.set(prefix);
    new DataView(seed.buffer).setUint32(prefix.length, i, true);
    const digest = new DataView(await crypto.subtle.digest("SHA-256", seed));
    const offset = Number(digest.getBigUint64(0, true) % room);
    parts.push(bytes.subarray(offset, Math.min(offset + RANGE_BYTES, bytes.length)));
  }
  const total = parts.reduce((n, p) => n + p.length, 0);
  const joined = new Uint8Array(total);
  let at = 0;
  for (const p of parts) {
    joined.set(p, at);
    at += p.length;
  }
  return hex(await crypto.subtle.digest("SHA-256", joined));
}

/** Can WebGPU run here on a real adapter (never a software fallback)? */
export async function realWebGpu() {
  if (!globalThis.navigator?.gpu) return false;
  try {
    const adapter = await navigator.gpu.requestAdapter();
    if (!adapter) return false;
    const info = adapter.info || {};
    return !info.isFallbackAdapter && !adapter.isFallbackAdapter;
  } catch {
    return false;
  }
}

/** One session's keys and values, (L, B, KV, P, D) each, P = ``length``. */
export class KvCache {
  constructor(layers, batch, kv, headDim) {
    this.dims = [layers, batch, kv, headDim];
    this.length = 0;
    this.k = new Float32Array(0);
    this.v = new Float32Array(0);
  }

  get batch() {
    return this.dims[1];
  }

  // Append (L, B, KV, T, D) new positions along the P axis.
  append(newK, newV, t) {
    const [l, b, kv, d] = this.dims;
    const p = this.length;
    const rows = l * b * kv;
    const k = new Float32Array(rows * (p + t) * d);
    const v = new Float32Array(rows * (p + t) * d);
    for (let r = 0; r < rows; r++) {
      k.set(this.k.subarray(r * p * d, (r + 1) * p * d), r * (p + t) * d);
      k.set(newK.subarray(r * t * d, (r + 1) * t * d), r * (p + t) * d + p * d);
      v.set(this.v.subarray(r * p * d, (r + 1) * p * d), r * (p + t) * d);
      v.set(newV.subarray(r * t * d, (r + 1) * t * d), r * (p + t) * d + p * d);
    }
    this.k = k;
    this.v = v;
    this.length = p + t;
  }
}

export class SpanEngine {
  /**
   * @param {Uint8Array} bytes the verified ONNX file
   * @param {object} manifest the portal's span manifest (hidden_size, num_layers, num_kv_heads, head_dim)
   * @param {object} options ``{numThreads, webgpu}``
   */
  static async create(bytes, manifest, options = {}) {
    const gpu = options.webgpu !== false && (await realWebGpu());
    ort = await import(gpu ? "../ort/ort.webgpu.min.mjs" : "../ort/ort.wasm.min.mjs");
    ort.env.wasm.wasmPaths = new URL("../ort/", import.meta.url).href;
    const isolated = globalThis.crossOriginIsolated === true;
    const cores = globalThis.navigator?.hardwareConcurrency || 1;
    ort.env.wasm.numThreads = isolated ? Math.max(1, Math.min(options.numThreads || cores, 4)) : 1;
    const providers = gpu ? ["webgpu", "wasm"] : ["wasm"];
    const session = await ort.InferenceSession.create(bytes, {
      executionProviders: providers,
      graphOptimizationLevel: "all",
    });
    const engine = new SpanEngine(session, manifest);
    engine.device = gpu ? "webgpu" : "wasm";
    engine.threads = ort.env.wasm.numThreads;
    return engine;
  }

  constructor(session, manifest) {
    this.session = session;
    this.hiddenSize = manifest.hidden_size;
    this.layers = manifest.num_layers;
    this.kv = manifest.num_kv_heads;
    this.headDim = manifest.head_dim;
    this.queue = Promise.resolve(); // one run at a time: an ORT session is not re-entrant
  }

  newCache(batch = 1) {
    return new KvCache(this.layers, batch, this.kv, this.headDim);
  }

  /** Run ``values`` (B, T, H) at the cache's position, appending to it. Returns the output Float32Array. */
  step(values, batch, tokens, cache) {
    const run = this.queue.then(() => this._step(values, batch, tokens, cache));
    this.queue = run.catch(() => {});
    return run;
  }

  async _step(values, b, t, cache) {
    if (cache.batch !== b) {
      if (cache.length) throw new Error(`batch size changed from ${cache.batch} to ${b} within a session`);
      cache.dims[1] = b;
    }
    const p = cache.length;
    const [l, , kv, d] = cache.dims;
    const positions = new BigInt64Array(b * t);
    for (let row = 0; row < b; row++) for (let i = 0; i < t; i++) positions[row * t + i] = BigInt(p + i);
    const total = p + t;
    const mask = new Float32Array(b * t * total);
    for (let row = 0; row < b; row++) {
      for (let i = 0; i < t; i++) {
        const base = (row * t + i) * total;
        for (let j = p + i + 1; j < total; j++) mask[base + j] = MASKED; // no peeking at later new tokens
      }
    }
    const feeds = {
      hidden: new ort.Tensor("float32", values, [b, t, this.hiddenSize]),
      past_k: new ort.Tensor("float32", cache.k, [l, b, kv, p, d]),
      past_v: new ort.Tensor("float32", cache.v, [l, b, kv, p, d]),
      position_ids: new ort.Tensor("int64", positions, [b, t]),
      attn_mask: new ort.Tensor("float32", mask, [b, 1, t, total]),
    };
    const result = await this.session.run(feeds);
    const out = result.out.data;
    cache.append(result.new_k.data, result.new_v.data, t);
    for (const tensor of Object.values(result)) tensor.dispose?.();
    return out;
  }

  /** Tokens/s of one-token cached steps (decode) and of a long uncached pass (prefill), as swarmnode measures them. */
  async measure(steps = 8, prefillTokens = 128) {
    const h = this.hiddenSize;
    const random = (n) => Float32Array.from({ length: n }, () => (Math.random() - 0.5) * 0.2);
    const cache = this.newCache();
    await this.step(random(h), 1, 1, cache); // warm-up
    const times = [];
    for (let i = 0; i < steps; i++) {
      const started = performance.now();
      await this.step(random(h), 1, 1, cache);
      times.push(performance.now() - started);
    }
    times.sort((a, b) => a - b);
    const median = times[Math.floor(times.length / 2)];
    await this.step(random(prefillTokens * h), 1, prefillTokens, this.newCache());
    const started = performance.now();
    await this.step(random(prefillTokens * h), 1, prefillTokens, this.newCache());
    const prefillMs = performance.now() - started;
    return { decode: 1000 / Math.max(median, 1e-3), prefill: (prefillTokens * 1000) / Math.max(prefillMs, 1e-3), stepMs: median };
  }
}
