"""Fixtures of the browser-node tests: one real portal (daphne) with blocks 10:20 of the default model
prepared for browsers, a signed-up user, and Debian's chromium (never a downloaded browser)."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from portal.processes import PortalProcesses, create_user_with_node_token, live_portal, manage

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
PASSWORD = "a-long-Passphrase-9"


@dataclass
class BrowserPortal:
    """A running portal with a span file for browsers, and a user who may contribute."""

    portal: PortalProcesses
    env: dict
    username: str
    sha256: str

    @property
    def url(self) -> str:
        return self.portal.url

    def portal_span_path(self) -> Path:
        """The span file the portal serves (``SWARM_SPAN_FILES_DIR/<sha256>.onnx``)."""
        return Path(self.env["LAYERSWARM_VAR_DIR"]) / "spans" / f"{self.sha256}.onnx"

    def login(self, page) -> None:
        """Sign ``page`` in as the fixture's user."""
        page.goto(f"{self.url}/accounts/login/")
        page.fill("#id_username", self.username)
        page.fill("#id_password", PASSWORD)
        page.click("form button[type=submit]")
        page.wait_for_url(f"{self.url}/contribute/")


@pytest.fixture(scope="session")
def browser_portal(tmp_path_factory):
    folder = tmp_path_factory.mktemp("browser-node")
    with live_portal(folder, f"layerswarm_browser_node_{os.getpid()}", celery=False) as portal:
        env = portal.env
        out = manage(["export_browser_span", "--model", "smollm2", "--blocks", "10:20"], env).stdout
        sha256 = out.strip().splitlines()[-1].split(" -> ")[1].split()[0]
        create_user_with_node_token(env, "dora", PASSWORD)
        yield BrowserPortal(portal, env, "dora", sha256)


# One per module: a Playwright sync driver left running across modules would be a second one
# when the next module starts its own, and would keep its event loop alive through the other tests.
@pytest.fixture(scope="module")
def chromium():
    if not shutil.which(CHROMIUM):
        pytest.fail("chromium is missing: apt-get install -y chromium (.ci/run installs it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def browser(chromium):
    """The same chromium under the name the page tests use."""
    return chromium
