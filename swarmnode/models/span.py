"""Build a span of blocks [start, end) and load the client-side parts of a decoder-only model.

The family's own ``transformers`` modules run the blocks (its base-model forward with the
layer list cut to the span), so masks, rotary embeddings and cache handling are exactly the
ones local ``transformers`` uses: that is what makes greedy parity exact.
"""

from __future__ import annotations

import copy
import logging
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


def load_head_modules(checkpoint: Checkpoint, dtype: torch.dtype = torch.float32, device: str = "cpu") -> nn.Module:
    """Load the client-side parts: embeddings, final norm and LM head (tied to the embeddings when the
    config says so), as a ``transformers`` causal-LM module with no blocks (``lm.model.layers`` empty)."""
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
    return lm
