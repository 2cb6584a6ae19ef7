"""``AutoDistributedModelForCausalLM``: a causal LM whose blocks run on a swarm.

The client keeps the embeddings, the final norm and the LM head; every generation opens one
session per span and sends only the new token's hidden state per step. Its options are one
:class:`~swarmnode.client.config.ClientConfig`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import secrets
import time
from collections import deque
from collections.abc import Iterator

import torch

from swarmnode.client.audit import AuditPolicy
from swarmnode.client.config import ClientConfig, tensor_to_wire_dtype
from swarmnode.client.failover import BanList, FailoverPolicy, StepTimer
from swarmnode.client.generation import (
    GenerationStats,
    build_processors,
    finished_rows,
    generation_config_of,
    hit_stop,
    rolled_back,
    sampling_params,
    select_next,
)
from swarmnode.client.head import load_client_head
from swarmnode.client.latency import RttTable
from swarmnode.client.parts import SessionsMixin, chain_or_explain, config_and_peers, continued_ids
from swarmnode.client.probing import probe_swarm
from swarmnode.client.routing import RoutingPolicy, find_chain
from swarmnode.client.session import AuditRollback, InferenceSession
from swarmnode.client.weights import keep_matching
from swarmnode.discovery import PeerInfo
from swarmnode.models import Checkpoint, resolve_model
from swarmnode.models.registry import model_name
from swarmnode.trust.receipts import SignedReceipt

__all__ = ["AutoDistributedModelForCausalLM", "DistributedModelForCausalLM", "GenerationStats", "tensor_to_wire_dtype"]

_OPTION_NAMES = frozenset(f.name for f in dataclasses.fields(ClientConfig))


class DistributedModelForCausalLM(SessionsMixin):
    """Client side of a model served by a swarm. Build it with :class:`AutoDistributedModelForCausalLM`.

    Petals' API is here too (``client/parts.py``): ``inference_session``, ``generate(..., session=)``,
    ``transformer.word_embeddings``, ``transformer.h``, ``lm_head``.

    Args:
        name: the model's name (nodes of other models are skipped).
        checkpoint: the local checkpoint (embeddings, final norm, LM head, tokenizer).
        peers: the nodes known so far, as they answered.
        dtype, timeout: as in :class:`ClientConfig` (positional for compatibility; default: ``config``'s).
        urls: static node URLs, probed again when rediscovering (default: the peers').
        rtts: measured round-trip times (default: none yet).
        config: the client's options.
        **options: :class:`ClientConfig` fields replacing those of ``config``.

    Raises:
        TypeError: an option that is no :class:`ClientConfig` field.
        ValueError: a bad ``head_backend``, or ``onnxruntime`` where it cannot run.
    """

    def __init__(
        self,
        name: str,
        checkpoint: Checkpoint,
        peers: list[PeerInfo],
        dtype: torch.dtype | None = None,
        timeout: float | None = None,
        *,
        urls: list[str] | None = None,
        rtts: RttTable | None = None,
        config: ClientConfig | None = None,
        **options,
    ):
        given = {k: v for k, v in (("dtype", dtype), ("timeout", timeout)) if v is not None}
        config = ClientConfig.build(config, **given, **options)
        self.client_config = dataclasses.replace(  # with every default resolved, as each session gets it
            config,
            routing=config.routing or RoutingPolicy(rtt_weight=0.5 if config.push else 1.0),
            failover=config.failover or FailoverPolicy(first_step_timeout_s=config.timeout),
            audit=config.audit or AuditPolicy(),
        )
        self.name = name
        self.checkpoint = checkpoint
        self.config = checkpoint.config  # the transformers model config (as on a transformers model)
        self.peers = peers
        self.urls = list(urls or [p.url for p in peers])  # static peers, probed again when rediscovering
        self.rtts = rtts or RttTable()
        self.receipts: deque[SignedReceipt] = deque(maxlen=10_000)  # countersigned receipts, newest last
        self.bans = BanList(self.failover)  # shared by every session of this client
        self.timer = StepTimer(self.failover)
        self.distrusted: set[str] = set()  # nodes an audit caught lying: never used again by this client
        # Nodes reuse first-prompt prefixes among sessions with the same salt (spec §4.9): by default among
        # this client's own sessions (and its copies'). A gateway passes one salt per user to stream().
        self.prefix_salt = secrets.token_hex(16)
        self._discovered_at = time.monotonic()
        self.head = load_client_head(checkpoint, self.dtype)
        # "auto": logits on ONNX Runtime while every node of the route runs ONNX Runtime (their results
        # are within ONNX's tolerance anyway), on PyTorch otherwise, bit-identical to transformers.
        if self.head_backend != "torch" and not self.head.enable_onnx() and self.head_backend == "onnxruntime":
            raise ValueError("head_backend='onnxruntime' needs onnxruntime and a CPU float32 client")
        self.tokenizer = checkpoint.tokenizer()
        self.generation_config = generation_config_of(checkpoint)
        self.last_stats = GenerationStats()
        self.active_session: InferenceSession | None = None

    def __getattr__(self, name: str):
        # The options stay readable as attributes (model.timeout, model.push, model.audit, ...), as
        # before they moved into one ClientConfig; only reached for names not set on the instance.
        if name in _OPTION_NAMES and "client_config" in self.__dict__:
            return getattr(self.client_config, name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    # -- the swarm --------------------------------------------------------------------------

    def chain(self) -> list[PeerInfo]:
        """The spans a new session will use.

        Raises:
            SwarmNotCovering: the known peers do not cover every block.
        """
        return find_chain(
            self.peers,
            self.checkpoint.num_blocks,
            self.name,
            exclude=self.bans.banned() | self.distrusted,
            rtts=self.rtts.snapshot(),
            policy=self.routing,
        )

    def discover(self) -> list[PeerInfo]:
        """Ask the tracker (if any) and every known node again what they serve; refresh RTTs.

        Returns:
            The nodes that answered (also stored as ``self.peers``).
        """
        # A tracker that is down is no reason to stop: the nodes we know may still answer.
        timeout = min(self.timeout, 5.0)
        infos, _ = probe_swarm(
            self.urls, self.portal, self.name, self.rtts, timeout, tracker_optional=True, **self._dht_options()
        )
        infos = keep_matching(infos, self.client_config.manifest, {})
        if infos:
            self.peers = infos
        self._discovered_at = time.monotonic()
        return self.peers

    def set_peers(self, urls: list[str]) -> list[PeerInfo]:
        """Use exactly the nodes at ``urls`` from now on (e.g. a tracker's current list).

        Asks them (and the portal's tracker, if any) what they serve, then forgets every node not
        among ``urls``: nodes that left are not used any more, even if none of ``urls`` answers.

        Returns:
            The nodes now known (also ``self.peers``); ``self.urls`` becomes ``urls``.
        """
        self.urls = list(urls)
        self.discover()
        self.peers = [p for p in self.peers if p.url in self.urls]
        return self.peers

    def refresh(self, max_age_s: float = 30.0) -> None:
        """Ask the tracker again when the peer list is older than ``max_age_s`` (nodes dropped for low
        reputation disappear from it)."""
        if (self.portal or self.client_config.dht) and time.monotonic() - self._discovered_at > max_age_s:
            self.discover()

    def _dht_options(self) -> dict:
        return {"dht": self.client_config.dht, "num_blocks": self.checkpoint.num_blocks}

    # -- sessions ---------------------------------------------------------------------------

    def open_session(
        self, max_length: int, chain: list[PeerInfo] | None = None, prefix_salt: str | None = None
    ) -> InferenceSession:
        """An inference session over the current best chain, with failover onto every known node.

        ``prefix_salt``: shares prompt prefixes on the nodes with sessions of the same salt (default:
        this client's :attr:`prefix_salt`; ``""``: none).
        """
        return InferenceSession(
            chain or self.chain(),
            max_length,
            config=dataclasses.replace(self.client_config, on_receipt=self._receipt),
            peers=self.peers,
            num_blocks=self.checkpoint.num_blocks,
            model=self.name,
            discover=self.discover,
            bans=self.bans,
            timer=self.timer,
            rtts=self.rtts.snapshot(),
            distrusted=self.distrusted,
            on_evidence=self.reporter.evidence if self.reporter else None,
            on_close=self._report_steps if self.reporter else None,
            prefix_salt=self.prefix_salt if prefix_salt is None else prefix_salt,
        )

    def _report_steps(self, session: InferenceSession) -> None:
        """Tell the portal how each tracked node served this session (step success, measured speed)."""
        assert self.reporter is not None
        by_url = {p.url: p for p in self.peers}
        for url, (ok, failed, timed, seconds) in session.node_stats.items():
            peer = by_url.get(url)
            if peer is not None and peer.node_id:
                self.reporter.steps(peer, int(ok), int(failed), timed / seconds if timed and seconds > 0 else None)

    def _receipt(self, signed: SignedReceipt) -> None:
        self.receipts.append(signed)
        if self.on_receipt is not None:
            self.on_receipt(signed)

    def _fast_head(self, session: InferenceSession) -> bool:
        """Whether this step's logits may run on ONNX Runtime (see ``head_backend``)."""
        if self.head_backend != "auto":
            return self.head_backend == "onnxruntime"
        return all(h.peer.backend == "onnxruntime" for h in session.hops)

    # -- generation -----------------------------------------------------------------------

    def stream(
        self,
        input_ids: torch.Tensor | None,
        attention_mask: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        session: InferenceSession | None = None,
        **kwargs,
    ) -> Iterator[torch.Tensor]:
        """Yield the next token of every sequence, step by step (a ``(B,)`` tensor each time).

        Stops at ``max_new_tokens``, when every sequence has produced an EOS token, or when a stop
        string appears in the generated text. Closing the iterator closes the swarm sessions.
        ``session`` (default: the one of an enclosing :meth:`inference_session` block) is continued and
        left open: ``input_ids`` (or ``None``) come after the tokens of its earlier calls, and only the
        tokens its nodes do not hold yet are sent.
        ``on_logits(k, logits, token)``, if given, sees each step's raw LM-head logits ``(B, V)`` (before any
        sampling processor) and the ``(B,)`` tokens chosen from them, for new token ``k`` (0-based; a
        verified-mode rollback calls it again for the same ``k``), e.g. to report log-probabilities.

        Raises:
            ValueError: bad settings, padded batches, or a request longer than the nodes allow.
            SwarmNotCovering: no chain of nodes covers the model.
            RemoteError: a node failed.
        """
        session = session or self.current_session
        input_ids = continued_ids(session, input_ids, kwargs)  # (B, T): earlier calls' tokens first
        if attention_mask is not None and not bool(attention_mask.all()):
            raise ValueError("padded batches are not supported yet: give sequences of equal length")
        prefix_salt = kwargs.pop("prefix_salt", None)
        on_logits = kwargs.pop("on_logits", None)
        params = sampling_params(self.generation_config, kwargs)
        procs = build_processors(params)
        chain = self.chain() if session is None else session.chain
        max_length = input_ids.shape[1] + params.max_new_tokens
        limit = min(p.max_session_length for p in chain) if session is None else session.max_length + 1
        if max_length > limit:  # a session never runs its last token, so it holds one token less
            raise ValueError(f"prompt + max_new_tokens = {max_length} tokens exceeds the swarm's limit of {limit}")
        eos = torch.tensor(params.eos_token_id or [], dtype=torch.long)
        finished = torch.zeros(input_ids.shape[0], dtype=torch.bool)
        ids = input_ids
        start = time.perf_counter()
        stats = self.last_stats = GenerationStats(prompt_tokens=input_ids.shape[1])
        prompt_text = self.tokenizer.batch_decode(input_ids) if params.stop_strings else [""] * ids.shape[0]
        # This generation's place among concurrent ones (their logits are batched): registered before its
        # prompt, so that generations started together compute their first logits together.
        own = session is None
        with (
            self.head.participant() as member,
            self.open_session(max_length, chain, prefix_salt) if own else contextlib.nullcontext(session) as session,
        ):
            stats.failovers = session.failovers
            stats.audits = session.audit_stats
            self.active_session = session  # for callers that watch the route (benchmarks, fault tests)
            verified = self.audit.mode == "verified" and self.audit.enabled
            prompt_len = input_ids.shape[1]
            released = 0  # generated tokens already yielded
            step_input = input_ids if own else input_ids[:, session.position :]
            while True:
                session.output_ids = ids
                done = ids.shape[1] - prompt_len >= params.max_new_tokens or bool(finished.all())
                done = done or (params.stop_strings and hit_stop(self.tokenizer, ids, prompt_text, params.stop_strings))
                try:
                    if done:
                        if verified and session.verified_position < session.position:
                            session.audit_now()  # release nothing unverified at the end either
                        break
                    # From the session's position: where the input side embeds positions (GPT-2, OPT) they matter.
                    hidden = session.step(self.head.embed_tokens(step_input, session.position))  # (B, T, H)
                    if step_input is input_ids:
                        stats.cached_prompt_tokens = min(session.cached_tokens.values(), default=0)
                except AuditRollback as rollback:  # verified mode: recompute from the verified position
                    ids, step_input = rolled_back(ids, prompt_len, rollback.position)
                    finished = finished_rows(ids[:, prompt_len:], eos, ids.shape[0])
                    continue
                logits = self.head.logits(hidden[:, -1:, :], fast=self._fast_head(session), member=member)
                token = select_next(logits[:, -1, :], ids, params, procs, generator)  # (B, V) -> (B,)
                if params.pad_token_id is not None and eos.numel():
                    token = torch.where(finished, torch.tensor(params.pad_token_id), token)
                ids = torch.cat([ids, token[:, None]], dim=1)
                if on_logits is not None:
                    on_logits(ids.shape[1] - prompt_len - 1, logits[:, -1, :], token)
                if eos.numel():
                    finished |= torch.isin(token, eos)
                step_input = token[:, None]
                # The token at index prompt_len + k came from the step that ended at cache length prompt_len + k.
                ready = ids.shape[1] - prompt_len
                if verified:
                    ready = min(ready, session.verified_position - prompt_len + 1)
                for k in range(released, ready):
                    stats.released(k, start)
                    yield ids[:, prompt_len + k]
                released = max(released, ready)
            for k in range(released, ids.shape[1] - prompt_len):  # verified by the final audit
                stats.released(k, start)
                yield ids[:, prompt_len + k]


class AutoDistributedModelForCausalLM:
    """Entry point mirroring ``transformers.AutoModelForCausalLM``."""

    @staticmethod
    def from_pretrained(
        model: str,
        peers: list[str] | None = None,
        *,
        initial_peers: list[str] | None = None,
        config: ClientConfig | None = None,
        **options,
    ) -> DistributedModelForCausalLM:
        """Load the client parts of ``model`` and learn what each peer serves.

        Args:
            model: a known name (``smollm2``), a checkpoint directory or a ``.gguf`` path.
            peers: node URLs (``ws://host:port/layerswarm/v1``).
            initial_peers: as in Petals: node URLs and/or one portal URL (``http://host:8000``), added to
                ``peers``. With neither these nor ``portal``, ``$LAYERSWARM_INITIAL_PEERS`` (the same, comma-
                separated), so Petals' ``from_pretrained(model_name)`` runs unchanged.
            config: the client's options (:class:`ClientConfig`: dtype, timeout, portal, routing,
                failover, push, identity, on_receipt, secure, audit, reporter, head_backend).
            **options: :class:`ClientConfig` fields replacing those of ``config``, e.g.
                ``portal="http://host:8000"`` (a tracker listing the nodes serving ``model``) or
                ``audit=AuditPolicy(rate=0.05)``, or ``dht=["/ip4/H/tcp/P/p2p/..."]`` (DHT bootstrap peers, merged
                with the portal's and the given peers; docs/dht.md).

        Raises:
            TypeError: an option that is no :class:`ClientConfig` field.
            ValueError: neither peers nor portal given; ``model`` is encoder-only (use
                :class:`~swarmnode.client.AutoDistributedModel`); ``TrackerError`` (a ``ValueError``) if the portal
                fails.
            SwarmNotCovering: the peers that answered do not cover every block.
        """
        peers, config = config_and_peers(config, options, peers, initial_peers)
        if not peers and not config.portal and not config.dht:
            raise ValueError(
                "give peers=[...] (node URLs), portal=URL (a tracker) or dht=[multiaddr, ...] (DHT bootstrap peers),"
                " or set $LAYERSWARM_INITIAL_PEERS"
            )
        checkpoint = Checkpoint(resolve_model(model))
        from swarmnode.models.encoder import is_encoder_only

        if is_encoder_only(checkpoint.config):
            raise ValueError(
                f"{model!r} is an encoder-only model (embeddings, no next-token head): use"
                " swarmnode.client.AutoDistributedModel.from_pretrained(...).embed(texts)"
            )
        name = model_name(model)
        rtts = RttTable()
        timeout = min(config.timeout, 10.0)
        infos, errors = probe_swarm(
            peers or [],
            config.portal,
            name,
            rtts,
            timeout,
            tracker_optional=False,
            dht=config.dht,
            num_blocks=checkpoint.num_blocks,
        )
        infos = keep_matching(infos, config.manifest, errors)  # nodes whose blocks differ from the trusted manifest
        distributed = DistributedModelForCausalLM(
            name, checkpoint, infos, urls=list(peers or []), rtts=rtts, config=config
        )
        return chain_or_explain(distributed, name, checkpoint.num_blocks, errors)
