"""Start and stop real node processes on this machine (demo, benchmarks, tests)."""

from __future__ import annotations

import json
import os
import selectors
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path


def split_blocks(num_blocks: int, num_nodes: int) -> list[tuple[int, int]]:
    """Split [0, num_blocks) into ``num_nodes`` contiguous spans of near-equal length."""
    if not 1 <= num_nodes <= num_blocks:
        raise ValueError(f"cannot split {num_blocks} blocks over {num_nodes} nodes")
    bounds = [round(i * num_blocks / num_nodes) for i in range(num_nodes + 1)]
    return list(zip(bounds[:-1], bounds[1:], strict=True))


@dataclass
class NodeProcess:
    """A running ``swarmnode serve`` process and what its ready line said."""

    process: subprocess.Popen
    ready: dict = field(default_factory=dict)

    @property
    def url(self) -> str:
        """The node's websocket URL."""
        return self.ready["url"]

    @property
    def address(self) -> str:
        """Where clients reach the node: its relay address when relayed (spec §9), else its URL."""
        return self.ready.get("relay_address") or self.ready["url"]

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM the process and wait for it; kill it if it is still there after ``timeout`` seconds.

        Returns:
            The exit code (negative: the signal that ended it).
        """
        if self.process.poll() is None:
            self.process.terminate()
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()


def start_node(
    model: str,
    blocks: str,
    *,
    extra_args: list[str] | None = None,
    env: dict | None = None,
    log_path: Path | None = None,
    timeout: float = 300.0,
    wrap: list[str] | None = None,
    until: str | None = None,
) -> NodeProcess:
    """Start ``swarmnode serve`` and wait for its ready line (with ``--relay always``: until it is relayed).

    ``wrap`` prefixes the command (e.g. ``["ip", "netns", "exec", NS]`` to run it in a network namespace);
    ``until`` names the JSON event to wait for (``ready`` or ``relayed``).

    Raises:
        RuntimeError: the process exited or stayed silent past ``timeout``.
    """
    cmd = [*(wrap or []), sys.executable, "-m", "swarmnode", "serve", "--model", model, "--port", "0"]
    if blocks:  # None: let the node choose (--num-blocks, --blocks auto in extra_args)
        cmd += ["--blocks", blocks]
    cmd += extra_args or []
    if until is None:
        relayed = "--relay" in cmd and cmd[cmd.index("--relay") + 1 :][:1] == ["always"]
        until = "relayed" if relayed else "ready"
    return _start(cmd, f"node {blocks}", env, log_path, timeout, until=until)


def start_relay(
    *,
    extra_args: list[str] | None = None,
    env: dict | None = None,
    log_path: Path | None = None,
    wrap: list[str] | None = None,
) -> NodeProcess:
    """Start ``swarmnode relay`` (spec §9) and wait for its ready line (``url``: the relay's base URL)."""
    cmd = [*(wrap or []), sys.executable, "-m", "swarmnode", "relay", "--port", "0", *(extra_args or [])]
    return _start(cmd, "relay", env, log_path, 60.0)


def stdout_events(proc: subprocess.Popen, timeout: float) -> Iterator[dict]:
    """The JSON objects ``proc`` prints one per line on its stdout (other lines skipped), until ``timeout``
    seconds have passed, its stdout ends or it exits: how a caller waits for a child's ``ready`` line."""
    # Raw reads, split here: a buffered readline() could swallow a second line (``relayed`` right after
    # ``ready``) into its buffer, where select() never sees it.
    fd = proc.stdout.fileno()
    sel = selectors.DefaultSelector()
    sel.register(fd, selectors.EVENT_READ)
    pending = b""
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if not sel.select(timeout=0.5):
                if proc.poll() is not None:
                    return
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                return
            *lines, pending = (pending + chunk).split(b"\n")
            for line in lines:
                try:
                    msg = json.loads(line)
                except ValueError:
                    continue
                if isinstance(msg, dict):
                    yield msg
    finally:
        sel.close()


def _start(
    cmd: list[str], what: str, env: dict | None, log_path: Path | None, timeout: float, until: str = "ready"
) -> NodeProcess:
    stderr = open(log_path, "ab") if log_path else None  # noqa: SIM115 - handed to the child
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=stderr, env={**os.environ, **(env or {})}, bufsize=0)
    if stderr:
        stderr.close()
    ready: dict = {}
    for msg in stdout_events(proc, timeout):
        if msg.get("event") == "ready":
            ready = msg
        if msg.get("event") == "relayed" and ready:  # attached to a relay (--relay always)
            ready["relay_address"] = msg["address"]
        if msg.get("event") == until and ready:
            return NodeProcess(proc, ready)
    proc.kill()
    raise RuntimeError(f"{what} did not become {until} (exit code {proc.poll()}); see {log_path or 'stderr'}")


class LocalSwarm:
    """N node processes on loopback splitting the model evenly. Use as a context manager.

    Args:
        model: model spec for every node.
        num_blocks: blocks of the model.
        num_nodes: how many nodes.
        extra_args: more ``swarmnode serve`` arguments for every node.
        share_machine: the nodes take turns on this machine's cores (``--machine-lock`` on one
            file): what separate machines would give them, instead of every node slowing the others.
        identity_dir: keep node *i*'s identity key in ``identity_dir/node-<i>.key`` (created on the first
            run), so each node is the same node again on every start (a portal tracks nodes by key);
            None: a fresh key per process.
    """

    def __init__(
        self,
        model: str,
        num_blocks: int,
        num_nodes: int = 3,
        extra_args: list[str] | None = None,
        log_dir: Path | None = None,
        env: dict | None = None,
        share_machine: bool = True,
        identity_dir: Path | None = None,
    ):
        self.model = model
        self.identity_dir = identity_dir
        self.spans = split_blocks(num_blocks, num_nodes)
        self.extra_args = list(extra_args or [])
        self._lock_dir = None
        if share_machine and "--machine-lock" not in self.extra_args:
            self._lock_dir = tempfile.TemporaryDirectory(prefix="layerswarm-machine-")
            self.extra_args += ["--machine-lock", str(Path(self._lock_dir.name) / "compute.lock")]
        self.log_dir = log_dir
        self.env = env
        self.nodes: list[NodeProcess] = []

    @property
    def urls(self) -> list[str]:
        """URLs of the running nodes, in block order."""
        return [n.url for n in self.nodes]

    @property
    def addresses(self) -> list[str]:
        """Where clients reach the nodes (relay addresses for relayed ones), in block order."""
        return [n.address for n in self.nodes]

    def start(self) -> LocalSwarm:
        """Start every node (in parallel) and wait until all are ready."""
        from concurrent.futures import ThreadPoolExecutor

        def launch(index, span):
            log = self.log_dir / f"node-{span[0]}-{span[1]}.log" if self.log_dir else None
            extra = list(self.extra_args)
            if self.identity_dir is not None:
                extra += ["--identity", str(Path(self.identity_dir) / f"node-{index}.key")]
            return start_node(self.model, f"{span[0]}:{span[1]}", extra_args=extra, env=self.env, log_path=log)

        with ThreadPoolExecutor(len(self.spans)) as pool:
            futures = [pool.submit(launch, i, s) for i, s in enumerate(self.spans)]
            for f in futures:
                try:
                    self.nodes.append(f.result())
                except Exception:
                    self.stop()
                    for g in futures:
                        if g.done() and not g.exception():
                            g.result().process.kill()
                    raise
        return self

    def stop(self) -> None:
        """Terminate every node and wait for them."""
        for n in self.nodes:
            if n.process.poll() is None:
                n.process.terminate()
        for n in self.nodes:
            try:
                n.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                n.process.kill()
                n.process.wait()
        self.nodes = []

    def __enter__(self) -> LocalSwarm:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
        if self._lock_dir is not None:
            self._lock_dir.cleanup()
            self._lock_dir = None
