"""Build a span of blocks [start, end) and the client-side parts of a decoder-only model.

The family's own ``transformers`` modules run the blocks (its base-model forward with the
layer list cut to the span), so masks, rotary embeddings and cache handling are exactly the
ones local ``transformers`` uses: that is what makes greedy parity exact.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import threading
import time
from dataclasses import dataclass

import torch
from torch import nn

from swarmnode.models.checkpoint import Checkpoint

log = logging.getLogger("swarmnode.models")


@dataclass(frozen=True)
class Family:
    """Where a model family keeps its parts in the checkpoint (one small adapter per family)."""

    layers_prefix: str = "model.layers."
    embed_key: str = "model.embed_tokens.weight"
    norm_prefix: str = "model.norm."
    lm_head_key: str = "lm_head.weight"


#: Families whose base model is ``embed_tokens -> layers -> norm`` with no extra scaling.
FAMILIES: dict[str, Family] = {name: Family() for name in ("llama", "mistral", "qwen2", "qwen3", "olmo2", "granite")}


def family_of(config) -> Family:
    """The adapter for ``config.model_type``.

    Raises:
        NotImplementedError: the architecture has no adapter yet.
    """
    try:
        return FAMILIES[config.model_type]
    except KeyError:
        raise NotImplementedError(
            f"model type {config.model_type!r} is not supported yet; supported: {', '.join(sorted(FAMILIES))}"
        ) from None


def span_config(config, start: int, end: int):
    """A copy of ``config`` describing only blocks [start, end)."""
    cfg = copy.deepcopy(config)
    cfg.num_hidden_layers = end - start
    if getattr(cfg, "layer_types", None):
        cfg.layer_types = list(config.layer_types[start:end])
    return cfg


def _empty_module(factory, config) -> nn.Module:
    from accelerate import init_empty_weights

    # Parameters on the meta device (no memory); buffers such as rotary frequencies stay real.
    with init_empty_weights(include_buffers=False):
        module = factory(config)
    return module


def _materialize(module: nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    module.load_state_dict(state, strict=False, assign=True)
    missing = [n for n, p in module.named_parameters() if p.is_meta]
    if missing:
        raise ValueError(f"checkpoint lacks weights for {what}: {missing[:5]}")


class SpanModel(nn.Module):
    """Blocks [start, end) of a model. ``forward(hidden, cache)`` maps ``(B, T, H) -> (B, T, H)``."""

    def __init__(self, inner: nn.Module, config, start: int, end: int) -> None:
        super().__init__()
        self.inner = inner
        self.config = config  # the span's own config (num_hidden_layers = end - start)
        self.start = start
        self.end = end

    def new_cache(self):
        """An empty KV cache for this span's blocks."""
        from transformers import DynamicCache

        return DynamicCache(config=self.config)

    @torch.inference_mode()
    def forward(self, hidden: torch.Tensor, cache=None) -> torch.Tensor:  # (B, T, H) -> (B, T, H)
        out = self.inner(inputs_embeds=hidden, cache=cache, use_cache=cache is not None)
        return out.last_hidden_state


def load_span(
    checkpoint: Checkpoint, start: int, end: int, dtype: torch.dtype = torch.float32, device: str = "cpu"
) -> SpanModel:
    """Load only the weights of blocks [start, end) and build their module.

    Raises:
        ValueError: the range is empty or outside the model.
    """
    from transformers import AutoModel

    num = checkpoint.num_blocks
    if not 0 <= start < end <= num:
        raise ValueError(f"blocks {start}:{end} are outside the model's 0:{num}")
    family = family_of(checkpoint.config)
    cfg = span_config(checkpoint.config, start, end)
    inner = _empty_module(AutoModel.from_config, cfg)
    inner.norm = nn.Identity()  # the final norm belongs to the client
    inner.embed_tokens = None  # the embeddings too; spans receive hidden states
    state = {}
    keys = [k for k in checkpoint.keys() if k.startswith(family.layers_prefix)]
    wanted = {}
    for key in keys:
        index, rest = key[len(family.layers_prefix) :].split(".", 1)
        if start <= int(index) < end:
            wanted[key] = f"layers.{int(index) - start}.{rest}"
    for key, tensor in checkpoint.load(list(wanted), dtype=dtype).items():
        state[wanted[key]] = tensor
    _materialize(inner, state, f"blocks {start}:{end}")
    inner.to(device=device, dtype=dtype)
    inner.eval()
    return SpanModel(inner, cfg, start, end)


class Participant:
    """One generation's membership in :class:`RowBatcher` s: its pace (time between its rows)."""

    def __init__(self) -> None:
        self.last = 0.0
        self.pace: float | None = None

    first_wait = 0.02  # a first row (pace unknown): generations started together send theirs moments apart

    def arrived(self) -> float:
        """Note a row now; how long a batch led by it may wait for the others (half its pace)."""
        now = time.monotonic()
        if self.last:
            gap = now - self.last
            self.pace = gap if self.pace is None else 0.7 * self.pace + 0.3 * gap
        self.last = now
        return 0.5 * self.pace if self.pace is not None else self.first_wait


class RowBatcher:
    """Run one-row requests from many threads as one batched call (leader/follower).

    The first caller to find the batcher idle becomes the leader: it runs everything queued so
    far in one call, until its own row is done, then promotes a waiting caller to lead the
    rest. Callers that registered as :meth:`participant` (concurrent generations) are waited
    for, up to half the leader's own time between two rows (at most ``gather_s``): groups of
    sessions that drifted apart merge within a round and then move in lockstep (one batch at
    every node and here), while a much slower session holds the others back by at most half
    their pace. A participant that has sent no row yet (still on its prompt) is waited for only
    by other first rows, up to ``Participant.first_wait``: generations started together have
    their first logits computed together. A lone caller runs at once.
    """

    def __init__(self, fn, gather_s: float = 0.15) -> None:
        self.fn = fn
        self.gather_s = gather_s
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)
        self._pending: list[dict] = []
        self._busy = False
        self._members: set[Participant] = set()  # registered participants
        self.largest_batch = 0

    @property
    def active(self) -> int:
        """Registered participants."""
        return len(self._members)

    @contextlib.contextmanager
    def participant(self, member: Participant | None = None):
        """Register a caller that will send a row about every step while the block runs."""
        member = member or Participant()
        with self._lock:
            self._members.add(member)
        try:
            yield member
        finally:
            with self._lock:
                self._members.discard(member)
                self._arrived.notify_all()

    def _awaited(self, first: bool) -> int:
        """Rows a batch waits for: every participant's for a first row, else those already sending."""
        return len(self._members) if first else sum(1 for m in self._members if m.last)

    def __call__(self, row: torch.Tensor, member: Participant | None = None) -> torch.Tensor:
        wait = member.arrived() if member is not None else 0.0
        first = member is not None and member.pace is None
        slot = {"row": row, "out": None, "error": None, "wake": threading.Event()}
        with self._lock:
            self._pending.append(slot)
            leader = not self._busy
            self._busy = True
            self._arrived.notify_all()
        if not leader:
            slot["wake"].wait()
            if slot["out"] is None and slot["error"] is None:  # promoted to lead
                leader = True
        while leader and slot["out"] is None and slot["error"] is None:
            with self._lock:
                deadline = time.monotonic() + min(self.gather_s, wait)
                while len(self._pending) < self._awaited(first) and (left := deadline - time.monotonic()) > 0:
                    self._arrived.wait(left)
                batch, self._pending = self._pending, []
            self.largest_batch = max(self.largest_batch, len(batch))
            try:
                out = self.fn(torch.cat([s["row"] for s in batch]))
                for i, s in enumerate(batch):
                    s["out"] = out[i : i + 1]
            except BaseException as exc:  # every caller of this batch sees the failure
                for s in batch:
                    s["error"] = exc
            for s in batch:
                if s is not slot:
                    s["wake"].set()
        if leader:
            with self._lock:
                if self._pending:
                    self._pending[0]["wake"].set()  # it leads the next batch
                else:
                    self._busy = False
        if slot["error"] is not None:
            raise slot["error"]
        return slot["out"]


class ClientHead(nn.Module):
    """What the client keeps: token embeddings, the final norm and the LM head.

    Inputs and outputs live on the CPU (they go on or come off the wire); the parts themselves
    may sit on a GPU. One-row logits requests from concurrent sessions in one process (a
    gateway, a benchmark) share one pass over the LM head, which dominates the client's cost;
    a single session always runs alone, so its numbers are unchanged.
    """

    def __init__(self, lm: nn.Module) -> None:
        super().__init__()
        self.embed = lm.get_input_embeddings()
        self.norm = lm.model.norm
        self.lm_head = lm.get_output_embeddings()
        self._rows = RowBatcher(self._logits)
        self.onnx = None  # OnnxHead, once enable_onnx() succeeded
        self._onnx_rows = RowBatcher(self._onnx_logits)

    @property
    def device(self) -> torch.device:
        """Where the parts live."""
        return self.embed.weight.device

    @torch.inference_mode()
    def embed_tokens(self, input_ids: torch.Tensor) -> torch.Tensor:  # (B, T) -> (B, T, H)
        """Embed token ids."""
        return self.embed(input_ids.to(self.device)).cpu()

    @torch.inference_mode()
    def _logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head(self.norm(hidden.to(self.device, self.embed.weight.dtype))).cpu()

    @contextlib.contextmanager
    def participant(self):
        """Mark a generation running in this process: its one-row logits are batched with the others'.

        Yields the :class:`Participant` to pass to :meth:`logits`.
        """
        member = Participant()
        with self._rows.participant(member), self._onnx_rows.participant(member):
            yield member

    def enable_onnx(self) -> bool:
        """Make ``logits(..., fast=True)`` run on ONNX Runtime (CPU, fp32 only); whether it can."""
        if self.onnx is not None:
            return True
        if self.device.type != "cpu" or self.embed.weight.dtype != torch.float32:
            return False
        try:
            from swarmnode.runtime.onnx_backend import OnnxHead

            self.onnx = OnnxHead(self.norm, self.lm_head)
        except Exception as exc:  # no onnxruntime, or a head the builder cannot express
            log.warning("ONNX Runtime head unavailable (%s); logits stay on PyTorch", exc)
            return False
        return True

    def _onnx_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.onnx(hidden)

    def logits(
        self, hidden: torch.Tensor, fast: bool = False, member: Participant | None = None
    ) -> torch.Tensor:  # (B, T, H) -> (B, T, V)
        """Final norm and LM head.

        ``fast``: on ONNX Runtime when :meth:`enable_onnx` succeeded (about 3x faster on CPU, not
        bit-identical to PyTorch); otherwise PyTorch, bit-identical to ``transformers``.
        ``member``: from :meth:`participant`, for a generation running beside others.
        """
        fast = fast and self.onnx is not None
        if hidden.shape[0] == 1 and hidden.shape[1] == 1:
            return (self._onnx_rows if fast else self._rows)(hidden, member)
        return self._onnx_logits(hidden) if fast else self._logits(hidden)


def load_client_head(checkpoint: Checkpoint, dtype: torch.dtype = torch.float32, device: str = "cpu") -> ClientHead:
    """Load embeddings, final norm and LM head (tied to the embeddings when the config says so)."""
    from transformers import AutoModelForCausalLM

    family = family_of(checkpoint.config)
    cfg = span_config(checkpoint.config, 0, 0)
    lm = _empty_module(AutoModelForCausalLM.from_config, cfg)
    keys = [family.embed_key] + [k for k in checkpoint.keys() if k.startswith(family.norm_prefix)]
    tied = bool(getattr(checkpoint.config, "tie_word_embeddings", False)) or family.lm_head_key not in checkpoint.keys()
    if not tied:
        keys.append(family.lm_head_key)
    state = checkpoint.load(keys, dtype=dtype)
    _materialize(lm.model, {k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")}, "head")
    if tied:
        lm.lm_head.weight = lm.model.embed_tokens.weight
    else:
        lm.lm_head.weight = nn.Parameter(state[family.lm_head_key], requires_grad=False)
    lm.to(device=device, dtype=dtype)
    lm.eval()
    return ClientHead(lm)
