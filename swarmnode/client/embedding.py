"""Sentence embeddings from an encoder-only model whose blocks run on a swarm (all-MiniLM-L6-v2, BERT...).

The client keeps the tokenizer, the input side (token, position and token-type embeddings, the embedding
norm) and the pooling; the nodes run the encoder blocks through their cache-less ``forward`` (spec §4.4):
one request per hop for a whole padded batch, each row's real length sent along so that padding never
reaches any real token's attention. Every sentence's embedding is therefore the one it gets alone.

    model = AutoDistributedModel.from_pretrained("minilm", peers=[...])
    vectors = model.embed(["first sentence", "second one"])  # (2, 384), mean-pooled, L2-normalised
"""

from __future__ import annotations

import torch

from swarmnode.client.config import ClientConfig
from swarmnode.client.failover import BanList, FailoverPolicy
from swarmnode.client.latency import RttTable
from swarmnode.client.parts import chain_or_explain, config_and_peers
from swarmnode.client.probing import probe_swarm
from swarmnode.client.remote import POOL, RemoteError, RemoteSpan
from swarmnode.client.routing import SwarmNotCovering, find_chain
from swarmnode.discovery import PeerInfo
from swarmnode.models import Checkpoint, resolve_model
from swarmnode.models.encoder import load_encoder_head
from swarmnode.models.registry import model_name
from swarmnode.models.wire import tensor_to_wire, wire_to_tensor
from swarmnode.protocol import Forward, ForwardResult, all_finite
from swarmnode.trust.attestation import signed_result

__all__ = ["AutoDistributedModel", "DistributedEncoderModel", "InputTooLong"]

#: Node error codes that say the request itself is wrong (retrying elsewhere gives the same answer).
_CLIENT_FAULTS = frozenset({"bad_field", "bad_shape", "too_many_tokens", "batch_too_large", "wrong_hidden_size"})
MAX_REROUTES = 3  # a pass is routed again at most this often after nodes failed (each failed node banned)


class InputTooLong(ValueError):
    """A text has more tokens than the model takes (``index``: which one, ``tokens``: how many)."""

    def __init__(self, index: int, tokens: int, limit: int) -> None:
        super().__init__(f"input {index} has {tokens} tokens; this model takes at most {limit}")
        self.index, self.tokens, self.limit = index, tokens, limit


class DistributedEncoderModel:
    """Client side of an encoder served by a swarm. Build it with :class:`AutoDistributedModel`.

    Args:
        name: the model's name (nodes of other models are skipped).
        checkpoint: the local checkpoint (input side, pooling settings, tokenizer).
        peers: the nodes known so far, as they answered.
        urls: static node URLs, probed again when rediscovering (default: the peers').
        rtts: measured round-trip times.
        config: the client's options (``dtype``, ``timeout``, ``portal``, ``routing``, ``failover``, ``secure``).
    """

    def __init__(
        self,
        name: str,
        checkpoint: Checkpoint,
        peers: list[PeerInfo],
        *,
        urls: list[str] | None = None,
        rtts: RttTable | None = None,
        config: ClientConfig | None = None,
    ) -> None:
        self.client_config = config or ClientConfig()
        self.name = name
        self.checkpoint = checkpoint
        self.config = checkpoint.config  # the transformers model config
        self.peers = peers
        self.urls = list(urls or [p.url for p in peers])
        self.rtts = rtts or RttTable()
        self.bans = BanList(self.client_config.failover or FailoverPolicy())
        self.head = load_encoder_head(checkpoint, self.client_config.dtype)
        self.tokenizer = checkpoint.tokenizer()
        self.failovers = 0  # hops retried on another node since this client was made

    @property
    def dimensions(self) -> int:
        """Length of one embedding."""
        return self.head.hidden_size

    @property
    def max_tokens(self) -> int:
        """Most tokens of one input (special tokens included)."""
        return self.head.pooling.max_tokens

    def chain(self) -> list[PeerInfo]:
        """The spans the next request will use.

        Raises:
            SwarmNotCovering: the known peers do not cover every block.
        """
        policy = self.client_config.routing
        return find_chain(
            self.peers, self.checkpoint.num_blocks, self.name, self.bans.banned(), self.rtts.snapshot(), policy
        )

    def discover(self) -> list[PeerInfo]:
        """Ask the tracker (if any) and every known node again what they serve."""
        timeout = min(self.client_config.timeout, 5.0)
        portal = self.client_config.portal
        infos, _ = probe_swarm(self.urls, portal, self.name, self.rtts, timeout, tracker_optional=True)
        if infos:
            self.peers = infos
        return self.peers

    def set_peers(self, urls: list[str]) -> list[PeerInfo]:
        """Use exactly the nodes at ``urls`` from now on (asking them what they serve)."""
        self.urls = list(urls)
        self.discover()
        self.peers = [p for p in self.peers if p.url in self.urls]
        return self.peers

    def count_tokens(self, texts: list[str]) -> list[int]:
        """Tokens of each text as the model sees it (special tokens included, nothing truncated)."""
        return [len(ids) for ids in self.tokenizer(list(texts), add_special_tokens=True)["input_ids"]]

    @torch.inference_mode()
    def embed(self, texts: str | list[str], batch_size: int = 32) -> torch.Tensor:  # -> (N, H)
        """One embedding per text: mean-pooled (or as the checkpoint's pooling says) and L2-normalised.

        Texts are sent in padded batches of ``batch_size`` rows, longest-first groups of similar length;
        each row's result equals the text's embedding alone.

        Raises:
            InputTooLong: a text has more than :attr:`max_tokens` tokens.
            SwarmNotCovering: no chain of nodes covers the model.
            RemoteError: the nodes failed (after failing over to others where there are any).
        """
        texts = [texts] if isinstance(texts, str) else list(texts)
        if not texts:
            return torch.empty(0, self.dimensions)
        limit = min([self.max_tokens, *(p.max_session_length for p in self.chain() if p.max_session_length)])
        counts = self.count_tokens(texts)
        for i, n in enumerate(counts):
            if n > limit:
                raise InputTooLong(i, n, limit)
        order = sorted(range(len(texts)), key=lambda i: -counts[i])
        out = torch.empty(len(texts), self.dimensions, dtype=self.client_config.dtype)
        for first in range(0, len(order), max(1, batch_size)):
            rows = order[first : first + batch_size]
            batch = self.tokenizer([texts[i] for i in rows], padding=True, return_tensors="pt")
            hidden = self.head.embed(batch["input_ids"], batch["attention_mask"])  # (B, T, H)
            lengths = tuple(int(n) for n in batch["attention_mask"].sum(dim=1))
            hidden = self.run_blocks(hidden, lengths)
            out[rows] = self.head.pool(hidden, batch["attention_mask"]).to(out.dtype)
        return out

    encode = embed  # sentence-transformers' name

    def run_blocks(self, hidden: torch.Tensor, lengths: tuple[int, ...] = ()) -> torch.Tensor:  # (B, T, H)
        """Hidden states after every block (``lengths``: each row's real positions; the rest is padding).

        A node that fails or answers nonsense is banned for a while and the whole pass is routed again.
        """
        wire = tensor_to_wire(hidden, self.client_config.wire_dtype)
        policy = self.client_config.failover or FailoverPolicy()
        attempts = 1 + min(policy.max_failovers, MAX_REROUTES)
        for attempt in range(attempts):
            chain = self.chain() if attempt == 0 else self._rechain()
            try:
                x = wire
                for peer in chain:
                    x = self._hop(peer, x, lengths)
                return wire_to_tensor(x, self.client_config.dtype)
            except RemoteError as exc:
                if exc.code in _CLIENT_FAULTS or attempt == attempts - 1:
                    raise
                self.bans.failed(exc.url)
                self.failovers += 1
        raise AssertionError("unreachable")

    def _rechain(self) -> list[PeerInfo]:
        try:
            return self.chain()
        except SwarmNotCovering:
            self.discover()  # nodes may have come back, or others joined
            return self.chain()

    def _hop(self, peer: PeerInfo, wire, lengths: tuple[int, ...]):
        secure = self.client_config.secure
        timeout = self.client_config.timeout

        def send(span: RemoteSpan):
            return span.request(Forward(hidden=wire, lengths=lengths), timeout=timeout)

        span, reply = POOL.open(peer.url, timeout, send, public_key=peer.public_key, secure=secure)
        POOL.give(span, secure)
        ok = isinstance(reply, ForwardResult) and reply.hidden is not None
        if not ok or tuple(reply.hidden.shape) != tuple(wire.shape) or not all_finite(reply.hidden):
            raise RemoteError(
                peer.url, "bad_reply", "the node's forward result is not hidden states of the input's shape"
            )
        if peer.public_key:  # spec §11: the result is the announced key's, for exactly these inputs and lengths
            tag = "lengths:" + ",".join(map(str, lengths)) if lengths else ""
            blocks = (peer.start_block, peer.end_block)
            attested = signed_result("forward", tag, 0, blocks, wire, reply.hidden, reply.signature)
            if not reply.signature or not attested.verify(peer.public_key):
                raise RemoteError(peer.url, "bad_reply", "the forward result is not signed by the node's announced key")
        self.bans.succeeded(peer.url)
        return reply.hidden


class AutoDistributedModel:
    """Entry point mirroring ``transformers.AutoModel``: an encoder's embedding client, or a causal LM's."""

    @staticmethod
    def from_pretrained(
        model: str,
        peers: list[str] | None = None,
        *,
        initial_peers: list[str] | None = None,
        config: ClientConfig | None = None,
        **options,
    ):
        """Load the client parts of ``model`` and learn what each peer serves.

        For an encoder-only model (``minilm``) a :class:`DistributedEncoderModel` (``embed(texts)``);
        for a decoder, what :class:`~swarmnode.client.model.AutoDistributedModelForCausalLM` returns.

        Args:
            model: a known name (``minilm``), a checkpoint directory or a ``.gguf`` path.
            peers: node URLs (``ws://host:port/layerswarm/v1``).
            initial_peers: node URLs and/or one portal URL, added to ``peers`` (as for the causal LM).
            config: the client's options (:class:`ClientConfig`).
            **options: :class:`ClientConfig` fields replacing those of ``config``.

        Raises:
            ValueError: neither peers nor portal given.
            SwarmNotCovering: the peers that answered do not cover every block.
        """
        from swarmnode.models.encoder import is_encoder_only

        checkpoint = Checkpoint(resolve_model(model))
        if not is_encoder_only(checkpoint.config):
            from swarmnode.client.model import AutoDistributedModelForCausalLM

            return AutoDistributedModelForCausalLM.from_pretrained(
                model, peers, initial_peers=initial_peers, config=config, **options
            )
        peers, config = config_and_peers(config, options, peers, initial_peers)
        if not peers and not config.portal:
            raise ValueError("give peers=[...] (node URLs) or portal=URL (a tracker), or set $LAYERSWARM_INITIAL_PEERS")
        name = model_name(model)
        rtts = RttTable()
        timeout = min(config.timeout, 10.0)
        infos, errors = probe_swarm(peers, config.portal, name, rtts, timeout, tracker_optional=False)
        client = DistributedEncoderModel(name, checkpoint, infos, urls=peers, rtts=rtts, config=config)
        return chain_or_explain(client, name, checkpoint.num_blocks, errors)
