"""The model's parts and sessions under the names Petals gives them, so Petals code ports by changing its import.

Petals code reaches into a distributed model as ``model.transformer.word_embeddings``,
``model.transformer.h`` (the remote blocks), ``model.transformer.ln_f`` and ``model.lm_head``, and
keeps one server-side cache across ``generate`` calls with::

    with model.inference_session(max_length=512) as sess:
        model.generate(inputs, max_new_tokens=1, session=sess)  # later calls: only the new tokens

:class:`SessionsMixin` gives :class:`~swarmnode.client.model.DistributedModelForCausalLM` those
names; :func:`continued_ids` is how ``generate`` continues a session: the session remembers every
token of the conversation (``output_ids``) and the nodes hold all but the last, so a new call runs
only the tokens after ``session.position``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import re
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING

import torch
from torch import nn

from swarmnode.client.config import ClientConfig
from swarmnode.client.remote import RemoteSpan
from swarmnode.client.routing import SwarmNotCovering
from swarmnode.client.session import InferenceSession
from swarmnode.models.wire import tensor_to_wire, wire_to_tensor
from swarmnode.protocol import Forward, ForwardResult

if TYPE_CHECKING:
    from swarmnode.client.model import DistributedModelForCausalLM

__all__ = [
    "INITIAL_PEERS_ENV",
    "DistributedTransformer",
    "RemoteBlocks",
    "SessionsMixin",
    "continued_ids",
    "split_peers",
]

INITIAL_PEERS_ENV = "LAYERSWARM_INITIAL_PEERS"  # where from_pretrained looks when given no peers and no portal


class RemoteBlocks:
    """The model's transformer blocks, run by the swarm (Petals' ``RemoteSequential``).

    Calling it runs hidden states ``(B, T, H)`` through every block without a cache (no gradients:
    the nodes serve inference only); :meth:`inference_session` opens a session whose
    ``step(hidden)`` keeps each node's cache.
    """

    def __init__(self, model: DistributedModelForCausalLM) -> None:
        self._model = model

    def __len__(self) -> int:
        return self._model.checkpoint.num_blocks

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:  # (B, T, H) -> (B, T, H)
        """Hidden states after every block (see :meth:`DistributedModelForCausalLM.run_blocks`)."""
        return self._model.run_blocks(hidden)

    __call__ = forward

    def inference_session(self, max_length: int) -> contextlib.AbstractContextManager[InferenceSession]:
        """As :meth:`SessionsMixin.inference_session`."""
        return self._model.inference_session(max_length=max_length)

    def use_session(self, session: InferenceSession) -> contextlib.AbstractContextManager[InferenceSession]:
        """As :meth:`SessionsMixin.use_session`."""
        return self._model.use_session(session)


class DistributedTransformer:
    """The model's body with Petals' names for its parts, and ``transformers``' Llama names beside them.

    ``word_embeddings`` / ``embed_tokens`` and ``ln_f`` / ``norm`` are the client's own modules (the
    ones generation uses); ``h`` / ``layers`` are the remote blocks.
    """

    def __init__(self, model: DistributedModelForCausalLM) -> None:
        self.config = model.config
        self.word_embeddings: nn.Module = model.head.embed
        self.embed_tokens = self.word_embeddings
        self.word_embeddings_layernorm: nn.Module = nn.Identity()  # Bloom has one; Llama-family models do not
        self.h = RemoteBlocks(model)
        self.layers = self.h
        self.ln_f: nn.Module = model.head.norm
        self.norm = self.ln_f


class _SessionStack(threading.local):
    """Per thread: the sessions of the enclosing ``inference_session`` / ``use_session`` blocks, innermost last."""

    def __init__(self) -> None:
        self.sessions: list[InferenceSession] = []


class SessionsMixin:
    """The model API Petals and ``transformers`` users call: ``generate`` (with ``session=``), ``forward``,
    ``transformer``, ``lm_head``, ``inference_session``, ``use_session``.

    Needs ``head``, ``chain()``, ``open_session()``, ``stream()`` and the client options from the model it
    is mixed into.
    """

    @functools.cached_property
    def transformer(self) -> DistributedTransformer:
        """The model's body (``word_embeddings``, ``h``, ``ln_f``), as on a Petals model."""
        return DistributedTransformer(self)  # type: ignore[arg-type]

    @property
    def model(self) -> DistributedTransformer:
        """The same body, under the attribute name ``transformers``' Llama uses."""
        return self.transformer

    @property
    def lm_head(self) -> nn.Module:
        """The LM head (the client's own, tied to the embeddings when the config says so)."""
        return self.head.lm_head  # type: ignore[attr-defined]

    def get_input_embeddings(self) -> nn.Module:
        """The token embeddings, as on a ``transformers`` model."""
        return self.head.embed  # type: ignore[attr-defined]

    def get_output_embeddings(self) -> nn.Module:
        """The LM head, as on a ``transformers`` model."""
        return self.lm_head

    # -- generation and scoring (transformers' names; Petals' session semantics) --------------------

    @torch.inference_mode()
    def generate(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        streamer=None,
        generator: torch.Generator | None = None,
        session: InferenceSession | None = None,
        **kwargs,
    ) -> torch.Tensor:
        """Generate like ``transformers``' ``generate``: returns prompt + new tokens, ``(B, T + N)``.

        Args:
            input_ids: ``(B, T)`` prompt token ids; in a session that already ran, the new tokens to
                append (``None``: just go on generating).
            attention_mask: accepted for compatibility; must be all ones.
            streamer: a ``transformers`` streamer (``put``/``end``), e.g. ``TextStreamer``.
            generator: torch RNG for sampling.
            session: continue this session (see :meth:`inference_session`; default: the one of an
                enclosing ``inference_session`` block, else a session of this call alone). As in Petals,
                the result then starts at ``input_ids``, not at the session's first token.
            **kwargs: ``max_new_tokens`` (or ``max_length``), ``do_sample``, ``temperature``, ``top_k``,
                ``top_p``, ``min_p``, ``repetition_penalty``, ``eos_token_id``, ``pad_token_id``, ``stop_strings``.
        """
        if input_ids is not None and input_ids.dim() == 1:
            input_ids = input_ids.unsqueeze(0)
        if streamer is not None and input_ids is not None:
            streamer.put(input_ids.cpu())
        out = [input_ids] if input_ids is not None else []
        for token in self.stream(input_ids, attention_mask, generator=generator, session=session, **kwargs):
            out.append(token[:, None])
            if streamer is not None:
                streamer.put(token.cpu())
        if streamer is not None:
            streamer.end()
        return torch.cat(out, dim=1) if out else torch.empty((1, 0), dtype=torch.long)

    @torch.inference_mode()
    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:  # (B, T) -> (B, T, V)
        """Logits for every position, through the swarm without any cache (scoring)."""
        if input_ids.dim() == 1:
            input_ids = input_ids.unsqueeze(0)
        return self.head.logits(self.run_blocks(self.head.embed_tokens(input_ids)))

    __call__ = forward

    @torch.inference_mode()
    def run_blocks(self, hidden: torch.Tensor) -> torch.Tensor:  # (B, T, H) -> (B, T, H)
        """Hidden states after every block, through the swarm without any cache (``transformer.h(...)``)."""
        wire = tensor_to_wire(hidden, self.client_config.wire_dtype)
        for peer in self.chain():
            span = RemoteSpan(peer.url, timeout=self.timeout)
            try:
                reply = span.request(Forward(hidden=wire))
            finally:
                span.close()
            assert isinstance(reply, ForwardResult) and reply.hidden is not None
            wire = reply.hidden
        return wire_to_tensor(wire, self.dtype)

    @functools.cached_property
    def _session_stack(self) -> _SessionStack:
        return _SessionStack()

    @property
    def current_session(self) -> InferenceSession | None:
        """The session of the innermost enclosing ``inference_session``/``use_session`` block (this thread's)."""
        stack = self._session_stack.sessions
        return stack[-1] if stack else None

    @contextlib.contextmanager
    def use_session(self, session: InferenceSession) -> Iterator[InferenceSession]:
        """Inside this block, ``generate`` and ``stream`` continue ``session`` unless given another."""
        stack = self._session_stack.sessions
        stack.append(session)
        try:
            yield session
        finally:
            stack.remove(session)

    @contextlib.contextmanager
    def inference_session(self, max_length: int) -> Iterator[InferenceSession]:
        """Open one session on the swarm, used by every ``generate`` inside the block (Petals' API).

        Each node keeps the session's cache between calls, so a later ``generate(new_ids,
        session=sess)`` sends only ``new_ids`` (and the last token chosen), never the earlier turns.
        The session is closed (and the nodes' caches freed) when the block ends.

        Args:
            max_length: most tokens the session will hold, every call's prompt and output together.

        Raises:
            ValueError: ``max_length`` is not positive or exceeds what the nodes allow.
            SwarmNotCovering: no chain of nodes covers the model.
            RemoteError: the session could not be opened.
        """
        chain = self.chain()  # type: ignore[attr-defined]
        limit = min(p.max_session_length for p in chain)
        if not 0 < max_length <= limit:
            raise ValueError(f"max_length must be in 1..{limit} (the swarm's limit), got {max_length}")
        with self.open_session(max_length, chain) as session, self.use_session(session):  # type: ignore[attr-defined]
            yield session


def continued_ids(session: InferenceSession | None, input_ids: torch.Tensor | None, kwargs: dict) -> torch.Tensor:
    """The whole token sequence a ``generate`` call works on: ``(B, T)``.

    Without a session, ``input_ids`` itself. With one, the tokens of its earlier calls
    (``session.output_ids``) followed by ``input_ids`` (``None``: just go on generating), as in
    Petals. A ``max_length`` in ``kwargs`` (the whole sequence's length, as in ``transformers``)
    becomes ``max_new_tokens``.

    Raises:
        ValueError: no tokens at all, a batch size other than the session's, nothing new to run,
            or a ``max_length`` the sequence already reaches.
    """
    if input_ids is not None and input_ids.dim() == 1:
        input_ids = input_ids.unsqueeze(0)
    earlier = session.output_ids if session is not None else None
    if earlier is not None and input_ids is not None:
        if input_ids.shape[0] != earlier.shape[0]:
            raise ValueError(f"the session holds {earlier.shape[0]} sequences, got input_ids for {input_ids.shape[0]}")
        input_ids = torch.cat([earlier, input_ids.to(earlier.dtype)], dim=1)
    elif earlier is not None:
        input_ids = earlier
    if input_ids is None:
        raise ValueError("give input_ids (no session with earlier tokens to continue)")
    if session is not None and session.position >= input_ids.shape[1]:
        raise ValueError(f"the session already holds {session.position} tokens: give new input_ids to run")
    max_length = kwargs.pop("max_length", None)
    if max_length is not None and kwargs.get("max_new_tokens") is None:
        if max_length <= input_ids.shape[1]:
            raise ValueError(f"max_length={max_length} leaves no room after {input_ids.shape[1]} tokens")
        kwargs["max_new_tokens"] = max_length - input_ids.shape[1]
    return input_ids


def split_peers(initial_peers: list[str], portal: str | None, use_env: bool = True) -> tuple[list[str], str | None]:
    """Node URLs and the portal among Petals-style ``initial_peers`` (default: ``$LAYERSWARM_INITIAL_PEERS``).

    ``ws://`` / ``wss://`` entries are nodes; an ``http://`` / ``https://`` entry is a portal whose tracker
    lists the nodes (used unless ``portal`` is given). The variable holds the same entries, separated by
    commas or spaces; it is read only with ``use_env`` and when ``initial_peers`` and ``portal`` are both empty.

    Raises:
        ValueError: an entry of another kind (e.g. a Petals multiaddr), or two different portals.
    """
    if use_env and not initial_peers and not portal:
        initial_peers = [p for p in re.split(r"[,\s]+", os.environ.get(INITIAL_PEERS_ENV, "")) if p]
    nodes: list[str] = []
    portals: list[str] = []
    for entry in initial_peers:
        scheme = entry.split("://", 1)[0].lower() if "://" in entry else ""
        if scheme in ("ws", "wss"):
            nodes.append(entry)
        elif scheme in ("http", "https"):
            portals.append(entry.rstrip("/"))
        else:
            raise ValueError(f"initial peer {entry!r} is neither a node (ws://...) nor a portal (http://...)")
    if len(set(portals)) > 1 and not portal:
        raise ValueError(f"initial peers name {len(set(portals))} portals; give one")
    return nodes, portal or (portals[0] if portals else None)


def config_and_peers(
    config: ClientConfig | None, options: dict, peers: list[str] | None, initial_peers: list[str] | None
) -> tuple[list[str], ClientConfig]:
    """``from_pretrained``'s node URLs and options: ``options`` over ``config``, Petals-style ``initial_peers``
    split into nodes (added to ``peers``) and the portal (see :func:`split_peers`)."""
    config = ClientConfig.build(config, **options)
    extra, portal = split_peers(list(initial_peers or []), config.portal, use_env=not peers)
    return [*(peers or []), *extra], dataclasses.replace(config, portal=portal)


def chain_or_explain(client, name: str, num_blocks: int, errors: dict[str, object]):
    """``client`` once its first chain of nodes is found.

    Raises:
        SwarmNotCovering: no chain covers the model; it is caused by why each peer that did not answer failed.
    """
    try:
        client.chain()
    except SwarmNotCovering as exc:
        detail = "; ".join(f"{u}: {e}" for u, e in errors.items())
        raise SwarmNotCovering(name, num_blocks, exc.uncovered) from (RuntimeError(detail) if detail else None)
    return client
