// "Contribute a GPU": keep the table of the user's nodes live.
import { el, getJSON, poll } from "./dom.js";

const table = document.getElementById("my-nodes");

const DAY_MS = 24 * 3600 * 1000;

// Nodes offline for more than a day fold into one line (as on the server-rendered page).
function longGone(n) {
  return n.state === "offline" && Date.now() - new Date(n.last_seen_at).getTime() > DAY_MS;
}

function render(all) {
  const nodes = all.filter((n) => !longGone(n));
  const folded = all.length - nodes.length;
  const rows = nodes.map((n) =>
    el(
      "tr",
      { "data-node": n.id },
      el("td", {}, `#${n.id}`),
      el("td", {}, n.model),
      el("td", {}, `${n.start_block}:${n.end_block}`),
      el("td", {}, el("span", { class: `state ${n.state}` }, n.banned ? "banned" : n.state)),
      el("td", {}, n.connection),
      el("td", {}, n.throughput.toFixed(1)),
      el("td", {}, new Date(n.last_seen_at).toLocaleTimeString()),
    ),
  );
  if (folded) {
    const line = `${folded} node${folded === 1 ? "" : "s"} offline for more than a day`;
    rows.push(el("tr", { class: "folded-nodes" }, el("td", { colspan: 7 }, line)));
  }
  if (!rows.length) rows.push(el("tr", {}, el("td", { colspan: 7 }, "No nodes yet: start one with the commands above.")));
  table.tBodies[0].replaceChildren(...rows);
}

if (table) poll(async () => render(await getJSON(table.dataset.src)), 3000);
