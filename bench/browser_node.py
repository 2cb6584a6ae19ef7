"""Benchmark of the browser node: the same span in headless chromium (onnxruntime-web) and in a Python node.

Starts a real portal (daphne) with blocks ``--blocks`` of the default model prepared for browsers, then in one
run, side by side:

- **steps**: decoding steps/s of that span through the wire protocol. Browser: frames encoded in the page and
  answered by the in-page node's Web Worker. Python: a ``swarmnode serve --backend onnxruntime`` node over a
  loopback websocket. Same thread count, same prompt length, same number of one-token steps.
- **route** (``--route``, needs the relay): end-to-end greedy tokens/s of a client whose route passes through
  the browser node (relayed) vs an all-Python route (:mod:`bench.browser_route`).

Usage: ``python bench/browser_node.py`` (``make bench-browser``). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from portal.processes import create_user_with_node_token, live_portal, manage  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
PASSWORD = "bench-Passphrase-9"

# Runs in the page: open a session, send a prompt, then time one-token steps through the in-page node.
PAGE_STEPS = """async ([steps, prompt, hidden]) => {
  const P = await import("/browser-node/node/protocol.js");
  const node = window.layerswarmNode;
  const send = async (msg) => {
    const limits = { ...P.DEFAULT_LIMITS, maxFrameBytes: 1 << 30 };
    const reply = P.decodeFrame(await node.handleFrame(P.encodeFrame(msg), "bench"), limits);
    if (reply.type === "error") throw new Error(`${reply.code}: ${reply.message}`);
    return reply;
  };
  const random = (n) => Float32Array.from({ length: n }, () => (Math.random() - 0.5) * 0.2);
  const tensor = (t) => P.WireTensor.fromFloat32(random(t * hidden), [1, t, hidden]);
  await send({ type: "open_session", id: 1, session_id: "bench", max_length: prompt + steps + 1, dtype: "float32" });
  await send({ type: "step", id: 2, session_id: "bench", position: 0, hidden: tensor(prompt) });
  const times = [];
  for (let i = 0; i < steps; i++) {
    const started = performance.now();
    await send({ type: "step", id: 3 + i, session_id: "bench", position: prompt + i, hidden: tensor(1) });
    times.push((performance.now() - started) / 1000);
  }
  await send({ type: "close_session", id: 99999, session_id: "bench" });
  return times;
}"""


def browser_page(chromium, portal_url: str, threads: int, blocks: tuple[int, int]):
    """A signed-in page whose in-page node loaded ``blocks`` (not joined); returns (page, loaded info)."""
    context = chromium.new_context()
    page = context.new_page()
    page.set_default_timeout(300_000)
    page.goto(f"{portal_url}/accounts/login/")
    page.fill("#id_username", "bench")
    page.fill("#id_password", PASSWORD)
    page.click("form button[type=submit]")
    page.wait_for_url(f"{portal_url}/contribute/")
    page.goto(f"{portal_url}/contribute/browser/?nojoin")
    loaded = page.evaluate(
        """async ([threads, start, end]) => {
          const { BrowserNode } = await import("/browser-node/node/browser_node.js");
          const { spans } = await (await fetch("/browser-node/models/smollm2/spans/")).json();
          const manifest = spans.find((s) => s.start_block === start && s.end_block === end);
          const node = new BrowserNode({ portalUrl: location.origin });
          window.layerswarmNode = node;
          const loaded = await node.start(manifest, { join: false, numThreads: threads });
          return { device: loaded.device, threads: loaded.threads, throughput: loaded.throughput,
                   isolated: crossOriginIsolated };
        }""",
        [threads, *blocks],
    )
    return page, loaded


def python_steps(url: str, steps: int, prompt: int, hidden: int) -> list[float]:
    """Seconds per one-token step of a Python node, through its websocket."""
    from swarmnode.client.remote import RemoteSpan
    from swarmnode.protocol import CloseSession, OpenSession, Step, tensor_from_numpy

    rng = np.random.default_rng(0)
    remote = RemoteSpan(url)
    try:
        remote.request(OpenSession(session_id="bench", max_length=prompt + steps + 1))
        x = tensor_from_numpy((rng.random((1, prompt, hidden), dtype=np.float32) - 0.5) * 0.2)
        remote.request(Step(session_id="bench", position=0, hidden=x))
        times = []
        for i in range(steps):
            x = tensor_from_numpy((rng.random((1, 1, hidden), dtype=np.float32) - 0.5) * 0.2)
            started = time.perf_counter()
            remote.request(Step(session_id="bench", position=prompt + i, hidden=x))
            times.append(time.perf_counter() - started)
        remote.request(CloseSession(session_id="bench"))
        return times
    finally:
        remote.close()


def summary(times: list[float]) -> dict:
    """Median step time and steps/s."""
    median = statistics.median(times)
    return {"median_step_ms": round(median * 1000, 2), "steps_per_s": round(1 / median, 2), "steps": len(times)}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--blocks", default="10:20")
    parser.add_argument("--threads", type=int, default=1, help="compute threads of both nodes")
    parser.add_argument("--steps", type=int, default=64, help="one-token decoding steps timed")
    parser.add_argument("--prompt", type=int, default=16, help="tokens in the cache before timing")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds; medians over all")
    parser.add_argument("--route", action="store_true", help="also time generation through the relay")
    parser.add_argument("--new-tokens", type=int, default=32)
    args = parser.parse_args(argv)
    start, end = (int(x) for x in args.blocks.split(":"))
    from playwright.sync_api import sync_playwright

    from swarmnode.launcher import start_node

    folder = Path(tempfile.mkdtemp(prefix="bench-browser-"))
    result: dict = {"blocks": args.blocks, "threads": args.threads, "prompt_tokens": args.prompt}
    try:
        with live_portal(folder, f"layerswarm_bench_browser_{os.getpid()}", celery=False) as portal:
            manage(["export_browser_span", "--model", "smollm2", "--blocks", args.blocks], portal.env)
            create_user_with_node_token(portal.env, "bench", PASSWORD)
            node = start_node(
                "smollm2", args.blocks, extra_args=["--backend", "onnxruntime", "--num-threads", str(args.threads)]
            )
            try:
                with sync_playwright() as p:
                    chromium = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
                    page, loaded = browser_page(chromium, portal.url, args.threads, (start, end))
                    result["browser_runtime"] = loaded
                    browser, python = [], []
                    for _ in range(args.rounds):  # alternate, so background load hits both alike
                        browser += page.evaluate(PAGE_STEPS, [args.steps, args.prompt, 576])
                        python += python_steps(node.url, args.steps, args.prompt, 576)
                    result["steps"] = {
                        "browser_onnxruntime_web": summary(browser),
                        "python_onnxruntime": summary(python),
                    }
                    result["steps"]["browser_vs_python"] = round(
                        result["steps"]["browser_onnxruntime_web"]["steps_per_s"]
                        / result["steps"]["python_onnxruntime"]["steps_per_s"],
                        3,
                    )
                    if args.route:
                        from bench.browser_route import route_benchmark

                        result["route"] = route_benchmark(portal, chromium, args)
                    chromium.close()
            finally:
                node.process.terminate()
                node.process.wait(timeout=30)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
