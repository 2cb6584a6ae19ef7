"""#21 item 5: the Contribute page gives the commands for the visitor's OS (bash on Linux and macOS,
PowerShell on Windows), chosen by User-Agent with a switcher; ``blocks = "auto"``, the token in node.toml
(never on a command line), ``swarmnode doctor``. The node.toml each variant writes is read back with the
node's own config reader, so the page cannot drift from what ``swarmnode serve --config`` accepts."""

from __future__ import annotations

import argparse
import datetime as dt
import html
import os
import re
import subprocess

import pytest
from django.utils import timezone

from portal.accounts.models import NodeToken
from portal.swarm.models import Node, SwarmModel
from swarmnode.cli import build_parser
from swarmnode.config_file import file_settings, settable

pytestmark = pytest.mark.django_db

AGENTS = {
    "linux": "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0 Safari/537.36",
    "macos": "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Safari/605.1",
    "windows": "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0",
}
HOMES = {"linux": "/home/dora", "macos": "/Users/dora", "windows": r"C:\Users\dora"}


def _sections(page: str) -> dict[str, tuple[bool, dict[str, str]]]:
    """Per OS: whether its section is visible, and its commands by step."""
    out = {}
    for os_name, attrs, body in re.findall(
        r'<section class="os-setup" id="setup-(\w+)"([^>]*)>(.*?)</section>', page, re.S
    ):
        steps = re.findall(r'<pre class="cmd" data-shell="\w+" data-step="(\w+)">(.*?)</pre>', body, re.S)
        out[os_name] = ("hidden" not in attrs, {step: html.unescape(text) for step, text in steps})
    return out


def _node_toml(os_name: str, config_step: str) -> str:
    """The file the shell writes: the here-string's text with $HOME filled in as the shell does."""
    start, end = ('@"\n', '\n"@') if os_name == "windows" else ("<<EOF\n", "\nEOF")
    text = config_step.split(start, 1)[1].split(end, 1)[0]
    return text.replace("$HOME", HOMES[os_name])


def _serve_options() -> dict[str, argparse.Action]:
    parser = build_parser()
    subcommands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return settable(subcommands.choices["serve"])


@pytest.mark.parametrize("os_name", ["linux", "macos", "windows"])
def test_it_gives_the_commands_for_the_visitors_os(os_name, owner, client, smollm2, tmp_path):
    client.force_login(owner)
    page = client.post("/contribute/", {"name": "garage GPU"}, HTTP_USER_AGENT=AGENTS[os_name]).content.decode()
    token = re.search(r'id="node-token">(lsn_[^<]+)<', page).group(1)
    sections = _sections(page)
    assert set(sections) == {"linux", "macos", "windows"}  # the switcher's other systems, hidden
    assert [name for name, (visible, _) in sections.items() if visible] == [os_name]
    steps = sections[os_name][1]
    assert list(steps) == ["install", "config", "doctor", "serve"]
    assert "pip" in steps["install"] and ' install "' in steps["install"]
    shell = "powershell" if os_name == "windows" else "bash"
    assert f'data-shell="{shell}"' in page.split(f'id="setup-{os_name}"')[1].split("</section>")[0]
    if os_name == "windows":
        assert steps["install"].startswith("py -3 -m venv") and r"\Scripts\python.exe" in steps["install"]
        assert "[IO.File]::WriteAllText(" in steps["config"]  # UTF-8 without a BOM: TOML readers refuse one
        assert (
            steps["serve"]
            == r'& "$HOME\layerswarm\venv\Scripts\swarmnode.exe" serve --config "$HOME\layerswarm\node.toml"'
        )
        assert steps["doctor"].endswith(r'swarmnode.exe" doctor --config "$HOME\layerswarm\node.toml"')
    else:
        assert steps["install"].startswith('python3 -m venv "$HOME/layerswarm/venv"')
        assert steps["config"].startswith("(umask 077 && cat > ")  # only the user reads the token
        assert steps["serve"] == '"$HOME/layerswarm/venv/bin/swarmnode" serve --config "$HOME/layerswarm/node.toml"'
        assert steps["doctor"] == '"$HOME/layerswarm/venv/bin/swarmnode" doctor --config "$HOME/layerswarm/node.toml"'
    for step in ("install", "doctor", "serve"):
        assert token not in steps[step] and "--token" not in steps[step] and "--blocks" not in steps[step]
    # The file, read by the node's own config reader: what `swarmnode serve --config` will run with.
    path = tmp_path / "node.toml"
    path.write_text(_node_toml(os_name, steps["config"]), encoding="utf-8")
    settings = file_settings(path, _serve_options())
    home = HOMES[os_name]
    key = home + (r"\layerswarm\node.key" if os_name == "windows" else "/layerswarm/node.key")
    assert settings == {
        "portal": "http://testserver",
        "token": token,
        "model": "smollm2",
        "blocks": "auto",
        "host": "0.0.0.0",
        "port": 31337,
        "identity": key,
    }
    assert 'href="#doctor"' in page and 'id="doctor"' in page


def test_the_switcher_chooses_another_os_and_unknown_agents_get_linux(owner, client, smollm2):
    client.force_login(owner)

    def visible(**kw) -> list[str]:
        page = client.get("/contribute/", **kw).content.decode()
        return [name for name, (shown, _) in _sections(page).items() if shown]

    assert visible(data={"os": "windows"}, HTTP_USER_AGENT=AGENTS["linux"]) == ["windows"]
    assert visible(data={"os": "macos"}) == ["macos"]
    assert visible(data={"os": "<script>"}, HTTP_USER_AGENT=AGENTS["windows"]) == ["windows"]  # bad ?os: the agent
    assert visible(HTTP_USER_AGENT="curl/8.5") == ["linux"] and visible() == ["linux"]
    iphone = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 Mobile/15E148"
    assert visible(HTTP_USER_AGENT=iphone) == ["linux"]
    page = client.get("/contribute/?os=windows").content.decode()
    assert '<a href="?os=windows#run-a-node" data-os="windows" aria-current="true">' in page
    assert "lsn_PASTE_YOUR_NODE_TOKEN" in page  # no new token: a placeholder, never an old token


def test_the_bash_config_step_writes_a_file_only_its_user_reads(owner, client, smollm2, tmp_path):
    """Run the Linux variant's config step in a real bash, as the visitor pastes it."""
    client.force_login(owner)
    page = client.post("/contribute/", {"name": "box"}, HTTP_USER_AGENT=AGENTS["linux"]).content.decode()
    token = re.search(r'id="node-token">(lsn_[^<]+)<', page).group(1)
    step = _sections(page)["linux"][1]["config"]
    (tmp_path / "layerswarm").mkdir()  # the install step's venv made it
    subprocess.run(["bash", "-c", step], env={"HOME": str(tmp_path), "PATH": os.environ["PATH"]}, check=True)
    path = tmp_path / "layerswarm" / "node.toml"
    assert path.stat().st_mode & 0o777 == 0o600
    settings = file_settings(path, _serve_options())
    assert settings["token"] == token and settings["identity"] == str(tmp_path / "layerswarm" / "node.key")


def test_the_nodes_table_folds_nodes_offline_for_more_than_a_day(owner, client, owner_token, register, heartbeat):
    heartbeat(owner_token, register(owner_token).json()["id"])
    for port in (1, 2, 3):
        node = Node.objects.create(
            owner=owner, token=NodeToken.objects.get(user=owner), model=SwarmModel.objects.get(name="smollm2"),
            start_block=10, end_block=20, url=f"ws://127.0.0.1:{port}/layerswarm/v1", backend="torch",
            device="cpu", dtype="float32", version="0", state=Node.State.OFFLINE,
        )  # fmt: skip
        Node.objects.filter(pk=node.pk).update(last_seen_at=timezone.now() - dt.timedelta(days=2))
    client.force_login(owner)
    table = client.get("/contribute/").content.decode().split('id="my-nodes"')[1].split("</table>")[0]
    assert table.count('<span class="state') == 1 and "online" in table
    assert "3 nodes offline for more than a day" in table
