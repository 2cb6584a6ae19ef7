"""Whom the gateway trusts: tracker nodes in good standing, each pinned to the key the tracker registered.

The gateway routes chat and API generations over volunteers' nodes, so it must not be easier to fool
than a careful client (issue #17):

- **Only trusted nodes**: online, direct, not banned, not suspended and scoring at least
  ``REPUTATION_THRESHOLD`` (:func:`trusted_nodes`, the same filter as the tracker's public span list).
- **Pinned keys**: a node's own ``info`` reply is not believed about who it is. A tracked URL is used
  only while the node there announces the key, model and span the tracker registered; the secure channel
  (spec §10) is then agreed with that registered key, so a machine that took over the address without the
  node's private key fails the handshake (:class:`GatewayModel`).
- **Audits feed reputation**: what the client's sampled audits find goes through the same checks as a
  client's report (:func:`portal.reputation.evidence.record_gateway_audit`), in a background thread
  (:class:`GatewayEvidence`), so a node caught lying by the gateway loses reputation and is suspended
  after repeated failures, for every client.

Nodes in ``CHAT_SWARM_PEERS`` are the operator's own: used as they announce themselves (still encrypted).
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import threading
from collections.abc import Iterable
from dataclasses import dataclass

from django.conf import settings
from django.db import close_old_connections, connections

from swarmnode.client.audit import AuditPolicy, Evidence
from swarmnode.client.model import DistributedModelForCausalLM
from swarmnode.discovery import PeerInfo

log = logging.getLogger("portal.generation.trust")


@dataclass(frozen=True)
class TrackedNode:
    """A node as the tracker registered it (``node_id`` 0: a static peer from ``CHAT_SWARM_PEERS``)."""

    url: str
    node_id: int = 0
    public_key: str = ""
    model: str = ""
    start_block: int = 0
    end_block: int = 0
    # Not compared: scores move with every audit, and the pool re-probes the swarm whenever its node set changes.
    reputation: float | None = dataclasses.field(default=None, compare=False)

    def matches(self, peer: PeerInfo) -> bool:
        """Whether ``peer`` (what the node at :attr:`url` says of itself) is this registration."""
        if not self.node_id:
            return True  # the operator's static peer: nothing registered to compare with
        return (
            bool(self.public_key)
            and peer.public_key == self.public_key
            and (peer.model, peer.start_block, peer.end_block) == (self.model, self.start_block, self.end_block)
        )


def trusted_nodes(model: str) -> list[TrackedNode]:
    """Nodes the gateway may route ``model`` over: trusted tracker nodes, then the static ``CHAT_SWARM_PEERS``.

    Left out: banned nodes and nodes of banned owners, offline nodes, suspended nodes, nodes scoring under
    ``REPUTATION_THRESHOLD``, relayed nodes (the gateway dials nodes directly) and nodes without a key.
    """
    from portal.reputation import scoring
    from portal.swarm import tracker

    close_old_connections()
    try:
        rows = (
            scoring.with_scores(scoring.trusted(tracker.online_spans(model)))
            .filter(relay=False)
            .exclude(url="")
            .exclude(public_key="")
            .values_list("url", "pk", "public_key", "model__name", "start_block", "end_block", "reputation")
        )
        nodes = [TrackedNode(*row) for row in rows]
    finally:
        # Generation threads run for seconds to minutes: hand the connection back to the pool now, or
        # more concurrent generations than DATABASE_POOL_MAX would starve each other.
        connections.close_all()
    tracked = {n.url for n in nodes}
    return nodes + [TrackedNode(url) for url in settings.CHAT_SWARM_PEERS if url not in tracked]


def pin(peers: Iterable[PeerInfo], nodes: Iterable[TrackedNode]) -> list[PeerInfo]:
    """``peers`` (the nodes' own info replies) that are what the tracker registered, with its id, key and score.

    A peer at a URL the tracker lists is kept only if it announces the registered key, model and span; it then
    carries the tracker's ``node_id`` (audit evidence names it) and ``reputation``. Peers at no listed URL are
    dropped.
    """
    by_url: dict[str, list[TrackedNode]] = {}
    for node in nodes:
        by_url.setdefault(node.url, []).append(node)
    out = []
    for peer in peers:
        match = next((n for n in by_url.get(peer.url, []) if n.matches(peer)), None)
        if match is None:
            if peer.url in by_url:
                log.warning("%s does not announce what the tracker registered there: not used", peer.url)
            continue
        if match.node_id:
            peer = dataclasses.replace(
                peer, node_id=match.node_id, public_key=match.public_key, reputation=match.reputation
            )
        out.append(peer)
    return out


class PinnedPeers:
    """Mixin for a swarm client (causal LM or encoder): it routes only over the nodes the tracker registered,
    each at its registered key, and every (re)discovery keeps only the nodes :func:`pin` accepts."""

    registered: tuple[TrackedNode, ...] = ()

    def use(self, nodes: list[TrackedNode]) -> list[PeerInfo]:
        """Route over exactly ``nodes`` from now on (probing them); returns the pinned peers."""
        self.registered = tuple(nodes)
        return self.set_peers([n.url for n in nodes])

    def discover(self) -> list[PeerInfo]:
        """Probe the nodes again, keeping those that are what the tracker registered (see :func:`pin`)."""
        super().discover()
        self.peers = pin(self.peers, self.registered)
        return self.peers


class GatewayModel(PinnedPeers, DistributedModelForCausalLM):
    """The swarm client of the gateway: every (re)discovery keeps only the nodes :func:`pin` accepts.

    Sessions rediscover while failing over (``InferenceSession(discover=...)``), so pinning lives here
    rather than once in the pool: a node cannot slip back in with another key between two refreshes.
    """


def gateway_options() -> dict:
    """The :class:`~swarmnode.client.config.ClientConfig` fields the gateway's trust settings give."""
    rate = float(settings.CHAT_GATEWAY_AUDIT_RATE)
    return {
        # True: encrypted to every node (with the pinned key); None: the client's default, relays only.
        "secure": True if settings.CHAT_GATEWAY_SECURE else None,
        "audit": AuditPolicy(rate=rate),
        "reporter": GatewayEvidence() if rate > 0 else None,
    }


class GatewayEvidence:
    """The gateway's audit reporter: records evidence in the portal's own database, in a background thread.

    It has the interface of :class:`swarmnode.client.audit.EvidenceReporter` (``evidence``, ``steps``) that the
    client calls, but no HTTP hop to itself: a step never waits on the database.
    """

    def __init__(self) -> None:
        self.recorded = 0
        self.errors: list[str] = []
        self._queue: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="gateway-evidence", daemon=True)
        self._thread.start()

    def evidence(self, ev: Evidence) -> None:
        """Queue an audit's result (of tracker nodes only: static peers have no standing)."""
        if ev.node.node_id and ev.auditor.node_id:
            self._queue.put(ev.to_json())

    def steps(self, peer: PeerInfo, ok: int, failed: int, measured_throughput: float | None = None) -> None:
        """Ignored: the gateway's step counts are no evidence.

        Anyone can send the gateway traffic, so counting its served steps would let a stranger raise their own
        node's score by chatting through it (client step reports are capped per reporter for that reason,
        ``reputation.reporting``), and its failures and speeds reflect the gateway's own load as much as the node.
        """
        return None

    def flush(self, timeout: float = 30.0) -> None:
        """Wait until everything queued so far was recorded (or refused)."""
        done = threading.Event()
        threading.Thread(target=lambda: (self._queue.join(), done.set()), daemon=True).start()
        done.wait(timeout)

    def _run(self) -> None:
        while True:
            body = self._queue.get()
            try:
                close_old_connections()
                self._record(body)
                self.recorded += 1
            except Exception as exc:  # a refused report must never stop the next ones
                self.errors.append(str(exc))
                log.info("gateway audit evidence not recorded: %s", exc)
            finally:
                connections.close_all()
                self._queue.task_done()

    @staticmethod
    def _record(body: dict) -> None:
        from portal.reputation import evidence

        evidence.record_gateway_audit(body)
