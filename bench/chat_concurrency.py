"""Concurrency benchmark of the chat: N simultaneous chat websockets against the demo swarm.

Starts what ``make demo`` starts (daphne with its gateway, three nodes of SmolLM2 registered through
the tracker; with ``REDIS_URL`` set, the Redis channel layer and a separate ``run_gateway`` process),
logs in over HTTP like a browser, then:

1. solo: asks each of the N questions alone, one after the other (the reference answers);
2. concurrent: opens N websockets and asks all N questions at once (greedy, ``--new-tokens`` each).

Checks that nothing is lost or mixed up: every socket gets exactly one answer, for its own conversation,
equal to the streamed pieces, stored under its own question, and (greedy) equal to its solo answer.
Reports the aggregate decoding rate (all answers' tokens / wall time) and time-to-first-token
percentiles seen by the browser. ``--portal URL`` runs against an already running demo instead
(log in as ``--user`` / ``--password``, default the demo account). Prints one JSON object.

Usage: ``python bench/chat_concurrency.py --sessions 20`` (``make bench-chat``).
"""

from __future__ import annotations

import argparse
import asyncio
import html
import json
import os
import re
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from contextlib import ExitStack
from http.cookiejar import CookieJar
from pathlib import Path

# The repository instead of this script's folder: a module there (bench/profile.py) would shadow the standard
# library's ``profile``, which torch imports through cProfile.
sys.path[:1] = [str(Path(__file__).resolve().parent.parent)]

TOPICS = ["the moon", "bread", "a lighthouse", "rivers", "bicycles", "owls", "volcanoes", "chess", "tea",
          "glaciers", "bees", "trains", "violins", "deserts", "comets", "libraries", "coral reefs", "windmills",
          "penguins", "maps", "clocks", "tigers", "bridges", "snow", "kites"]  # fmt: skip


def login(portal: str, user: str, password: str) -> str:
    """Log in through the login form (CSRF and all); return the session cookie."""
    jar = CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    page = opener.open(f"{portal}/accounts/login/", timeout=30).read().decode()
    csrf = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page).group(1)
    form = urllib.parse.urlencode({"username": user, "password": password, "csrfmiddlewaretoken": csrf}).encode()
    request = urllib.request.Request(f"{portal}/accounts/login/", data=form, headers={"Referer": f"{portal}/"})
    opener.open(request, timeout=30)
    session = next((c.value for c in jar if c.name == "sessionid"), None)
    if not session:
        raise SystemExit(f"could not log in to {portal} as {user}")
    return session


def stored(portal: str, session: str, conversation: int) -> list[tuple[str, str]]:
    """The conversation as the chat page shows it after a reload: (role, content) pairs."""
    request = urllib.request.Request(f"{portal}/chat/{conversation}/", headers={"Cookie": f"sessionid={session}"})
    page = urllib.request.urlopen(request, timeout=30).read().decode()
    raw = re.search(r'<script id="chat-state" type="application/json">(.*?)</script>', page, re.S).group(1)
    return [(m["role"], m["content"]) for m in json.loads(html.unescape(raw))["messages"]]


async def ask(portal: str, session: str, question: str, new_tokens: int, start: asyncio.Event | None = None) -> dict:
    """One chat websocket asking one question; returns what it saw, with timings."""
    import websockets

    url = portal.replace("http", "ws", 1) + "/ws/chat/"
    headers = {"Cookie": f"sessionid={session}", "Origin": portal}
    async with websockets.connect(url, additional_headers=headers, open_timeout=60, max_size=None) as ws:
        if start is not None:
            await start.wait()  # every socket is open before anyone asks
        sent = time.perf_counter()
        settings = {"temperature": 0, "max_new_tokens": new_tokens}
        await ws.send(json.dumps({"type": "send", "conversation": None, "content": question, "settings": settings}))
        seen = {"question": question, "pieces": [], "answers": 0, "conversation": None, "ttft_s": None}
        while True:
            message = json.loads(await asyncio.wait_for(ws.recv(), 600))
            kind = message["type"]
            if kind == "accepted":  # the question is stored and admitted (database work on the portal)
                seen["conversation"] = message["conversation"]["id"]
                seen["accepted_s"] = time.perf_counter() - sent
            elif kind == "started":  # a gateway took the request and built the prompt
                seen["started_s"] = time.perf_counter() - sent
            elif kind == "token":
                if seen["ttft_s"] is None:
                    seen["ttft_s"] = time.perf_counter() - sent
                seen["pieces"].append(message["text"])
                seen["wrong_conversation"] = seen.get("wrong_conversation", 0) + (
                    message["conversation"] != seen["conversation"]
                )
            elif kind == "done":
                seen.update(answers=seen["answers"] + 1, done=message, total_s=time.perf_counter() - sent)
                break
            elif kind == "error":
                seen["error"] = message
                break
        seen["finished_at"] = time.perf_counter()
        return seen


def direct(portal: str, questions: list[str], new_tokens: int) -> dict:
    """The same N questions at once straight through the swarm client (one thread each, no portal in the
    path): what the gateway's numbers are compared with."""
    import threading

    import django
    import torch

    # The gateway's own modules need Django set up in this process too (a local run: DEBUG without a secret key).
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")
    if not os.environ.get("DJANGO_SECRET_KEY"):
        os.environ.setdefault("DJANGO_DEBUG", "1")
    django.setup()

    from portal.generation.pool import GATEWAY_FAILOVER
    from portal.generation.prompts import chat_prompt
    from swarmnode.client import AutoDistributedModelForCausalLM

    # The gateway's failover policy: with the client's default one, 20 sessions at once on a busy 2-core
    # machine make nodes look dead (their queues outgrow the adaptive step timeout) and sessions fail.
    model = AutoDistributedModelForCausalLM.from_pretrained("smollm2", portal=portal, failover=GATEWAY_FAILOVER)
    prompts = [chat_prompt(model.tokenizer, [{"role": "user", "content": q}], new_tokens, 8192).ids for q in questions]
    out: dict[int, dict] = {}
    barrier = threading.Barrier(len(questions) + 1)

    def one(i: int) -> None:
        barrier.wait()
        sent, ids, ttft = time.perf_counter(), [], None
        opts = dict(max_new_tokens=new_tokens, do_sample=False, top_k=None)
        for token in model.stream(torch.tensor([prompts[i]]), **opts):
            ttft = ttft if ttft is not None else time.perf_counter() - sent
            ids.append(int(token[0]))
        out[i] = {"ttft_s": ttft, "tokens": len(ids), "text": model.tokenizer.decode(ids, skip_special_tokens=True)}

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(questions))]
    for t in threads:
        t.start()
    barrier.wait()
    began = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - began
    ttfts = [r["ttft_s"] for r in out.values()]
    return {
        "aggregate_tok_s": round(sum(r["tokens"] for r in out.values()) / wall, 2),
        "ttft_s": {"p50": round(pct(ttfts, 0.5), 3), "p95": round(pct(ttfts, 0.95), 3)},
        "answers": [out[i]["text"] for i in range(len(questions))],
    }


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))] if values else float("nan")


async def run(portal: str, session: str, sessions: int, new_tokens: int, solo: bool, compare: bool = True) -> dict:
    questions = [f"Write three sentences about {TOPICS[i % len(TOPICS)]}." for i in range(sessions)]
    await ask(portal, session, "Hello!", 8)  # warm-up: the gateway loads the model's client parts
    reference = {}
    if solo:
        for q in questions:
            result = await ask(portal, session, q, new_tokens)
            reference[q] = result["done"]["message"]["content"] if "done" in result else None
    start = asyncio.Event()
    tasks = [asyncio.create_task(ask(portal, session, q, new_tokens, start)) for q in questions]
    await asyncio.sleep(2.0)  # let every socket connect
    began = time.perf_counter()
    start.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    wall = max(r["finished_at"] for r in results if isinstance(r, dict)) - began

    failures, mixed, tokens, ttfts, unequal = [], [], 0, [], []
    conversations = set()
    phases: dict[str, list[float]] = {"accepted_s": [], "started_s": []}  # where time to first token goes
    messages: list[int] = []  # token messages per answer (several tokens may share one)
    for q, r in zip(questions, results, strict=True):
        if not isinstance(r, dict) or r.get("answers") != 1:
            failures.append({"question": q, "got": repr(r)[:300] if not isinstance(r, dict) else r.get("error")})
            continue
        answer = r["done"]["message"]["content"]
        ok = r["done"]["conversation"] == r["conversation"] and "".join(r["pieces"]) == answer
        ok = ok and not r.get("wrong_conversation") and r["conversation"] not in conversations
        ok = ok and stored(portal, session, r["conversation"]) == [("user", q), ("assistant", answer)]
        conversations.add(r["conversation"])
        if not ok:
            mixed.append(q)
        if solo and reference.get(q) != answer:
            unequal.append(q)
        tokens += r["done"]["usage"]["completion_tokens"]
        ttfts.append(r["ttft_s"])
        for phase in phases:
            phases[phase].append(r.get(phase) or 0.0)
        messages.append(r["done"].get("token_messages") or len(r["pieces"]))
    if not compare:  # profiling the chat path alone
        swarm = {"aggregate_tok_s": 0.0, "ttft_s": None, "answers": [None] * len(questions)}
    else:
        swarm = await asyncio.to_thread(direct, portal, questions, new_tokens)
    same = sum(
        1 for q, r, d in zip(questions, results, swarm.pop("answers"), strict=True)
        if d is not None and isinstance(r, dict) and "done" in r
        and r["done"]["message"]["content"].strip() == d.strip()
    )  # fmt: skip
    gateway_rate = round(tokens / wall, 2)
    return {
        "sessions": sessions,
        "completed": sessions - len(failures),
        "lost": failures,
        "mixed_up": mixed,
        "equal_to_solo_answer": None if not solo else sessions - len(failures) - len(unequal),
        "new_tokens_each": new_tokens,
        "completion_tokens": tokens,
        "wall_s": round(wall, 2),
        "aggregate_tok_s": gateway_rate,
        "ttft_s": {
            "p50": round(pct(ttfts, 0.5), 3),
            "p95": round(pct(ttfts, 0.95), 3),
            "max": round(max(ttfts), 3) if ttfts else None,
        },
        "ttft_phases_p50_s": {k: round(pct(v, 0.5), 3) for k, v in phases.items()},
        "token_messages_per_answer": round(sum(messages) / len(messages), 1) if messages else None,
        "swarm_client_direct": {**swarm, "answers_equal_to_chat": same},
        "chat_vs_direct_tok_s": round(gateway_rate / swarm["aggregate_tok_s"], 2) if swarm["aggregate_tok_s"] else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--portal", help="a running portal (make demo) instead of starting one")
    parser.add_argument("--user", default="demo")
    parser.add_argument("--password", default="layerswarm-demo")
    parser.add_argument("--backend", default="auto", help="the nodes' backend (auto, as in the demo)")
    parser.add_argument("--log-dir", type=Path, help="keep the portal's and nodes' logs here")
    parser.add_argument("--no-solo", action="store_true", help="skip the solo reference answers")
    parser.add_argument(
        "--no-direct", action="store_true", help="skip the direct swarm client (profile the chat alone)"
    )
    args = parser.parse_args()

    with ExitStack() as stack:
        portal = args.portal
        user, password = args.user, args.password
        if portal is None:
            from portal.processes import create_user_with_node_token, live_portal
            from swarmnode.launcher import LocalSwarm
            from swarmnode.testing.polling import wait_until

            folder = args.log_dir or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-chat-")))
            folder.mkdir(parents=True, exist_ok=True)
            # The chat is measured, not billing or abuse limits: one bench user from one address stands for
            # N browsers, so its starting grant pays for every answer (the default, 200 tokens, refused most as
            # insufficient_credits) and it may run N generations at once (default 4 per user, 8 per address),
            # with room for the solo answers' reservations, released a moment after their answers (on Redis a
            # cap of exactly N refused 1 of 20).
            env = {
                "SWARM_HEARTBEAT_TIMEOUT": "30",
                "LEDGER_STARTING_GRANT": str(10**9),
                "CHAT_MAX_GENERATIONS_PER_USER": str(2 * args.sessions),
                "CHAT_MAX_GENERATIONS_PER_IP": str(2 * args.sessions),
            }
            live = stack.enter_context(live_portal(folder, f"layerswarm_bench_chat_{os.getpid()}", False, env))
            portal, user, password = live.url, "bench", "bench-password-1"
            token = create_user_with_node_token(live.env, user, password)
            extra = ["--backend", args.backend, "--portal", portal, "--token", token]
            stack.enter_context(LocalSwarm("smollm2", 30, 3, extra_args=extra, log_dir=folder))
            wait_until(lambda: _covered(portal), 120, "the swarm to cover smollm2")
            print(f"portal {portal} (gateway: {'run_gateway' if live.separate_gateway else 'in daphne'})",
                  file=sys.stderr)  # fmt: skip
        session = login(portal, user, password)
        report = asyncio.run(run(portal, session, args.sessions, args.new_tokens, not args.no_solo, not args.no_direct))
        report["channel_layer"] = "redis" if os.environ.get("REDIS_URL") else "in-memory"
        print(json.dumps(report, indent=2))
        if report["lost"] or report["mixed_up"]:
            raise SystemExit(1)


def _covered(portal: str) -> bool:
    with urllib.request.urlopen(f"{portal}/api/v1/swarm/health/?model=smollm2", timeout=10) as r:
        return json.loads(r.read())["models"][0]["covered"]


if __name__ == "__main__":
    main()
