"""The commands the "Contribute a GPU" page gives a visitor to install and run a node on their OS.

Three systems, two shells: Linux and macOS get bash, Windows gets PowerShell. Every variant does the
same five things: make a virtualenv, ``pip install`` the node package into it, write ``node.toml``
(the portal, the node token, ``blocks = "auto"`` and the node's identity key file, so the token never
sits on a command line where ``ps`` shows it, and a restarted node is the same node on the portal),
run ``swarmnode doctor`` on that file, then ``swarmnode serve --config node.toml``.
"""

from __future__ import annotations

from dataclasses import dataclass

OS_LABELS = {"linux": "Linux", "macos": "macOS", "windows": "Windows"}
TOKEN_PLACEHOLDER = "lsn_PASTE_YOUR_NODE_TOKEN"
NODE_PORT = 31337  # the port deploy/ and the docs open to the internet (else the node is relayed)


def os_from_user_agent(user_agent: str) -> str:
    """``windows``, ``macos`` or ``linux`` (the default, also for phones and unknown agents)."""
    agent = user_agent.lower()
    if "windows" in agent:
        return "windows"
    if ("mac os" in agent or "macintosh" in agent) and "iphone" not in agent and "ipad" not in agent:
        return "macos"
    return "linux"


@dataclass(frozen=True)
class NodeSetup:
    """What one OS's visitor runs, step by step. ``config`` is ``node.toml``'s text as the shell writes it."""

    os: str
    label: str
    shell: str  # "bash" or "powershell"
    install: str  # virtualenv + pip install
    config: str  # the command that writes node.toml (the token goes into the file)
    config_path: str
    doctor: str
    serve: str
    note: str


def _toml(portal_url: str, token: str, model: str, identity: str) -> str:
    # Windows paths hold backslashes, which a TOML basic string ("...") reads as escapes: literal strings.
    return "\n".join(
        [
            f'portal = "{portal_url}"',
            f'token = "{token}"',
            f'model = "{model}"',
            'blocks = "auto"',
            'host = "0.0.0.0"',
            f"port = {NODE_PORT}",
            f'# public-host = "node.example.org"  # the name clients dial, once TCP port {NODE_PORT} is open to them',
            f"identity = '{identity}'",
        ]
    )


def node_setup(os_name: str, portal_url: str, pip_spec: str, model: str, token: str | None) -> NodeSetup:
    """The commands for ``os_name`` (a key of :data:`OS_LABELS`; anything else counts as Linux).

    Args:
        os_name: ``linux``, ``macos`` or ``windows``.
        portal_url: this portal's base URL, written into node.toml.
        pip_spec: what follows ``pip install`` (``swarmnode @ <source>`` or a local checkout).
        model: the model the node serves.
        token: the node token just created, or None (a placeholder the visitor replaces).
    """
    os_name = os_name if os_name in OS_LABELS else "linux"
    token = token or TOKEN_PLACEHOLDER
    if os_name == "windows":
        home = r"$HOME\layerswarm"
        path = rf'"{home}\node.toml"'
        swarmnode = rf'& "{home}\venv\Scripts\swarmnode.exe"'
        toml = _toml(portal_url, token, model, rf"{home}\node.key")
        return NodeSetup(
            os=os_name,
            label=OS_LABELS[os_name],
            shell="powershell",
            install=(
                rf'py -3 -m venv "{home}\venv"' + "\n"
                rf'& "{home}\venv\Scripts\python.exe" -m pip install "{pip_spec}"'
            ),
            # WriteAllText writes UTF-8 without the byte-order mark Windows PowerShell's Set-Content adds
            # (TOML readers refuse it); the @"..."@ here-string fills in $HOME.
            config=f'$config = @"\n{toml}\n"@\n[IO.File]::WriteAllText({path}, $config)',
            config_path=path,
            doctor=f"{swarmnode} doctor --config {path}",
            serve=f"{swarmnode} serve --config {path}",
            note=(
                "Python 3.11 or newer: winget install Python.Python.3.12 (or python.org). Allow swarmnode.exe "
                f"through Windows Defender Firewall on TCP port {NODE_PORT} when asked; without it the node "
                "is reached through a relay."
            ),
        )
    home = "$HOME/layerswarm"
    path = f'"{home}/node.toml"'
    swarmnode = f'"{home}/venv/bin/swarmnode"'
    toml = _toml(portal_url, token, model, f"{home}/node.key")
    note = {
        "linux": "Python 3.11 or newer (sudo apt install python3-venv on Debian/Ubuntu). An NVIDIA GPU is used "
        "when CUDA is visible; otherwise the node runs on the CPU.",
        "macos": "Python 3.11 or newer (brew install python@3.12). The node runs on the CPU (ONNX Runtime).",
    }[os_name]
    return NodeSetup(
        os=os_name,
        label=OS_LABELS[os_name],
        shell="bash",
        install=f'python3 -m venv "{home}/venv"\n"{home}/venv/bin/pip" install "{pip_spec}"',
        # umask: only the user can read the file that holds the token; the here-document fills in $HOME.
        config=f"(umask 077 && cat > {path} <<EOF\n{toml}\nEOF\n)",
        config_path=path,
        doctor=f"{swarmnode} doctor --config {path}",
        serve=f"{swarmnode} serve --config {path}",
        note=note + f" Open TCP port {NODE_PORT} to the internet, or the node is reached through a relay.",
    )


def all_setups(portal_url: str, pip_spec: str, model: str, token: str | None) -> list[NodeSetup]:
    """One :class:`NodeSetup` per OS, in the order of :data:`OS_LABELS`."""
    return [node_setup(name, portal_url, pip_spec, model, token) for name in OS_LABELS]
