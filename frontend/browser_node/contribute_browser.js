// "Contribute from this browser": choose a span, start the in-page node, watch it serve, stop it.
import { BrowserNode } from "./browser_node.js";

const config = JSON.parse(document.getElementById("browser-node-config").textContent);
const $ = (id) => document.getElementById(id);
const choice = $("span-choice");
const startButton = $("start-node");
const stopButton = $("stop-node");
const errorBox = $("node-error");
const live = $("node-live");
const BYTES_PER_TOKEN = 15360; // 10 blocks x 3 KV heads x 64 dims x (K+V) x 4 bytes, for SmolLM2

let node = null;
const history = []; // [time, steps/s], for the chart

function showError(message) {
  errorBox.textContent = message;
  errorBox.hidden = false;
}

function setState(state, text) {
  live.dataset.state = state;
  const badge = $("node-state");
  badge.textContent = text || state;
  badge.className = `state ${state === "online" ? "online" : state === "failed" ? "offline" : "joining"}`;
}

// Suggest a cache size and a span from the device's memory (navigator.deviceMemory is in GB, capped at 8).
function suggest() {
  const memoryGb = navigator.deviceMemory || 4;
  const cacheTokens = memoryGb >= 8 ? 8192 : memoryGb >= 4 ? 4096 : 1024;
  $("cache-tokens").value = cacheTokens;
  let best = null;
  for (const option of choice.options) {
    const size = Number(option.dataset.size);
    if (size + cacheTokens * BYTES_PER_TOKEN < (memoryGb * 2 ** 30) / 4) best = best && Number(best.dataset.size) > size ? best : option;
  }
  if (best) best.selected = true;
  $("memory-hint").textContent = `this device reports about ${memoryGb} GB of memory; suggested: ${cacheTokens} tokens (${Math.round(
    (cacheTokens * BYTES_PER_TOKEN) / 2 ** 20,
  )} MB)`;
}

function drawChart() {
  const canvas = $("steps-chart");
  const ctx = canvas.getContext("2d");
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  const now = performance.now();
  const points = history.filter(([t]) => now - t < 120_000);
  const max = Math.max(1, ...points.map(([, v]) => v));
  ctx.strokeStyle = "#ccd";
  ctx.strokeRect(0, 0, canvas.width, canvas.height);
  ctx.fillStyle = "#667";
  ctx.fillText(`${max.toFixed(1)} steps/s`, 4, 12);
  ctx.strokeStyle = "#2e9d4f";
  ctx.beginPath();
  points.forEach(([t, v], i) => {
    const x = canvas.width - ((now - t) / 120_000) * canvas.width;
    const y = canvas.height - (v / max) * (canvas.height - 16);
    if (i === 0) ctx.moveTo(x, y);
    else ctx.lineTo(x, y);
  });
  ctx.stroke();
}

let last = null;
function onStats(s) {
  $("live-sessions").textContent = s.openSessions;
  $("live-tokens").textContent = s.tokens;
  if (s.receipts) {
    $("live-earnings").textContent = `${s.blockTokens} credits from ${s.receipts} countersigned usage receipt(s), paid to your account when the portal settles them`;
  }
  const now = performance.now();
  if (last) {
    const rate = ((s.steps - last.steps) * 1000) / Math.max(1, now - last.t);
    $("live-steps").textContent = rate.toFixed(1);
    history.push([now, rate]);
    if (history.length > 600) history.shift();
    drawChart();
  }
  last = { t: now, steps: s.steps };
}

async function fetchManifest(model, start, end) {
  const response = await fetch(config.spans_url.replace("MODEL", encodeURIComponent(model)));
  if (!response.ok) throw new Error(`span list: HTTP ${response.status}`);
  const { spans } = await response.json();
  const manifest = spans.find((s) => s.start_block === start && s.end_block === end);
  if (!manifest) throw new Error(`blocks ${start}:${end} of ${model} are not prepared for browsers`);
  return manifest;
}

async function start() {
  errorBox.hidden = true;
  const [model, start, end] = choice.value.split("|");
  startButton.disabled = true;
  choice.disabled = true;
  const csrf = document.querySelector("input[name=csrfmiddlewaretoken]");
  const token = node ? node.token : null; // one node token per tab, reused when it starts again
  node = new BrowserNode({
    tokenUrl: config.token_url,
    csrfToken: csrf ? csrf.value : "",
    relayUrl: new URL(config.relay_url, location.href).href.replace(/^http/, "ws"),
    portalUrl: location.origin,
  });
  node.token = token;
  window.layerswarmNode = node; // for the browser tests and the curious
  node.addEventListener("progress", ({ detail }) => {
    $("load-progress").value = detail.total ? detail.loaded / detail.total : 0;
    const mb = (n) => (n / 2 ** 20).toFixed(0);
    $("load-phase").textContent =
      detail.phase === "download" ? `downloading ${mb(detail.loaded)} / ${mb(detail.total)} MB` : `${detail.phase}…`;
  });
  node.addEventListener("loaded", ({ detail }) => {
    $("load-phase").textContent = "loaded and verified";
    $("live-blocks").textContent = `${detail.info.model} ${detail.info.start_block}:${detail.info.end_block}`;
    $("live-runtime").textContent = `onnxruntime-web, ${detail.device}, ${detail.threads} thread(s)`;
    $("live-throughput").textContent = `${detail.throughput.decode.toFixed(1)} decoding steps/s (${detail.throughput.stepMs.toFixed(1)} ms per step)`;
  });
  node.addEventListener("stats", ({ detail }) => onStats(detail));
  node.addEventListener("state", ({ detail }) => {
    setState(detail.state);
    if (detail.state === "online") $("live-node").textContent = `#${detail.nodeId} (relayed)`;
    if (detail.state === "failed") showError(detail.message);
    if (["failed", "stopped"].includes(detail.state)) {
      startButton.disabled = false;
      choice.disabled = false;
      stopButton.disabled = true;
    }
  });
  stopButton.disabled = false;
  try {
    const manifest = await fetchManifest(model, Number(start), Number(end));
    await node.start(manifest, { cacheTokens: Number($("cache-tokens").value), join: !new URLSearchParams(location.search).has("nojoin") });
  } catch (exc) {
    showError(exc.message);
  }
}

startButton.addEventListener("click", start);
stopButton.addEventListener("click", () => node && node.stop());
window.addEventListener("pagehide", () => {
  if (node && node.state === "online") {
    // The tab is going away: tell the tracker now (keepalive lets the request outlive the page).
    fetch(`/api/v1/nodes/${node.nodeId}/leave/`, {
      method: "POST",
      keepalive: true,
      headers: { Authorization: `Bearer ${node.token}`, "Content-Type": "application/json" },
      body: "{}",
    });
  }
});
if (!choice.options.length) startButton.disabled = true;
suggest();
setState("idle");
