"""``swarmnode doctor``: will this machine make a useful node, and what to fix if not.

Each check reads the same settings ``swarmnode serve`` would (command line, ``SWARMNODE_*``, the config
file) and gives one line: ``OK``, ``WARN`` (the node runs, but worse than it could) or ``FAIL`` (it would
not start, or would serve nobody), with the fix. Checks, in order:

- ``system``: Python and OS;
- ``model``: whether the model is in the cache (a first start downloads and converts it);
- ``memory`` and ``disk``: free RAM (or GPU memory) against the span's weights and KV cache, free disk
  against the model and its ONNX graph;
- ``backend``: the backend ``serve`` would choose, timed on a two-block span: one decoding step's time
  per block and the tokens/s that gives the span;
- ``portal`` and ``token``: the portal answers, and accepts the node token
  (``POST /api/v1/nodes/key-challenge/`` answers only a valid one, and changes nothing);
- ``reachability``: a relay dials back a probe on the node's address and port (spec §9.3): reachable
  directly, or behind NAT / a firewall, so the node will serve through a relay.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx

OK, WARN, FAIL = "OK", "WARN", "FAIL"
SPEED_BLOCKS = 2  # blocks loaded to time a decoding step
DISK_SLACK = 1024**3  # free disk wanted beyond the model's own files


@dataclass(frozen=True)
class Check:
    """One line of the report."""

    name: str  # system, model, memory, disk, backend, portal, token, reachability
    status: str  # OK, WARN or FAIL
    detail: str  # what was found, with numbers
    fix: str = ""  # what to do about a WARN or FAIL

    def line(self) -> str:
        """``STATUS name  detail -> fix``, as printed."""
        return f"{self.status:<4} {self.name:<12} {self.detail}" + (f"\n{'':17}fix: {self.fix}" if self.fix else "")

    def to_dict(self) -> dict:
        """The check as JSON-ready fields (``--json``)."""
        return asdict(self)


def run_checks(config, *, speed: bool = True) -> list[Check]:
    """Run every check for a node configured by ``config`` (a ``NodeConfig``).

    Args:
        config: the settings ``swarmnode serve`` would run with.
        speed: time the backend (a few seconds: loads two blocks, may export an ONNX graph).

    Returns:
        The checks, in the order of the module's docstring.
    """
    checks = [system_check()]
    checkpoint, model_check = _model(config)
    checks.append(model_check)
    if checkpoint is not None:
        checks.append(_guarded("memory", memory_check, config, checkpoint))
    checks.append(disk_check(checkpoint))
    if checkpoint is not None and speed:
        checks.append(_guarded("backend", backend_check, config, checkpoint))
    checks += portal_checks(config)
    checks.append(asyncio.run(reachability_check(config)))
    return checks


def _guarded(name: str, check, *args) -> Check:
    """A check that crashed is a FAIL line, not a traceback: the other lines still help."""
    try:
        return check(*args)
    except Exception as exc:
        return Check(
            name, FAIL, f"{type(exc).__name__}: {exc}"[:300], "see the message; swarmnode serve would stop here"
        )


def system_check() -> Check:
    """Python and OS."""
    detail = f"Python {platform.python_version()} on {platform.system()} {platform.release()} {platform.machine()}"
    detail += f", {os.cpu_count()} CPU threads"
    if sys.maxsize <= 2**32:
        return Check("system", FAIL, detail + ", 32-bit Python", "install a 64-bit Python (no 32-bit PyTorch)")
    return Check("system", OK, detail)


def _model(config):
    """The checkpoint if it is already in the cache, and the ``model`` line."""
    from swarmnode.models import Checkpoint, layerswarm_home, resolve_model

    try:
        path = resolve_model(config.model, fetch=False)
    except FileNotFoundError as exc:
        if "not fetched" in str(exc):
            fix = f"swarmnode models fetch {config.model} (serve also fetches it at its first start)"
            return None, Check("model", WARN, f"{config.model} is not in the cache {layerswarm_home()}", fix)
        return None, Check("model", FAIL, str(exc), "set model to a known name, a checkpoint directory or a .gguf")
    checkpoint = Checkpoint(path)
    size = sum(f.stat().st_size for f in path.glob("*.safetensors"))
    return checkpoint, Check(
        "model", OK, f"{config.model}: {checkpoint.num_blocks} blocks, {size / 1e6:.0f} MB in {path}"
    )


def _span_length(config, num_blocks: int) -> tuple[int | None, str]:
    """Blocks the node would serve, or ``None`` when it picks as many as fit (``auto``)."""
    from swarmnode.server.config import parse_blocks

    if config.blocks and config.blocks != "auto":
        start, end = parse_blocks(config.blocks, num_blocks)
        return end - start, f"blocks {start}:{end}"
    if config.num_blocks and config.num_blocks != "auto":
        return int(config.num_blocks), f"{config.num_blocks} blocks"
    if config.blocks == "auto" or config.portal or config.peers or config.num_blocks == "auto":
        return None, "blocks auto"
    return num_blocks, f"the whole model ({num_blocks} blocks)"


def memory_check(config, checkpoint) -> Check:
    """Free memory against the span's weights and its KV-cache budget."""
    from swarmnode.runtime.planning import (
        default_memory_budget,
        parse_bytes,
        plan_memory,
        resolve_device,
        resolve_precision,
    )

    device = resolve_device(config.device)
    precision, _ = resolve_precision(device, config.dtype)
    budget = parse_bytes(config.max_memory) if config.max_memory else default_memory_budget(device)
    want, what = _span_length(config, checkpoint.num_blocks)
    try:
        plan = plan_memory(checkpoint, precision, budget, config.cache_tokens)
    except ValueError as exc:  # DoesNotFit
        return Check("memory", FAIL, str(exc), "lower cache-tokens, or raise max-memory on a larger machine")
    source = f"max-memory {config.max_memory}" if config.max_memory else f"{budget / 1e9:.1f} GB usable on {device}"
    detail = f"{source}: {plan.max_blocks} of {checkpoint.num_blocks} blocks fit at {precision}"
    if want is None:
        return Check("memory", OK, f"{detail}; {what} takes what fits")
    if want > plan.max_blocks:
        fix = f'serve fewer blocks (blocks = "auto" takes {plan.max_blocks}), or lower cache-tokens'
        return Check("memory", FAIL, f"{detail}, {what} asked: {plan.explain(want)}", fix)
    return Check(
        "memory", OK, f"{detail}; {what} needs {want * (plan.block_bytes + plan.cache_bytes_per_block) / 1e6:.0f} MB"
    )


def disk_check(checkpoint) -> Check:
    """Free disk in the cache against the model's files (and as much again for ONNX graphs)."""
    from swarmnode.models import layerswarm_home

    home = layerswarm_home()
    probe = home
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if checkpoint is None:
        need, what = 2 * DISK_SLACK, "a model download and conversion"
    else:
        need, what = DISK_SLACK, "ONNX graphs and receipts"
    detail = f"{free / 1e9:.1f} GB free in {home}"
    if free < need:
        fix = "free some disk, or point LAYERSWARM_HOME at a larger disk"
        return Check("disk", WARN, f"{detail}; {need / 1e9:.0f} GB wanted for {what}", fix)
    return Check("disk", OK, detail)


def backend_check(config, checkpoint) -> Check:
    """The backend ``serve`` would pick, and one decoding step's time, extrapolated to the span."""
    import torch

    from swarmnode.models import load_span
    from swarmnode.runtime.planning import (
        TORCH_DTYPES,
        build_backend,
        decode_step_ms,
        resolve_device,
        resolve_precision,
    )

    device = resolve_device(config.device)
    precision, _ = resolve_precision(device, config.dtype)
    blocks = min(SPEED_BLOCKS, checkpoint.num_blocks)
    span = load_span(checkpoint, 0, blocks, TORCH_DTYPES.get(precision, torch.float32), device)
    backend, reason = build_backend(span, device, precision, config.backend, config.num_threads)
    ms = decode_step_ms(backend, checkpoint.config.hidden_size, rounds=8) / blocks
    want, what = _span_length(config, checkpoint.num_blocks)
    n = want or checkpoint.num_blocks
    detail = f"{backend.name} on {device} at {precision} ({reason}): {ms:.2f} ms per block per decoding step"
    detail += f", about {1000 / (ms * n):.0f} tokens/s through {n} blocks"
    if device == "cpu" and backend.name != "onnxruntime" and not _has_onnxruntime():
        fix = "pip install onnxruntime: ONNX Runtime decodes 1.5-3x faster than PyTorch on most CPUs"
        return Check("backend", WARN, detail + "; onnxruntime is not installed", fix)
    return Check("backend", OK, detail)


def _has_onnxruntime() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def portal_checks(config, timeout: float = 5.0) -> list[Check]:
    """Whether the portal answers, and whether it accepts the node token."""
    if not config.portal:
        fix = 'set portal = "https://..." in node.toml (or SWARMNODE_PORTAL) to be listed, routed to and paid'
        return [Check("portal", WARN, "no portal configured: only clients that know this node's URL find it", fix)]
    base = config.portal.rstrip("/")
    try:
        started = time.perf_counter()
        reply = httpx.get(f"{base}/api/v1/models/", timeout=timeout)
        ms = (time.perf_counter() - started) * 1000
    except httpx.HTTPError as exc:
        fix = "check the portal URL and this machine's network (proxy, firewall, DNS)"
        return [Check("portal", FAIL, f"{base} does not answer: {type(exc).__name__}: {exc}"[:300], fix)]
    if reply.status_code != 200:
        fix = "check the portal URL: it must be the portal's base address"
        return [Check("portal", FAIL, f"{base}/api/v1/models/ answered HTTP {reply.status_code}", fix)]
    checks = [Check("portal", OK, f"{base} answers (HTTP 200 in {ms:.0f} ms)")]
    get_token = "create a node token on the portal's Contribute page; put it in SWARMNODE_TOKEN or token = in node.toml"
    if not config.token:
        return [*checks, Check("token", FAIL, "no node token: the portal will not list this node", get_token)]
    try:
        reply = httpx.post(
            f"{base}/api/v1/nodes/key-challenge/", headers={"Authorization": f"Bearer {config.token}"}, timeout=timeout
        )
    except httpx.HTTPError as exc:
        return [*checks, Check("token", FAIL, f"cannot ask the portal: {exc}"[:300], "try again")]
    if reply.status_code == 200:
        return [*checks, Check("token", OK, f"the portal accepts the node token {config.token[:8]}...")]
    if reply.status_code in (401, 403):
        return [
            *checks,
            Check("token", FAIL, f"the portal refuses the node token (HTTP {reply.status_code})", get_token),
        ]
    return [*checks, Check("token", WARN, f"the portal answered HTTP {reply.status_code}", "try again later")]


async def reachability_check(config) -> Check:
    """Serve a probe on the node's address and port and ask a relay to dial it back (spec §9.3)."""
    from swarmnode.relaying.choice import portal_relay, relay_candidates

    candidates = relay_candidates(config)
    if config.relay == "never":
        return Check("reachability", OK, "relay = never: the node serves directly only (not checked)")
    if not candidates:
        fix = "set portal (its relay checks) or relays = [...] in node.toml"
        return Check("reachability", WARN, "no relay to ask whether this node is reachable from outside", fix)
    from swarmnode.server.reach_probe import InfoProbe, dial_back  # torch, via the server package

    async with InfoProbe(config) as probe:
        token_relays = [portal_relay(config.portal)] if config.portal else []
        answer, relay = await dial_back(probe, candidates, config.token or "", token_relays)
    if answer is None:
        fix = "check the relays / portal URL; the node will assume it is reachable"
        return Check("reachability", WARN, f"no relay answered the dial-back check ({', '.join(candidates)})", fix)
    if answer:
        return Check("reachability", OK, f"{relay} reached {probe.url} directly: clients can dial this node")
    if config.relay == "always":
        return Check(
            "reachability", OK, f"{probe.url} is not reachable from outside; relay = always serves through a relay"
        )
    port = probe.port
    return Check(
        "reachability",
        WARN,
        f"{relay} cannot reach {probe.url} (NAT or firewall): the node needs a relay and will serve through one",
        f"to serve directly (one hop less), forward TCP port {port} on the router to this machine"
        + ("" if config.port else f"; set port = {port} (0 picks a new port at each start)")
        + ("" if config.public_host else "; set public-host to the router's public address"),
    )


def run_command(parser, args, node_config) -> int:
    """``swarmnode doctor``: read ``serve``'s settings, run the checks, print them; returns the exit code.

    Args:
        parser: the ``swarmnode`` argument parser (its ``serve`` options are the settings).
        args: ``doctor``'s options (``config``, ``portal``, ``no_speed``, ``json``).
        node_config: turns parsed ``serve`` options into a ``NodeConfig``.
    """
    from swarmnode.config_file import apply_settings, subparser

    path = apply_settings(subparser(parser, "serve"), args.config)  # the settings serve would run with
    settings = parser.parse_args(["serve"])
    settings.portal = args.portal or settings.portal
    checks = run_checks(node_config(settings), speed=not args.no_speed)
    if args.json:
        print(json.dumps({"config": str(path) if path else None, "checks": [c.to_dict() for c in checks]}))
    else:
        print(config_note(path) + "\n" + report(checks))
    return exit_code(checks)


def exit_code(checks: list[Check]) -> int:
    """1 if any check failed, else 0."""
    return int(any(c.status == FAIL for c in checks))


def report(checks: list[Check]) -> str:
    """The human-readable report."""
    return "\n".join(c.line() for c in checks)


def config_note(path: Path | None) -> str:
    """Which config file the settings came from (first line of the report)."""
    return f"settings: {path}" if path else "settings: command line, SWARMNODE_* and defaults (no config file)"
