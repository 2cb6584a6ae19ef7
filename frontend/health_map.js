// The swarm health map: one row of cells per model (one cell per block) and one bar per node under it.
import { el, getJSON, poll } from "./dom.js";

const RANK = { online: 3, joining: 2, offline: 1 };

function blockState(block, nodes) {
  let best = "uncovered";
  for (const n of nodes) {
    if (n.start_block <= block && block < n.end_block && (RANK[n.state] || 0) > (RANK[best] || 0)) best = n.state;
  }
  return best;
}

function renderModel(m) {
  const banner = m.covered
    ? el("p", { class: "banner ok", "data-covered": "true" }, `${m.model}: all ${m.num_blocks} blocks covered`)
    : el("p", { class: "banner bad", "data-covered": "false" }, `${m.model}: ${m.banner}`);
  const columns = { gridTemplateColumns: `repeat(${m.num_blocks}, minmax(1.4rem, 1fr))` };
  const cells = [];
  for (let b = 0; b < m.num_blocks; b++) {
    const covering = m.nodes.filter((n) => n.start_block <= b && b < n.end_block);
    const state = blockState(b, m.nodes);
    const title = covering.length
      ? covering.map((n) => `node #${n.id} (${n.owner}) ${n.state}, ${n.connection}`).join("\n")
      : "no node serves this block";
    cells.push(el("div", { class: `block ${state}`, "data-block": b, "data-state": state, title }, b));
  }
  const relayed = m.nodes.filter((n) => n.connection === "relay" && n.state !== "offline").length;
  const lanes = m.nodes.map((n) =>
    el(
      "div",
      {
        class: `lane ${n.state} ${n.connection === "relay" ? "relayed" : "direct"}`,
        "data-node": n.id,
        "data-connection": n.connection,
        "data-backend": n.backend,
        style: { gridColumn: `${n.start_block + 1} / ${n.end_block + 1}` },
        title:
          `${n.url || "relayed"} · ${n.backend}/${n.device}/${n.dtype} · v${n.version}` +
          (n.connection === "relay" ? " · behind NAT: clients reach it through a relay (end-to-end encrypted)" : ""),
      },
      `#${n.id} ${n.owner} · ${n.state} · ${n.throughput.toFixed(1)} tok/s · ` +
        (n.connection === "relay" ? "⇄ relayed" : "direct") +
        (n.backend === "onnxruntime-web" ? " · browser" : ""),
    ),
  );
  return el(
    "section",
    { class: "model-health", "data-model": m.model },
    el(
      "h2",
      {},
      `${m.model} `,
      el(
        "small",
        { "data-relayed": relayed, "data-kind": m.kind },
        `${m.kind} · ${m.architecture || "?"} · ${m.num_blocks} blocks · ${m.online_nodes} online nodes · ${relayed} relayed`,
      ),
    ),
    banner,
    el("div", { class: "blocks", style: columns }, cells),
    el("div", { class: "lanes", style: columns }, lanes),
  );
}

function render(root, health) {
  const sections = health.models.map(renderModel);
  root.replaceChildren(...(sections.length ? sections : [el("p", {}, "No models yet.")]));
}

// Live: the portal pushes the new health over a websocket when coverage changes. Polling stays on as a
// fallback (every 2 s without the socket, every 10 s with it: changes made by other processes, such as
// the Celery task that expires silent nodes, reach the socket only when the channel layer is Redis).
function connect(root, state) {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const model = new URLSearchParams(root.dataset.src.split("?")[1] || "").get("model");
  const ws = new WebSocket(`${scheme}://${location.host}/ws/swarm/health/${model ? `?model=${model}` : ""}`);
  ws.onopen = () => {
    state.live = true;
    root.dataset.live = "true";
  };
  ws.onmessage = (event) => render(root, JSON.parse(event.data));
  ws.onclose = () => {
    state.live = false;
    root.dataset.live = "false";
    setTimeout(() => connect(root, state), 5000);
  };
}

const root = document.getElementById("health-map");
const state = { live: false, lastPoll: 0 };
render(root, JSON.parse(document.getElementById("health-data").textContent));
connect(root, state);
poll(async () => {
  if (state.live && Date.now() - state.lastPoll < 10000) return;
  state.lastPoll = Date.now();
  render(root, await getJSON(root.dataset.src));
}, 2000);
