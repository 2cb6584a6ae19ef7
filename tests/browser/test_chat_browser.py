"""The chat page in a real browser (Debian's chromium, headless) against a running portal whose gateway
generates through three real nodes found via the tracker: streaming, Stop, history kept across a reload,
and model output that tries to inject HTML shown as plain text."""

from __future__ import annotations

import json
import os
import re
import time
import urllib.request

import pytest

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
        swarm = LocalSwarm("smollm2", 30, 3, extra_args=["--portal", portal.url, "--token", token], log_dir=folder)
        with swarm:
            wait_until(lambda: _covered(portal.url), 90, "the tracker to see all 3 nodes")
            portal.swarm = swarm
            yield portal


@pytest.fixture
def page(portal, browser):
    page = browser.new_page()
    page.set_default_timeout(30_000)
    page.frames_in = []  # (time, JSON) of every chat websocket frame the page receives

    def watch(ws):
        if ws.url.endswith("/ws/chat/"):
            ws.on("framereceived", lambda frame: page.frames_in.append((time.monotonic(), json.loads(frame))))

    page.on("websocket", watch)
    page.goto(f"{portal.url}/accounts/login/?next=/chat/")
    page.fill("#id_username", "dora")
    page.fill("#id_password", PASSWORD)
    page.click("#login-form button[type=submit]")
    page.wait_for_url(f"{portal.url}/chat/")
    page.wait_for_selector('#chat-status[data-live="true"]')
    yield page
    page.close()


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
    from playwright.sync_api import expect

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
        '<script>window.pwned = 1</script> and <img src=x onerror="window.pwned = 2"> **bold** [x](javascript:alert(3))'
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
