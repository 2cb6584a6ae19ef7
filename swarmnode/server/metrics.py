"""Prometheus metrics of one node, served as ``GET /metrics`` on the node's own websocket port.

Every node has its own :class:`~prometheus_client.CollectorRegistry` (tests run several nodes in one
process). Counters move where things happen (frames in and out, replies that are errors, the scheduler's
passes); gauges read the node's state when scraped (sessions, cache, queue, relay links).

What a scrape shows is what the node already tells any peer in its ``Info`` reply plus totals: no session
ids, prompts, tensors, peer addresses, keys or tokens, and error codes only as the node's own short codes.
Who may scrape is ``NodeConfig.metrics``: ``loopback`` (the default: a Prometheus on the same host, or an
SSH tunnel), ``public`` (anyone who can reach the port) or ``off`` (404, as for any other path).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from swarmnode.protocol import Error, Message
from swarmnode.runtime.jobs import DECODE, FORWARD, PREFILL

if TYPE_CHECKING:
    from websockets.asyncio.server import ServerConnection
    from websockets.http11 import Request, Response

METRICS_PATH = "/metrics"
METRICS_ACCESS = ("off", "loopback", "public")
_CODE = re.compile(r"[a-z][a-z0-9_]{0,39}")
MAX_ERROR_CODES = 64  # distinct error-code label values; any more are counted as "other"
COMMON_ERRORS = ("bad_frame", "bad_field", "bad_shape", "internal", "out_of_cache", "unknown_session")
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64)


class NodeMetrics:
    """The metrics of ``node`` (a :class:`~swarmnode.server.node.Node`), registered in a registry of its own.

    Args:
        node: the node; read at scrape time (its pool, scheduler, relay hub and link).
        access: who may ``GET /metrics``: one of :data:`METRICS_ACCESS`.
    """

    def __init__(self, node, access: str = "loopback") -> None:
        if access not in METRICS_ACCESS:
            raise ValueError(f"metrics access must be one of {', '.join(METRICS_ACCESS)}, not {access!r}")
        self.access = access
        self.registry = reg = CollectorRegistry(auto_describe=True)
        self.steps = Counter("swarmnode_steps", "Steps (jobs) computed, by kind", ["kind"], registry=reg)
        self.tokens = Counter("swarmnode_step_tokens", "Positions computed in steps", registry=reg)
        self.batch_size = Histogram(
            "swarmnode_batch_size", "Jobs per compute pass", buckets=BATCH_BUCKETS, registry=reg
        )
        self.bytes_in = Counter("swarmnode_received_bytes", "Bytes of frames received from peers", registry=reg)
        self.bytes_out = Counter("swarmnode_sent_bytes", "Bytes of replies sent to peers", registry=reg)
        self.frames = Counter("swarmnode_frames", "Frames received from peers", registry=reg)
        self.errors = Counter("swarmnode_errors", "Error replies sent, by protocol code", ["code"], registry=reg)
        self._codes: set[str] = set()
        for code in COMMON_ERRORS:  # present (at 0) from the start, so dashboards show a rate, not "no data"
            self.errors.labels(self._code_label(code))
        gauges = {
            "swarmnode_sessions": ("Open sessions", lambda: len(node.pool.sessions)),
            "swarmnode_cache_tokens_used": (
                "KV-cache tokens reserved by open sessions",
                lambda: node.pool.budget_tokens - node.pool.tokens_left,
            ),
            "swarmnode_cache_tokens_budget": ("KV-cache budget in tokens", lambda: node.pool.budget_tokens),
            "swarmnode_queue_depth": ("Jobs waiting for the compute worker", lambda: node.scheduler.queue_depth),
            "swarmnode_throughput_tokens_per_second": ("Measured decoding speed", lambda: node.throughput.decode),
        }
        for name, (doc, read) in gauges.items():
            Gauge(name, doc, registry=reg).set_function(read)
        doc = "Relay links: relayed_through (0/1), relaying_for (nodes attached)"
        links = Gauge("swarmnode_relay_links", doc, ["role"], registry=reg)
        links.labels("relayed_through").set_function(lambda: int(bool(getattr(node.relay_link, "address", ""))))
        links.labels("relaying_for").set_function(lambda: len(node.relay_hub.nodes) if node.relay_hub else 0)
        info = Gauge(
            "swarmnode_info",
            "What this node serves (as in its Info reply)",
            ["model", "start_block", "end_block", "backend", "device", "dtype"],
            registry=reg,
        )
        info.labels(
            node.model_name, str(node.start), str(node.end), node.backend.name, node.device, node.precision
        ).set(1)
        node.scheduler.on_batch = self.batch

    # -- events ------------------------------------------------------------------------------------

    def received(self, frame: bytes | str) -> None:
        """A frame arrived from a peer."""
        self.frames.inc()
        self.bytes_in.inc(len(frame))

    def replied(self, reply: Message, size: int) -> None:
        """``reply`` (``size`` bytes encoded) goes back to a peer."""
        self.bytes_out.inc(size)
        if isinstance(reply, Error):
            self.errors.labels(self._code_label(reply.code)).inc()

    def batch(self, jobs: Sequence) -> None:
        """The scheduler ran one pass over ``jobs`` (:class:`~swarmnode.runtime.jobs.Job`)."""
        self.batch_size.observe(len(jobs))
        for job in jobs:
            self.steps.labels(_KINDS.get(job.kind, "other")).inc()
            self.tokens.inc(job.tokens)

    def _code_label(self, code: str) -> str:
        # Codes are the node's own constants; still, a label value never carries arbitrary text, and the
        # number of series stays bounded whatever a peer manages to provoke.
        if not isinstance(code, str) or not _CODE.fullmatch(code):
            return "other"
        if code not in self._codes:
            if len(self._codes) >= MAX_ERROR_CODES:
                return "other"
            self._codes.add(code)
        return code

    # -- HTTP -------------------------------------------------------------------------------------

    def render(self) -> bytes:
        """The scrape: Prometheus' text format."""
        return generate_latest(self.registry)

    def allowed(self, connection: ServerConnection) -> bool:
        """Whether this connection's peer may read the metrics."""
        if self.access == "public":
            return True
        if self.access == "off":
            return False
        try:
            ip = ipaddress.ip_address(connection.remote_address[0])
        except (TypeError, ValueError, IndexError, AttributeError):
            return False
        if getattr(ip, "ipv4_mapped", None) is not None:
            ip = ip.ipv4_mapped
        return ip.is_loopback

    def respond(self, connection: ServerConnection, request: Request) -> Response | None:
        """The answer to ``GET /metrics`` for websockets' ``process_request``; ``None`` for other paths.

        A peer that may not read them gets the same 404 as for any unknown path.
        """
        if request.path.split("?")[0] != METRICS_PATH:
            return None
        if not self.allowed(connection):
            return connection.respond(404, "not found\n")
        response = connection.respond(200, self.render().decode())
        del response.headers["Content-Type"]
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return response


_KINDS = {DECODE: "decode", PREFILL: "prefill", FORWARD: "forward"}
