// The browser node's Web Worker: fetches and verifies the span, runs it with onnxruntime-web, and answers
// protocol frames, so the page stays responsive while it computes.
//
// Messages in:  {op: "load", manifest, options} | {op: "frame", conn, seq, bytes} | {op: "close", conn}
//               | {op: "prove", seq, nonce} | {op: "drain"}
// Messages out: {event: "progress", phase, loaded, total} | {event: "loaded", device, threads, throughput, proof}
//               | {event: "proof", seq, proof} | {event: "receipt", signed} | {event: "log", message}
//               | {event: "reply", conn, seq, bytes} | {event: "stats", ...} | {event: "error", message, fatal}
import { NodeCore } from "./node_core.js";
import { SpanEngine, fetchVerified, spanProof } from "./engine.js";

let core = null;

function post(message, transfer = []) {
  self.postMessage(message, transfer);
}

async function load(manifest, options) {
  const bytes = await fetchVerified(manifest, (p) => post({ event: "progress", ...p }));
  // Prove to the tracker that these very bytes are loaded (the nonce came from it before the download).
  const proof = options.nonce ? await spanProof(options.nonce, bytes) : "";
  post({ event: "progress", phase: "compile", loaded: manifest.size, total: manifest.size });
  const engine = await SpanEngine.create(bytes, manifest, options);
  post({ event: "progress", phase: "benchmark", loaded: manifest.size, total: manifest.size });
  const throughput = await engine.measure();
  core = new NodeCore(engine, manifest, { ...options, onReceipt: (signed) => post({ event: "receipt", signed }) });
  core.throughput = { decode: throughput.decode, prefill: throughput.prefill };
  post({ event: "loaded", device: engine.device, threads: engine.threads, throughput, proof, info: core.info() });
  setInterval(() => {
    for (const id of core.evictIdle()) post({ event: "log", message: `evicted idle session ${id}` });
    post({ event: "stats", ...stats() });
  }, 1000);
}

function stats() {
  return {
    ...core.stats,
    openSessions: core.sessions.size,
    cacheTokensLeft: core.tokensLeft,
    state: core.state,
    info: core.info(),
  };
}

self.onmessage = async (event) => {
  const msg = event.data || {};
  try {
    if (msg.op === "load") {
      await load(msg.manifest, msg.options || {});
    } else if (msg.op === "frame") {
      if (!core) throw new Error("the span is not loaded yet");
      const reply = await core.handleFrame(new Uint8Array(msg.bytes), msg.conn);
      const bytes = reply.slice().buffer; // an ArrayBuffer of its own, transferred without a copy
      post({ event: "reply", conn: msg.conn, seq: msg.seq, bytes }, [bytes]);
    } else if (msg.op === "close") {
      if (core) core.closeOwnedBy(msg.conn);
    } else if (msg.op === "prove") {
      // Registering again (e.g. after the tab slept): the bytes come back from the HTTP cache and are re-verified.
      const bytes = await fetchVerified(core.manifest);
      post({ event: "proof", seq: msg.seq, proof: await spanProof(msg.nonce, bytes) });
    } else if (msg.op === "drain") {
      if (core) core.state = "draining";
    }
  } catch (exc) {
    post({ event: "error", message: exc.message || String(exc), fatal: msg.op === "load", seq: msg.seq, conn: msg.conn });
  }
};
