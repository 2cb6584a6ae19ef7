"""``AutoDistributedModelForCausalLM``: a causal LM whose blocks run on a swarm.

The client keeps the embeddings, the final norm and the LM head; every generation opens one
session per span and sends only the new token's hidden state per step.
"""

from __future__ import annotations

import dataclasses
import secrets
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, fields

import torch

from swarmnode.client.audit import AuditPolicy, EvidenceReporter
from swarmnode.client.failover import BanList, FailoverPolicy, StepTimer
from swarmnode.client.generation import SamplingParams, build_processors, select_next
from swarmnode.client.head import load_client_head
from swarmnode.client.latency import RttTable, ping_all
from swarmnode.client.remote import PeerInfo, RemoteSpan
from swarmnode.client.routing import RoutingPolicy, SwarmNotCovering, find_chain
from swarmnode.client.session import AuditRollback, AuditStats, FailoverEvent, InferenceSession
from swarmnode.discovery import fetch_spans
from swarmnode.models import Checkpoint, resolve_model
from swarmnode.models.registry import model_name
from swarmnode.models.wire import tensor_to_wire, wire_to_tensor
from swarmnode.protocol import Forward, ForwardResult
from swarmnode.trust.identity import NodeIdentity
from swarmnode.trust.receipts import SignedReceipt


@dataclass
class GenerationStats:
    """Timings of the last generation."""

    prompt_tokens: int = 0
    new_tokens: int = 0
    ttft_s: float = 0.0  # prompt sent -> first new token chosen
    total_s: float = 0.0
    failovers: list[FailoverEvent] = field(default_factory=list)  # nodes replaced mid-generation
    audits: AuditStats = field(default_factory=AuditStats)  # what auditing did (when enabled)
    cached_prompt_tokens: int = 0  # prompt positions every node took from an earlier prompt (spec §4.9)

    @property
    def tokens_per_s(self) -> float:
        """Decoding speed after the first token."""
        decode_s = self.total_s - self.ttft_s
        return (self.new_tokens - 1) / decode_s if self.new_tokens > 1 and decode_s > 0 else 0.0


class DistributedModelForCausalLM:
    """Client side of a model served by a swarm. Build it with :class:`AutoDistributedModelForCausalLM`."""

    def __init__(
        self,
        name: str,
        checkpoint: Checkpoint,
        peers: list[PeerInfo],
        dtype: torch.dtype,
        timeout: float,
        *,
        urls: list[str] | None = None,
        portal: str | None = None,
        rtts: RttTable | None = None,
        routing: RoutingPolicy | None = None,
        failover: FailoverPolicy | None = None,
        push: bool = False,
        identity: NodeIdentity | None = None,
        on_receipt: Callable[[SignedReceipt], None] | None = None,
        secure: bool | None = None,
        audit: AuditPolicy | None = None,
        reporter: EvidenceReporter | None = None,
        head_backend: str = "auto",
    ):
        if head_backend not in ("auto", "torch", "onnxruntime"):
            raise ValueError(f"head_backend must be auto, torch or onnxruntime, not {head_backend!r}")
        self.name = name
        self.checkpoint = checkpoint
        self.config = checkpoint.config
        self.peers = peers
        self.dtype = dtype
        self.timeout = timeout
        self.urls = list(urls or [p.url for p in peers])  # static peers, probed again when rediscovering
        self.portal = portal
        self.rtts = rtts or RttTable()
        self.routing = routing or RoutingPolicy(rtt_weight=0.5 if push else 1.0)
        self.failover = failover or FailoverPolicy(first_step_timeout_s=timeout)
        self.push = push
        self.identity = identity  # signs usage receipts (spec §8); None: sessions close without one
        self.receipts: deque[SignedReceipt] = deque(maxlen=10_000)  # countersigned receipts, newest last
        self._on_receipt = on_receipt
        self.secure = secure  # end-to-end encryption (spec §10); None: to relayed nodes only
        self.bans = BanList(self.failover)  # shared by every session of this client
        self.timer = StepTimer(self.failover)
        self.audit = audit or AuditPolicy()
        self.reporter = reporter  # sends audit evidence to the portal
        self.distrusted: set[str] = set()  # nodes an audit caught lying: never used again by this client
        # Nodes reuse first-prompt prefixes among sessions with the same salt (spec §4.9): by default among
        # this client's own sessions (and its copies'). A gateway passes one salt per user to stream().
        self.prefix_salt = secrets.token_hex(16)
        self._discovered_at = time.monotonic()
        self.head = load_client_head(checkpoint, dtype)
        # "auto": logits on ONNX Runtime while every node of the route runs ONNX Runtime (their results
        # are within ONNX's tolerance anyway), on PyTorch otherwise, bit-identical to transformers.
        self.head_backend = head_backend
        if head_backend != "torch" and not self.head.enable_onnx() and head_backend == "onnxruntime":
            raise ValueError("head_backend='onnxruntime' needs onnxruntime and a CPU float32 client")
        self.tokenizer = checkpoint.tokenizer()
        from transformers import GenerationConfig

        try:
            self.generation_config = GenerationConfig.from_pretrained(checkpoint.path)
        except OSError:
            self.generation_config = GenerationConfig.from_model_config(self.config)
        self.last_stats = GenerationStats()
        self.active_session: InferenceSession | None = None

    def _fast_head(self, session: InferenceSession) -> bool:
        """Whether this step's logits may run on ONNX Runtime (see ``head_backend``)."""
        if self.head_backend != "auto":
            return self.head_backend == "onnxruntime"
        return all(h.peer.backend == "onnxruntime" for h in session.hops)

    # -- routing ----------------------------------------------------------------------------

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
        urls = list(self.urls)
        tracked: list[PeerInfo] = []
        if self.portal:
            try:
                tracked = fetch_spans(self.portal, self.name)
                urls += [p.url for p in tracked if p.url not in urls]
            except ValueError:
                pass  # the tracker is down: the nodes we know may still answer
        infos, _ = ping_all(urls, self.rtts, timeout=min(self.timeout, 5.0))
        if infos:
            self.peers = self._with_tracker_info(infos, tracked)
        self._discovered_at = time.monotonic()
        return self.peers

    @staticmethod
    def _with_tracker_info(infos: list[PeerInfo], tracked: list[PeerInfo]) -> list[PeerInfo]:
        """Nodes as they answered, with the tracker's node id and reputation where the tracker lists them."""
        by_url = {p.url: p for p in tracked}
        out = []
        for info in infos:
            t = by_url.get(info.url)
            out.append(dataclasses.replace(info, node_id=t.node_id, reputation=t.reputation) if t else info)
        return out

    def refresh(self, max_age_s: float = 30.0) -> None:
        """Ask the tracker again when the peer list is older than ``max_age_s`` (nodes dropped for low
        reputation disappear from it)."""
        if self.portal and time.monotonic() - self._discovered_at > max_age_s:
            self.discover()

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
            tensor_to_wire_dtype(self.dtype),
            self.timeout,
            peers=self.peers,
            num_blocks=self.checkpoint.num_blocks,
            model=self.name,
            discover=self.discover,
            bans=self.bans,
            timer=self.timer,
            rtts=self.rtts.snapshot(),
            routing=self.routing,
            failover=self.failover,
            push=self.push,
            identity=self.identity,
            on_receipt=self._receipt,
            secure=self.secure,
            audit=self.audit,
            on_evidence=self.reporter.evidence if self.reporter else None,
            distrusted=self.distrusted,
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
        if self._on_receipt is not None:
            self._on_receipt(signed)

    # -- generation -----------------------------------------------------------------------

    def _params(self, kwargs: dict) -> SamplingParams:
        gc = self.generation_config
        params = SamplingParams(
            max_new_tokens=gc.max_new_tokens or 20,
            do_sample=bool(gc.do_sample),
            temperature=gc.temperature if gc.temperature is not None else 1.0,
            top_k=gc.top_k if gc.top_k is not None else 50,
            top_p=gc.top_p if gc.top_p is not None else 1.0,
            min_p=gc.min_p,
            repetition_penalty=gc.repetition_penalty if gc.repetition_penalty is not None else 1.0,
            eos_token_id=gc.eos_token_id,
            pad_token_id=gc.pad_token_id,
        )
        names = {f.name for f in fields(SamplingParams)}
        for key, value in kwargs.items():
            if key not in names:
                raise TypeError(f"generate() got an unexpected keyword argument {key!r}")
            if value is not None or key in ("eos_token_id", "stop_strings", "top_k"):
                setattr(params, key, value)
        if isinstance(params.eos_token_id, int):
            params.eos_token_id = [params.eos_token_id]
        if isinstance(params.stop_strings, str):
            params.stop_strings = [params.stop_strings]
        params.validate()
        return params

    def stream(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        **kwargs,
    ) -> Iterator[torch.Tensor]:
        """Yield the next token of every sequence, step by step (a ``(B,)`` tensor each time).

        Stops at ``max_new_tokens``, when every sequence has produced an EOS token, or when a stop
        string appears in the generated text. Closing the iterator closes the swarm sessions.

        Raises:
            ValueError: bad settings, padded batches, or a request longer than the nodes allow.
            SwarmNotCovering: no chain of nodes covers the model.
            RemoteError: a node failed.
        """
        if input_ids.dim() == 1:
            input_ids = input_ids.unsqueeze(0)
        if attention_mask is not None and not bool(attention_mask.all()):
            raise ValueError("padded batches are not supported yet: give sequences of equal length")
        prefix_salt = kwargs.pop("prefix_salt", None)
        params = self._params(kwargs)
        procs = build_processors(params)
        chain = self.chain()
        max_length = input_ids.shape[1] + params.max_new_tokens
        limit = min(p.max_session_length for p in chain)
        if max_length > limit:
            raise ValueError(f"prompt + max_new_tokens = {max_length} tokens exceeds the swarm's limit of {limit}")
        eos = torch.tensor(params.eos_token_id or [], dtype=torch.long)
        finished = torch.zeros(input_ids.shape[0], dtype=torch.bool)
        ids = input_ids
        start = time.perf_counter()
        self.last_stats = GenerationStats(prompt_tokens=input_ids.shape[1])
        prompt_text = [""] * ids.shape[0]
        if params.stop_strings:
            prompt_text = self.tokenizer.batch_decode(input_ids)
        # This generation's place among concurrent ones (their logits are batched): registered before its
        # prompt, so that generations started together compute their first logits together.
        with self.head.participant() as member, self.open_session(max_length, chain, prefix_salt) as session:
            self.last_stats.failovers = session.failovers
            self.last_stats.audits = session.audit_stats
            self.active_session = session  # for callers that watch the route (benchmarks, fault tests)
            verified = self.audit.mode == "verified" and self.audit.enabled
            prompt_len = input_ids.shape[1]
            released = 0  # generated tokens already yielded
            step_input = input_ids
            while True:
                done = ids.shape[1] - prompt_len >= params.max_new_tokens or bool(finished.all())
                done = done or (params.stop_strings and self._hit_stop(ids, prompt_text, params.stop_strings))
                try:
                    if done:
                        if verified and session.verified_position < session.position:
                            session.audit_now()  # release nothing unverified at the end either
                        break
                    hidden = session.step(self.head.embed_tokens(step_input))  # (B, T, H)
                    if step_input is input_ids:
                        self.last_stats.cached_prompt_tokens = min(session.cached_tokens.values(), default=0)
                except AuditRollback as rollback:  # verified mode: recompute from the verified position
                    ids, step_input = self._rolled_back(ids, prompt_len, rollback.position)
                    finished = self._finished(ids[:, prompt_len:], eos, ids.shape[0])
                    continue
                logits = self.head.logits(hidden[:, -1:, :], fast=self._fast_head(session), member=member)
                logits = logits[:, -1, :]  # (B, V)
                token = select_next(logits, ids, params, procs, generator)
                if params.pad_token_id is not None and eos.numel():
                    token = torch.where(finished, torch.tensor(params.pad_token_id), token)
                ids = torch.cat([ids, token[:, None]], dim=1)
                if eos.numel():
                    finished |= torch.isin(token, eos)
                step_input = token[:, None]
                # The token at index prompt_len + k came from the step that ended at cache length prompt_len + k.
                ready = ids.shape[1] - prompt_len
                if verified:
                    ready = min(ready, session.verified_position - prompt_len + 1)
                for k in range(released, ready):
                    if k == 0:
                        self.last_stats.ttft_s = time.perf_counter() - start
                    self.last_stats.new_tokens = k + 1
                    self.last_stats.total_s = time.perf_counter() - start
                    yield ids[:, prompt_len + k]
                released = max(released, ready)
            for k in range(released, ids.shape[1] - prompt_len):  # verified by the final audit
                if k == 0:
                    self.last_stats.ttft_s = time.perf_counter() - start
                self.last_stats.new_tokens = k + 1
                self.last_stats.total_s = time.perf_counter() - start
                yield ids[:, prompt_len + k]

    @staticmethod
    def _rolled_back(ids: torch.Tensor, prompt_len: int, position: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokens kept after a rollback to cache ``position``, and the input to feed from there."""
        keep = max(prompt_len, position + 1)
        ids = ids[:, :keep]
        return ids, ids[:, position:]

    @staticmethod
    def _finished(generated: torch.Tensor, eos: torch.Tensor, batch: int) -> torch.Tensor:
        if not eos.numel() or generated.shape[1] == 0:
            return torch.zeros(batch, dtype=torch.bool)
        return torch.isin(generated, eos).any(dim=1)

    def _hit_stop(self, ids: torch.Tensor, prompt_text: list[str], stops: list[str]) -> bool:
        texts = self.tokenizer.batch_decode(ids)
        return all(any(s in t[len(p) :] for s in stops) for t, p in zip(texts, prompt_text, strict=True))

    @torch.inference_mode()
    def generate(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        streamer=None,
        generator: torch.Generator | None = None,
        **kwargs,
    ) -> torch.Tensor:
        """Generate like ``transformers``' ``generate``: returns prompt + new tokens, ``(B, T + N)``.

        Args:
            input_ids: ``(B, T)`` prompt token ids.
            attention_mask: accepted for compatibility; must be all ones.
            streamer: a ``transformers`` streamer (``put``/``end``), e.g. ``TextStreamer``.
            generator: torch RNG for sampling.
            **kwargs: ``max_new_tokens``, ``do_sample``, ``temperature``, ``top_k``, ``top_p``, ``min_p``,
                ``repetition_penalty``, ``eos_token_id``, ``pad_token_id``, ``stop_strings``.
        """
        if input_ids.dim() == 1:
            input_ids = input_ids.unsqueeze(0)
        if streamer is not None:
            streamer.put(input_ids.cpu())
        out = [input_ids]
        for token in self.stream(input_ids, attention_mask, generator=generator, **kwargs):
            out.append(token[:, None])
            if streamer is not None:
                streamer.put(token.cpu())
        if streamer is not None:
            streamer.end()
        return torch.cat(out, dim=1)

    @torch.inference_mode()
    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:  # (B, T) -> (B, T, V)
        """Logits for every position, through the swarm without any cache (scoring)."""
        if input_ids.dim() == 1:
            input_ids = input_ids.unsqueeze(0)
        wire = tensor_to_wire(self.head.embed_tokens(input_ids), tensor_to_wire_dtype(self.dtype))
        for peer in self.chain():
            span = RemoteSpan(peer.url, timeout=self.timeout)
            try:
                reply = span.request(Forward(hidden=wire))
            finally:
                span.close()
            assert isinstance(reply, ForwardResult) and reply.hidden is not None
            wire = reply.hidden
        return self.head.logits(wire_to_tensor(wire, self.dtype))

    __call__ = forward


def tensor_to_wire_dtype(dtype: torch.dtype) -> str:
    """Wire name of a torch dtype."""
    return {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}[dtype]


class AutoDistributedModelForCausalLM:
    """Entry point mirroring ``transformers.AutoModelForCausalLM``."""

    @staticmethod
    def from_pretrained(
        model: str,
        peers: list[str] | None = None,
        dtype: torch.dtype = torch.float32,
        timeout: float = 60.0,
        portal: str | None = None,
        routing: RoutingPolicy | None = None,
        failover: FailoverPolicy | None = None,
        push: bool = False,
        identity: NodeIdentity | None = None,
        on_receipt: Callable[[SignedReceipt], None] | None = None,
        secure: bool | None = None,
        audit: AuditPolicy | None = None,
        reporter: EvidenceReporter | None = None,
        head_backend: str = "auto",
    ) -> DistributedModelForCausalLM:
        """Load the client parts of ``model`` and learn what each peer serves.

        Args:
            model: a known name (``smollm2``), a checkpoint directory or a ``.gguf`` path.
            peers: node URLs (``ws://host:port/layerswarm/v1``).
            dtype: client-side compute dtype and activation dtype on the wire.
            timeout: seconds to wait for any node reply.
            portal: a portal URL (``http://host:8000``) whose tracker lists the nodes serving ``model``.
            routing: how chains are priced (latency or throughput mode, penalties).
            failover: retry budget, bans, adaptive timeouts and replay mode.
            identity: the client's key pair (``swarmnode.trust.identity.NodeIdentity``): sessions then close
                with signed usage receipts, countersigned by the nodes, kept in ``.receipts`` (spec §8).
            on_receipt: called with each countersigned receipt (e.g. to submit it to the portal).
            secure: end-to-end encrypt activations to every node (spec §10); ``None`` (default): only
                to nodes reached through a relay, where it is always on.
            push: server-to-server push (each step goes to the first node; nodes forward it). Off while auditing.
            audit: how to check the nodes: signatures and cheap checks on every step, replays elsewhere at
                ``audit.rate``; ``mode="verified"`` releases only audited tokens (``swarmnode/client/audit.py``).
            reporter: sends audit evidence to the portal (an :class:`EvidenceReporter`).
            head_backend: where the final norm and LM head run: ``torch`` (bit-identical to
                ``transformers``), ``onnxruntime`` (about 3x faster on CPU), or ``auto`` (ONNX Runtime
                while every node of the route runs ONNX Runtime, PyTorch otherwise).

        Raises:
            ValueError: neither peers nor portal given; ``TrackerError`` (a ``ValueError``) if the portal fails.
            SwarmNotCovering: the peers that answered do not cover every block.
        """
        if not peers and not portal:
            raise ValueError("give peers=[...] (node URLs) or portal=URL (a tracker)")
        checkpoint = Checkpoint(resolve_model(model))
        name = model_name(model)
        urls = list(peers or [])
        if portal:  # the tracker says who serves what; probing below confirms each node is alive
            tracked = fetch_spans(portal, name)
            urls += [p.url for p in tracked if p.url not in urls]
        rtts = RttTable()
        infos, errors = ping_all(urls, rtts, timeout=min(timeout, 10.0))
        if portal:
            infos = DistributedModelForCausalLM._with_tracker_info(infos, tracked)
        distributed = DistributedModelForCausalLM(
            name,
            checkpoint,
            infos,
            dtype,
            timeout,
            urls=list(peers or []),
            portal=portal,
            rtts=rtts,
            routing=routing,
            failover=failover,
            push=push,
            identity=identity,
            on_receipt=on_receipt,
            secure=secure,
            audit=audit,
            reporter=reporter,
            head_backend=head_backend,
        )
        try:
            distributed.chain()
        except SwarmNotCovering as exc:
            detail = "; ".join(f"{u}: {e}" for u, e in errors.items())
            raise SwarmNotCovering(name, checkpoint.num_blocks, exc.uncovered) from (
                RuntimeError(detail) if detail else None
            )
        return distributed
