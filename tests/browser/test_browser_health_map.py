"""In a real browser (Debian's chromium, headless): sign up, create a node token, start a node with
it, and watch the health map turn that node's block range green (pushed over the websocket)."""

import os

import pytest

from portal.processes import live_portal
from swarmnode.launcher import start_node

pytestmark = [pytest.mark.slow, pytest.mark.model]


@pytest.fixture(scope="module")
def portal(tmp_path_factory):
    folder = tmp_path_factory.mktemp("browser")
    with live_portal(folder, f"layerswarm_browser_{os.getpid()}", celery=False) as portal:
        portal.folder = folder
        yield portal


def test_it_turns_the_block_range_green_when_a_node_starts(portal, browser):
    page = browser.new_page()
    page.set_default_timeout(20_000)

    page.goto(f"{portal.url}/accounts/signup/")
    page.fill("#id_username", "dora")
    page.fill("#id_password1", "a-long-Passphrase-9")
    page.fill("#id_password2", "a-long-Passphrase-9")
    page.click("#signup-form button[type=submit]")
    page.wait_for_url(f"{portal.url}/contribute/")

    page.fill("#id_name", "dora's laptop")
    page.click("#new-token-form button[type=submit]")
    token = page.inner_text("#node-token").strip()
    assert token.startswith("lsn_")
    commands = page.inner_text("#install-commands")  # the visible OS's commands only: the token is in node.toml
    assert f'token = "{token}"' in commands and f'portal = "{portal.url}"' in commands
    assert commands.count('" serve --config ') == 1
    page.click('.os-switcher a[data-os="windows"]')  # the switcher keeps the token shown once on screen
    assert "WriteAllText" in page.inner_text("#install-commands") and page.is_hidden("#setup-linux")
    assert f'token = "{token}"' in page.inner_text("#install-commands")

    page.goto(f"{portal.url}/swarm/smollm2/")
    page.wait_for_selector('#health-map[data-live="true"]')  # the websocket for live updates is open
    assert page.get_attribute('.block[data-block="0"]', "data-state") == "uncovered"
    assert "broken: blocks 0-29 uncovered" in page.inner_text(".banner")

    node = start_node("smollm2", "0:10", extra_args=["--portal", portal.url, "--token", token])
    try:
        page.wait_for_selector('.block[data-block="9"][data-state="online"]', timeout=60_000)
        states = page.eval_on_selector_all(".block", "cells => cells.map(c => c.dataset.state)")
        assert states == ["online"] * 10 + ["uncovered"] * 20
        assert page.evaluate("getComputedStyle(document.querySelector('.block.online')).backgroundColor") == (
            "rgb(30, 122, 60)"  # green (--online, AA contrast since 336a72a)
        )
        assert "broken: blocks 10-29 uncovered" in page.inner_text(".banner")
        assert "dora" in page.inner_text(".lane.online")

        page.goto(f"{portal.url}/contribute/")
        page.wait_for_selector("#my-nodes .state.online")
        assert "0:10" in page.inner_text("#my-nodes")
    finally:
        node.stop()
