// Time-series charts for the ledger and reputation pages, drawn with the vendored uPlot (frontend/vendor/uplot).
//
// timeChart(container, {x, series, yMin, yMax, threshold, height}) draws one chart:
//   x:      Unix seconds, ascending
//   series: [{label, values, color, bars}]  one line (or bars) per entry, values aligned with x;
//                                           colors as #rrggbb (bars are filled with the color at 40%)
//   threshold: {value, label}               a dashed horizontal line (e.g. the reputation threshold)
// A chart with no points shows a short "no data yet" note instead of an empty frame.

import uPlot from "./vendor/uplot/uPlot.esm.js";
import { el } from "./dom.js";

function barsPath() {
  return uPlot.paths.bars ? uPlot.paths.bars({ size: [0.6, 40] }) : undefined;
}

// The x range to show: bars get half a slot of room on both sides (so the first and last bars are not cut
// in half); lines end now at the latest and always span at least `minSpan` seconds.
function xRange(x, bars, minSpan) {
  const first = x[0];
  const last = x[x.length - 1];
  if (bars) {
    const half = x.length > 1 ? (x[1] - x[0]) / 2 : 43200;
    return [first - half, last + half];
  }
  const end = Math.max(last, Date.now() / 1000);
  return [Math.min(first, end - minSpan), end];
}

export function timeChart(container, { x, series, yMin, yMax, threshold, height = 180, minSpan = 3600 }) {
  container.replaceChildren();
  if (!x || x.length === 0) {
    container.append(el("p", { class: "muted chart-empty" }, "no data yet"));
    return null;
  }
  const data = [x, ...series.map((s) => s.values)];
  const lines = series.map((s) => ({
    label: s.label,
    stroke: s.color,
    width: 2,
    fill: s.bars ? s.color + "66" : undefined,
    paths: s.bars ? barsPath() : undefined,
    points: { show: !s.bars && x.length < 40 },
  }));
  const hooks = {};
  if (threshold) {
    hooks.draw = [
      (u) => {
        const y = u.valToPos(threshold.value, "y", true);
        const ctx = u.ctx;
        ctx.save();
        ctx.strokeStyle = "#c33";
        ctx.setLineDash([6, 4]);
        ctx.beginPath();
        ctx.moveTo(u.bbox.left, y);
        ctx.lineTo(u.bbox.left + u.bbox.width, y);
        ctx.stroke();
        ctx.restore();
      },
    ];
  }
  const width = Math.max(280, Math.min(container.clientWidth || 640, 900));
  const opts = {
    width,
    height,
    series: [{}, ...lines],
    scales: {
      x: { time: true, range: () => xRange(x, series.some((s) => s.bars), minSpan) },
      y: yMin !== undefined ? { range: [yMin, yMax] } : { auto: true },
    },
    axes: [{}, { size: 60 }],
    legend: { show: true },
    hooks,
  };
  const chart = new uPlot(opts, data, container);
  container.dataset.points = String(x.length);
  return chart;
}

// Draw every element with data-chart="ID" from the JSON in <script id="ID" type="application/json">.
// The element's data-kind says which layout: "credits" (earned/spent bars), "earnings" (one node's
// block-tokens per day), "reputation" (score 0..1 with the threshold).
export function drawAll(root = document) {
  for (const node of root.querySelectorAll("[data-chart]")) {
    const source = document.getElementById(node.dataset.chart);
    if (!source) continue;
    const d = JSON.parse(source.textContent);
    const kind = node.dataset.kind;
    if (kind === "credits") {
      timeChart(node, {
        x: d.days,
        series: [
          { label: "earned", values: d.earned, color: "#22aa77", bars: true },
          { label: "spent", values: d.spent, color: "#dd6622", bars: true },
        ],
      });
    } else if (kind === "earnings") {
      timeChart(node, { x: d.days, series: [{ label: "block-tokens served", values: d.earned, color: "#22aa77", bars: true }] });
    } else if (kind === "reputation") {
      timeChart(node, {
        x: d.at,
        series: [{ label: "reputation", values: d.score, color: "#3366cc" }],
        yMin: 0,
        yMax: 1,
        threshold: d.threshold !== undefined ? { value: d.threshold } : undefined,
      });
    }
  }
}
