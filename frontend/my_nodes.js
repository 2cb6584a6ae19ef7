// "Contribute a GPU": keep the table of the user's nodes live.
import { el, getJSON, poll } from "./dom.js";

const table = document.getElementById("my-nodes");

function render(nodes) {
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
  if (!rows.length) rows.push(el("tr", {}, el("td", { colspan: 7 }, "No nodes yet: start one with the commands above.")));
  table.tBodies[0].replaceChildren(...rows);
}

if (table) poll(async () => render(await getJSON(table.dataset.src)), 3000);
