"""Generation through a browser node vs an all-Python route, same run (used by ``bench/browser_node.py --route``).

Python nodes serve 0:10, 10:20 and 20:30 (ONNX Runtime, ``--threads``); a headless chromium tab joins for 10:20
through the portal's relay. Two clients pin their routes with explicit peers, A → tab (relayed, end-to-end
encrypted) → C and A → B → C, and generate the same greedy tokens alternately; we report decoding tokens/s
(after the first token) and whether the tokens agree.
"""

from __future__ import annotations

import statistics
import time

from portal.processes import create_user_with_node_token

JOIN = """async ([threads, start, end]) => {
  const { BrowserNode } = await import("/browser-node/node/browser_node.js");
  const { spans } = await (await fetch("/browser-node/models/smollm2/spans/")).json();
  const manifest = spans.find((s) => s.start_block === start && s.end_block === end);
  const node = new BrowserNode({
    tokenUrl: "/contribute/browser/token/",
    csrfToken: document.querySelector("input[name=csrfmiddlewaretoken]").value,
    relayUrl: location.origin.replace(/^http/, "ws") + "/ws/relay",
    portalUrl: location.origin,
  });
  window.layerswarmNode = node;
  await node.start(manifest, { numThreads: threads, cacheTokens: 2048 });
  return node.link.address;
}"""


def _decode_rate(model, ids, new_tokens: int) -> tuple[float, list[int]]:
    times, tokens = [], []
    for token in model.stream(ids, max_new_tokens=new_tokens, do_sample=False, eos_token_id=None):
        times.append(time.perf_counter())
        tokens.append(int(token[0]))
    return (len(times) - 1) / (times[-1] - times[0]), tokens


def route_benchmark(portal, chromium, args) -> dict:
    """Tokens/s through the tab vs through a Python node for the same blocks; nodes stopped afterwards."""
    from swarmnode.client import AutoDistributedModelForCausalLM
    from swarmnode.launcher import start_node

    token = create_user_with_node_token(portal.env, "bench-nodes", "bench-Passphrase-9", "bench server")
    common = ["--portal", portal.url, "--token", token, "--relay", "never"]
    common += ["--backend", "onnxruntime", "--num-threads", str(args.threads)]
    nodes = {blocks: start_node("smollm2", blocks, extra_args=common) for blocks in ("0:10", args.blocks, "20:30")}
    context = chromium.new_context()
    try:
        page = context.new_page()
        page.set_default_timeout(300_000)
        page.goto(f"{portal.url}/accounts/login/")
        page.fill("#id_username", "bench")
        page.fill("#id_password", "bench-Passphrase-9")
        page.click("form button[type=submit]")
        page.wait_for_url(f"{portal.url}/contribute/")
        page.goto(f"{portal.url}/contribute/browser/?nojoin")
        start, end = (int(x) for x in args.blocks.split(":"))
        address = page.evaluate(JOIN, [args.threads, start, end])
        first, middle, last = (nodes[b].url for b in ("0:10", args.blocks, "20:30"))
        browser_route = AutoDistributedModelForCausalLM.from_pretrained("smollm2", peers=[first, address, last])
        python_route = AutoDistributedModelForCausalLM.from_pretrained("smollm2", peers=[first, middle, last])
        ids = python_route.tokenizer.apply_chat_template(
            [{"role": "user", "content": "What is the capital of France?"}],
            add_generation_prompt=True,
            return_tensors="pt",
            return_dict=True,
        )["input_ids"]
        _decode_rate(browser_route, ids, 4)  # warm-up: connections, handshakes
        _decode_rate(python_route, ids, 4)
        rates: dict[str, list[float]] = {"browser": [], "python": []}
        tokens: dict[str, list[int]] = {}
        for _ in range(args.rounds):
            for name, model in (("browser", browser_route), ("python", python_route)):
                rate, tokens[name] = _decode_rate(model, ids, args.new_tokens)
                rates[name].append(rate)
        browser, python = statistics.median(rates["browser"]), statistics.median(rates["python"])
        page.evaluate("window.layerswarmNode.stop()")
        return {
            "new_tokens": args.new_tokens,
            "through_browser_node_tok_s": round(browser, 2),
            "all_python_tok_s": round(python, 2),
            "browser_vs_python": round(browser / python, 3),
            "tokens_equal": tokens["browser"] == tokens["python"],
            "first_32_equal": tokens["browser"][:32] == tokens["python"][:32],
        }
    finally:
        context.close()
        for node in nodes.values():
            node.process.terminate()
        for node in nodes.values():
            node.process.wait(timeout=30)
