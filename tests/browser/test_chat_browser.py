"""The chat page in a real browser (Debian's chromium, headless) against a running portal whose gateway
generates through three real nodes found via the tracker: streaming, Stop, history kept across a reload,
model output that tries to inject HTML shown as plain text, Markdown (highlighted, copyable code; tables),
the system prompt, rename / export / delete, keyboard-only use, and axe-core on the portal's pages."""

from __future__ import annotations

import json
import os
import re
import time
import urllib.request

import pytest
from playwright.sync_api import expect

from portal.processes import create_user_with_node_token, live_portal, manage
from swarmnode.client.remote import RemoteSpan
from swarmnode.launcher import LocalSwarm
from swarmnode.protocol import Info
from swarmnode.testing.polling import wait_until

pytestmark = [pytest.mark.slow, pytest.mark.model]
PASSWORD = "dora-password-1"


def _covered(url: str) -> bool:
    with urllib.request.urlopen(f"{url}/api/v1/swarm/health/?model=smollm2", timeout=10) as r:
        return json.loads(r.read())["models"][0]["covered"]


def _open_sessions(urls: list[str]) -> list[int]:
    counts = []
    for url in urls:
        span = RemoteSpan(url, timeout=5)
        try:
            counts.append(span.request(Info()).open_sessions)
        finally:
            span.close()
    return counts


@pytest.fixture(scope="module")
def portal(tmp_path_factory):
    folder = tmp_path_factory.mktemp("chat-browser")
    with live_portal(folder, f"layerswarm_chat_browser_{os.getpid()}", celery=False) as portal:
        token = create_user_with_node_token(portal.env, "dora", PASSWORD)
        # Every generated token is charged: bought credits for the module's questions (the grant covers ~200).
        code = "from django.contrib.auth.models import User; from portal.ledger.books import deposit; "
        code += "deposit(User.objects.get(username='dora'), 1_000_000, 'chat-browser-tests')"
        manage(["shell", "-c", code], portal.env)
        swarm = LocalSwarm("smollm2", 30, 3, extra_args=["--portal", portal.url, "--token", token], log_dir=folder)
        with swarm:
            wait_until(lambda: _covered(portal.url), 90, "the tracker to see all 3 nodes")
            portal.swarm = swarm
            yield portal


def _conversation(portal, username: str, answer: str, system_prompt: str = "") -> str:
    """Store a conversation of ``username`` whose answer is ``answer`` (model output under test); its id."""
    code = (
        "from django.contrib.auth.models import User\n"
        "from portal.chat.models import Conversation\n"
        f"c = Conversation.objects.create(user=User.objects.get(username={username!r}), model='smollm2',"
        f" title='stored', system_prompt={system_prompt!r})\n"
        "c.messages.create(role='user', content='show me')\n"
        f"c.messages.create(role='assistant', content={answer!r}, finish_reason='stop')\n"
        "print(c.pk)\n"
    )
    return manage(["shell", "-c", code], portal.env).stdout.strip().splitlines()[-1]


RICH = (
    "A table:\n\n| city | country |\n|---|---|\n| Paris | France |\n| Rome | Italy |\n\n"
    "And code:\n\n```python\ndef double(x):\n    return x * 2  # twice\n```\n\n"
    "Inline `code`, a [link](https://example.com) and a list:\n\n- one\n  - nested\n- two\n"
)


@pytest.fixture(scope="module")
def rich(portal) -> str:
    """A stored conversation of dora's whose answer has a table, a code block and a nested list."""
    return _conversation(portal, "dora", RICH)


@pytest.fixture(scope="module")
def dora_cookies(portal, browser) -> dict:
    """dora's signed-in browser state, logged in once per module: the log-in limit is 5 a minute per username
    (``RATE_LIMIT_LOGIN_USER``), and this module opens more pages than that within a minute."""
    context = browser.new_context()
    try:
        page = context.new_page()
        page.goto(f"{portal.url}/accounts/login/?next=/chat/")
        page.fill("#id_username", "dora")
        page.fill("#id_password", PASSWORD)
        page.click("#login-form button[type=submit]")
        page.wait_for_url(f"{portal.url}/chat/", timeout=30_000)
        return context.storage_state()
    finally:
        context.close()


@pytest.fixture
def page(portal, browser, dora_cookies):
    context = browser.new_context(storage_state=dora_cookies, permissions=["clipboard-read", "clipboard-write"])
    page = context.new_page()
    page.set_default_timeout(30_000)
    page.frames_in = []  # (time, JSON) of every chat websocket frame the page receives

    def watch(ws):
        if ws.url.endswith("/ws/chat/"):
            ws.on("framereceived", lambda frame: page.frames_in.append((time.monotonic(), json.loads(frame))))

    page.on("websocket", watch)
    page.goto(f"{portal.url}/chat/")
    page.wait_for_selector('#chat-status[data-live="true"]')
    yield page
    context.close()


def _frames(page, kind: str) -> list[tuple[float, dict]]:
    return [(t, f) for t, f in page.frames_in if f.get("type") == kind]


def test_it_streams_the_answer_stops_at_once_and_keeps_the_conversation(portal, page):
    page.click(".chat-settings summary")  # open the settings
    page.fill("#temperature", "0")
    page.fill("#chat-input", "What is the capital of France?")
    page.click("#send")
    page.wait_for_selector(".turn.assistant[data-finish]", timeout=60_000)
    answer = page.inner_text(".turn.assistant .body")
    assert "Paris" in answer
    tokens = _frames(page, "token")
    assert len(tokens) > 1, "the answer must arrive in more than one websocket message"
    assert "".join(f["text"] for _, f in tokens) == _frames(page, "done")[0][1]["message"]["content"]
    assert "tok/s" in page.inner_text("#speed")
    conversation_url = page.url
    assert conversation_url.rstrip("/").split("/")[-1].isdigit()  # the address names the conversation now

    # A long answer, stopped mid-way.
    page.fill("#max-new-tokens", "400")
    page.fill("#chat-input", "Write a very long story about a dragon who learns to cook.")
    page.click("#send")
    # (Playwright delivers websocket events while the page is being waited on, so wait on the page.)
    # (A locator wait, not wait_for_function: that evals a string in the page, which the portal's CSP refuses.)
    streaming = page.locator(".turn.assistant.streaming")
    expect(streaming).to_have_text(re.compile(r"[\s\S]{31}"), use_inner_text=True, timeout=60_000)
    assert _open_sessions(portal.swarm.urls) == [1, 1, 1]
    pressed = time.monotonic()
    page.click("#stop")
    page.wait_for_selector('.turn.assistant[data-finish="cancelled"]', timeout=5_000)
    stopped_in = time.monotonic() - pressed
    assert stopped_in < 1.0
    page.wait_for_timeout(1_000)
    assert not [t for t, _ in _frames(page, "token") if t > pressed + 1.0], "tokens kept coming after Stop"
    wait_until(lambda: _open_sessions(portal.swarm.urls) == [0, 0, 0], 2.0, "the nodes to close the session")
    assert page.is_enabled("#send") and not page.is_enabled("#stop")
    partial = page.inner_text('.turn.assistant[data-finish="cancelled"] .body')
    assert partial and "stopped" in page.inner_text('.turn.assistant[data-finish="cancelled"]')

    # Reload: the conversation is kept, both questions and both answers.
    page.reload()
    page.wait_for_selector(".turn.assistant[data-finish]")
    turns = page.eval_on_selector_all(
        ".turn", "ts => ts.map(t => [t.dataset.role, t.querySelector('.body').innerText])"
    )
    assert [role for role, _ in turns] == ["user", "assistant", "user", "assistant"]
    assert turns[0][1] == "What is the capital of France?" and "Paris" in turns[1][1]
    assert turns[3][1].strip() == partial.strip()
    assert "What is the capital of France?" in page.inner_text("#conversation-list")


def test_it_shows_html_in_model_output_as_text(portal, page):
    evil = (
        'Look: <script>window.pwned = 1</script> and <img src=x onerror="window.pwned = 2"> **bold** '
        "[x](javascript:alert(3)) ![t](https://example.com/t.png)\n\n"
        '<img src=y onerror="window.pwned = 3">\n'  # a CommonMark HTML block: shown as text too
    )
    code = (
        "from django.contrib.auth.models import User\n"
        "from portal.chat.models import Conversation\n"
        "c = Conversation.objects.create(user=User.objects.get(username='dora'), model='smollm2', title='evil')\n"
        "c.messages.create(role='user', content='say something nasty')\n"
        f"c.messages.create(role='assistant', content={evil!r}, finish_reason='stop')\n"
        "print(c.pk)\n"
    )
    pk = manage(["shell", "-c", code], portal.env).stdout.strip().splitlines()[-1]
    page.goto(f"{portal.url}/chat/{pk}/")
    body = page.wait_for_selector(".turn.assistant .body")
    text = body.inner_text()
    assert "<script>window.pwned = 1</script>" in text and '<img src=x onerror="window.pwned = 2">' in text
    assert '<img src=y onerror="window.pwned = 3">' in text and "![t](https://example.com/t.png)" in text
    assert body.query_selector("script, img") is None and body.query_selector("strong").inner_text() == "bold"
    assert body.query_selector("a") is None  # javascript: links stay text
    assert page.evaluate("window.pwned") is None

    # The streaming path uses the same renderer: check it directly on the same text.
    rendered = page.evaluate(
        """async (text) => {
            const { renderMarkdown } = await import('/static/markdown.js');
            const div = document.createElement('div');
            div.append(renderMarkdown(text));
            return [div.textContent, div.querySelectorAll('script, img, a').length];
        }""",
        evil,
    )
    assert rendered[1] == 0 and "<script>" in rendered[0]
    assert page.evaluate("window.pwned") is None


def _contrast(page, selector: str) -> float:
    """WCAG contrast ratio of the text colour of ``selector`` against its (own) background colour."""
    return page.eval_on_selector(
        selector,
        """el => {
            const rgb = (c) => c.match(/[\\d.]+/g).slice(0, 3).map(Number);
            const lum = (c) => {
                const lin = (v) => (v / 255 <= 0.03928 ? v / 255 / 12.92 : ((v / 255 + 0.055) / 1.055) ** 2.4);
                const [r, g, b] = rgb(c).map(lin);
                return 0.2126 * r + 0.7152 * g + 0.0722 * b;
            };
            const s = getComputedStyle(el);
            const [a, b] = [lum(s.color), lum(s.backgroundColor)].sort((x, y) => y - x);
            return (a + 0.05) / (b + 0.05);
        }""",
    )


def test_it_highlights_code_renders_tables_and_copies(portal, page, rich):
    page.goto(f"{portal.url}/chat/{rich}/")
    body = page.wait_for_selector(".turn.assistant[data-finish] .body")
    assert page.eval_on_selector_all(".turn.assistant table th", "ths => ths.map(t => t.innerText)") == [
        "city",
        "country",
    ]
    assert page.eval_on_selector_all(".turn.assistant table td", "tds => tds.map(t => t.innerText)") == [
        "Paris",
        "France",
        "Rome",
        "Italy",
    ]
    assert body.query_selector("ul ul li").inner_text() == "nested"  # a nested list
    code = page.locator(".turn.assistant pre code.hljs.language-python")
    assert code.locator(".hljs-keyword").first.inner_text() == "def"  # highlighted by highlight.js
    assert code.locator(".hljs-comment").inner_text() == "# twice"
    assert _contrast(page, ".turn.assistant pre code.hljs") >= 7  # was light grey on light grey
    assert _contrast(page, ".turn.assistant :not(pre) > code") >= 4.5

    page.get_by_role("button", name="Copy code (python)").click()
    expect(page.get_by_role("button", name="Copy code (python)")).to_have_text("Copied")
    assert page.evaluate("navigator.clipboard.readText()") == "def double(x):\n    return x * 2  # twice"
    page.click(".copy-answer")
    assert page.evaluate("navigator.clipboard.readText()") == RICH
    expect(page.locator("#announcer")).to_have_text("Copied to the clipboard")


def test_the_system_prompt_changes_the_answer(portal, page):
    question = "What is your name?"

    def ask(system_prompt: str) -> str:
        page.goto(f"{portal.url}/chat/")
        page.wait_for_selector('#chat-status[data-live="true"]')
        page.click(".chat-settings summary")
        page.fill("#temperature", "0")
        page.fill("#max-new-tokens", "24")
        page.fill("#system-prompt", system_prompt)
        page.fill("#chat-input", question)
        page.click("#send")
        page.wait_for_selector(".turn.assistant[data-finish]", timeout=60_000)
        return page.inner_text(".turn.assistant .body")

    plain = ask("")
    pirate = ask("You are a pirate. Answer every question as a pirate of the seven seas.")
    # Greedy, the same question: without it the model names itself as an assistant, with it as a pirate captain.
    assert "pirate" in pirate.lower() and "Captain" in pirate, pirate
    assert "pirate" not in plain.lower() and "Captain" not in plain, plain
    # Stored on the conversation: shown again on reload, exported, and used by Regenerate.
    page.reload()
    expect(page.locator("#system-prompt")).to_have_value(re.compile("You are a pirate"))
    page.click("#regenerate")
    page.wait_for_selector(".turn.assistant[data-finish]", timeout=60_000)
    assert page.inner_text(".turn.assistant .body") == pirate  # greedy: the same answer to the same prompt
    export = json.loads(page.request.get(f"{page.url}export.json").text())
    assert export["system_prompt"].startswith("You are a pirate") and export["messages"][0]["content"] == question


def test_it_renames_exports_and_deletes_a_conversation(portal, page, browser):
    pk = _conversation(portal, "dora", "Paris is the **capital**.", system_prompt="Be brief.")
    page.goto(f"{portal.url}/chat/{pk}/")
    page.wait_for_selector(".turn.assistant[data-finish]")
    page.click("#conversation-tools summary")
    page.fill("#rename-title", "Capitals of Europe")
    with page.expect_navigation():
        page.click("#rename")
    assert page.locator(f'#conversation-list a[data-conversation="{pk}"]').inner_text() == "Capitals of Europe"
    assert page.title().startswith("Capitals of Europe")

    page.click("#conversation-tools summary")
    with page.expect_download() as md:
        page.click("#export-md")
    markdown = open(md.value.path(), encoding="utf-8").read()
    assert md.value.suggested_filename == f"conversation-{pk}.md"
    assert markdown.startswith("# Capitals of Europe\n") and "## Assistant\n\nParis is the **capital**." in markdown
    with page.expect_download() as js:
        page.click("#export-json")
    data = json.loads(open(js.value.path(), encoding="utf-8").read())
    assert data["system_prompt"] == "Be brief." and [m["role"] for m in data["messages"]] == ["user", "assistant"]

    # Someone else (a fresh browser, not logged in) cannot read, export, rename or delete it.
    stranger = browser.new_page()
    try:
        for path in (f"/chat/{pk}/", f"/chat/{pk}/export.md", f"/chat/{pk}/export.json"):
            assert stranger.goto(f"{portal.url}{path}").status == 404
    finally:
        stranger.close()

    page.click("#delete")
    page.wait_for_url(f"{portal.url}/chat/")
    assert page.locator(f'#conversation-list a[data-conversation="{pk}"]').count() == 0
    assert page.goto(f"{portal.url}/chat/{pk}/").status == 404


def test_it_works_from_the_keyboard_alone(portal, page):
    page.goto(f"{portal.url}/chat/")
    page.wait_for_selector('#chat-status[data-live="true"]')
    for _ in range(40):  # Tab from the top of the page to the message box
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.id") == "chat-input":
            break
    else:
        pytest.fail("Tab never reached the message box")
    page.keyboard.type("Write a very long story about a dragon who learns to cook.")
    page.keyboard.press("Enter")
    streaming = page.locator(".turn.assistant.streaming")
    expect(streaming).to_have_text(re.compile(r"[\s\S]{20}"), use_inner_text=True, timeout=60_000)
    assert page.locator("#announcer").inner_text() == ""  # the live region stays quiet while tokens stream
    page.keyboard.press("Escape")  # stops the answer
    page.wait_for_selector('.turn.assistant[data-finish="cancelled"]', timeout=5_000)
    answer = page.locator(".turn.assistant[data-finish] .body").inner_text()
    expect(page.locator("#announcer")).to_contain_text("Answer (stopped): ")  # announced once, when finished
    for _ in range(40):  # back to the answer's copy button (just above the message box), and Enter copies
        page.keyboard.press("Shift+Tab")
        if page.evaluate("document.activeElement.classList.contains('copy-answer')"):
            break
    else:
        pytest.fail("Tab never reached the answer's copy button")
    page.keyboard.press("Enter")
    assert page.evaluate("navigator.clipboard.readText()").strip() == answer.strip()


AXE_PAGES = ["/", "/chat/{rich}/", "/swarm/", "/contribute/", "/credits/"]


def _axe(page) -> list[str]:
    """axe-core's serious and critical violations on ``page`` (axe served by the portal from npm)."""
    page.add_script_tag(url="/chat/lib/axe.js")
    return page.evaluate(
        """async () => {
            const result = await axe.run(document, { resultTypes: ["violations"] });
            return result.violations.filter((v) => ["serious", "critical"].includes(v.impact)).map((v) =>
                `${v.impact} ${v.id}: ${v.nodes.slice(0, 3).map((n) => n.target.join(" ")).join(", ")}`);
        }"""
    )


def test_axe_finds_no_serious_or_critical_violations(portal, page, browser, rich):
    found = {}
    for path in AXE_PAGES:
        page.goto(f"{portal.url}{path.format(rich=rich)}")
        page.wait_for_load_state("networkidle")
        if path.startswith("/chat/"):
            page.wait_for_selector(".turn.assistant[data-finish] .code-block")
        found[path] = _axe(page)
    # The payout queue, as staff.
    create_user_with_node_token(portal.env, "stella", PASSWORD)
    code = "from django.contrib.auth.models import User\nUser.objects.filter(username='stella').update(is_staff=True)\n"
    manage(["shell", "-c", code], portal.env)
    staff = browser.new_page()
    try:
        staff.goto(f"{portal.url}/accounts/login/?next=/staff/payouts/")
        staff.fill("#id_username", "stella")
        staff.fill("#id_password", PASSWORD)
        staff.click("#login-form button[type=submit]")
        staff.wait_for_url(f"{portal.url}/staff/payouts/")
        staff.wait_for_load_state("networkidle")
        found["/staff/payouts/"] = _axe(staff)
    finally:
        staff.close()
    assert found == {path: [] for path in found}, found


def test_streamed_model_output_stays_text(portal, page):
    """Model output as it streams token by token (a stand-in chat socket plays the server): never markup."""
    tokens = [
        "Look: <img src=x ",
        'onerror="window.pwned = 1">',
        " and [x](javascript:",
        "window.pwned = 2)",
        "\n\n<scr",
    ]
    tokens += ["ipt>window.pwned = 3</script>\n\n", '```html\n<svg onload="window.pwned = 4">\n```\n']
    text = "".join(tokens)

    def serve(ws):
        def on_message(message):
            kind = json.loads(message).get("type")
            if kind == "send":
                c = {"id": 999, "title": "stand-in", "model": "smollm2", "system_prompt": ""}
                ws.send(json.dumps({"type": "accepted", "conversation": c, "question": None}))
                for piece in tokens:
                    ws.send(json.dumps({"type": "token", "conversation": 999, "text": piece}))
            elif kind == "stop":
                message = {"id": 5, "role": "assistant", "content": text, "finish_reason": "cancelled"}
                message |= {"completion_tokens": len(tokens), "tokens_per_s": 1.0, "dropped_messages": 0}
                ws.send(json.dumps({"type": "done", "conversation": 999, "message": message}))

        ws.on_message(on_message)

    page.route_web_socket(re.compile(r"/ws/chat/$"), serve)
    page.goto(f"{portal.url}/chat/")
    page.wait_for_selector('#chat-status[data-live="true"]')
    page.fill("#chat-input", "say something nasty")
    page.click("#send")
    streaming = page.locator(".turn.assistant.streaming .body")
    expect(streaming).to_contain_text("<svg onload", timeout=10_000)  # mid-stream: still text
    assert streaming.locator("img, script, svg, a").count() == 0
    page.click("#stop")
    body = page.locator('.turn.assistant[data-finish="cancelled"] .body')
    expect(body).to_contain_text('<img src=x onerror="window.pwned = 1">')
    assert (
        "[x](javascript:window.pwned = 2)" in body.inner_text()
        and "<script>window.pwned = 3</script>" in body.inner_text()
    )
    assert body.locator("img, script, svg, a").count() == 0
    assert page.evaluate("window.pwned") is None
