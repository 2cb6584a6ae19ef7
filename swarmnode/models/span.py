"""Build a span of blocks [start, end) and load the client-side parts of a decoder-only model.

The family's own ``transformers`` modules run the blocks: the stack's forward (the base model, or
its decoder) runs with its block list cut to the span, so masks, rotary tables, ALiBi biases,
sliding windows and cache handling are exactly the ones local ``transformers`` uses: that is what
makes greedy parity exact. Where each part lives is found by :mod:`swarmnode.models.structure`.

Hidden states on the wire are what a block receives: the client runs the input side (embeddings,
position embeddings, scaling...) and the output side (final norm, head, logit transforms); a span
takes the stack's forward up to its first block, where a hook puts the incoming hidden states in,
and stops after its last block.
"""

from __future__ import annotations

import inspect
import logging
import threading

import torch
from torch import nn

from swarmnode.models.checkpoint import Checkpoint
from swarmnode.models.structure import (
    INPUT_PROJECTIONS,
    Structure,
    UnsupportedArchitecture,
    detect_structure,
    empty_causal_lm,
    renumber_blocks,
    span_config,
    text_config,
)

log = logging.getLogger("swarmnode.models")

__all__ = [
    "SpanModel",
    "Structure",
    "UnsupportedArchitecture",
    "family_of",
    "load_head_modules",
    "load_span",
    "span_config",
]

_STRUCTURES: dict[str, Structure] = {}


def family_of(config) -> Structure:
    """The detected :class:`Structure` of ``config``'s architecture (cached per config).

    Raises:
        UnsupportedArchitecture: (a ``NotImplementedError``) naming what could not be mapped.
    """
    key = text_config(config).to_json_string(use_diff=False)
    if key not in _STRUCTURES:
        _STRUCTURES[key] = detect_structure(config)
    return _STRUCTURES[key]


class _Reached(Exception):
    """Raised by a hook to leave the stack's forward with the hidden states it holds."""

    def __init__(self, hidden: torch.Tensor) -> None:
        super().__init__()
        self.hidden = hidden


def _hidden_of(args: tuple, kwargs: dict) -> torch.Tensor:
    return args[0] if args else kwargs["hidden_states"]


def _forward_kwargs(stack: nn.Module, **wanted) -> dict:
    """The keyword arguments of ``wanted`` that ``stack.forward`` accepts."""
    params = inspect.signature(stack.forward).parameters
    return {k: v for k, v in wanted.items() if k in params}


class _PerThread(threading.local):
    """Per-thread state that a copy of the module (``copy.deepcopy``, ``quantize_dynamic``) starts afresh."""

    def __deepcopy__(self, memo: dict) -> _PerThread:
        return _PerThread()

    def __reduce__(self):
        return (_PerThread, ())


class SpanModel(nn.Module):
    """Blocks [start, end) of a model. ``forward(hidden, cache)`` maps ``(B, T, H) -> (B, T, H)``.

    Attributes:
        inner: the stack (base model or decoder) holding only this span's blocks.
        structure: where the architecture keeps its parts.
    """

    def __init__(self, inner: nn.Module, config, start: int, end: int, structure: Structure | None = None) -> None:
        super().__init__()
        self.inner = inner
        self.config = config  # the span's own config (num_hidden_layers = end - start)
        self.start = start
        self.end = end
        self.structure = structure
        self._local = _PerThread()
        if structure is not None:
            self._embed_dim = int(getattr(inner, "_span_embed_dim", config.hidden_size))
            blocks = self.layers
            blocks[0].register_forward_pre_hook(self._put_incoming, with_kwargs=True)
            blocks[-1].register_forward_hook(self._take_outgoing)

    @property
    def layers(self) -> nn.ModuleList:
        """This span's blocks."""
        return getattr(self.inner, self.structure.layers_attr if self.structure else "layers")

    def _put_incoming(self, module, args, kwargs):
        incoming = getattr(self._local, "incoming", None)
        if incoming is None:  # the block called from elsewhere (an export): leave it alone
            return None
        if args:
            return (incoming, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": incoming}

    def _take_outgoing(self, module, args, output):
        if getattr(self._local, "incoming", None) is None:
            return None
        raise _Reached(output[0] if isinstance(output, tuple) else output)

    def new_cache(self):
        """An empty KV cache for this span's blocks."""
        from transformers import DynamicCache

        return DynamicCache(config=self.config)

    @torch.inference_mode()
    def forward(self, hidden: torch.Tensor, cache=None) -> torch.Tensor:  # (B, T, H) -> (B, T, H)
        if self.structure is None:
            out = self.inner(inputs_embeds=hidden, cache=cache, use_cache=cache is not None)
            return out.last_hidden_state
        # The stack's input side runs on a stand-in (it makes positions, masks, rotary tables and
        # ALiBi biases from its shape and the cache); the first block gets the real hidden states.
        b, t, _ = hidden.shape
        stand_in = hidden if self._embed_dim == hidden.shape[-1] else hidden.new_zeros(b, t, self._embed_dim)
        self._local.incoming = hidden
        kwargs = _forward_kwargs(self.inner, cache=cache, past_key_values=cache, use_cache=cache is not None)
        try:
            self.inner(inputs_embeds=stand_in, **kwargs)
        except _Reached as reached:
            return reached.hidden
        finally:
            self._local.incoming = None
        raise RuntimeError(f"{type(self.inner).__name__}.forward returned without running its last block")


def _non_block_state(checkpoint: Checkpoint, structure: Structure, stack_only: bool) -> list[str]:
    """Checkpoint keys outside the blocks (of the stack only, or with the head too)."""
    prefix = structure.stack_path + "."
    return [k for k in checkpoint.keys() if structure.block_key(k) is None and (k.startswith(prefix) or not stack_only)]


def load_span(
    checkpoint: Checkpoint, start: int, end: int, dtype: torch.dtype = torch.float32, device: str = "cpu"
) -> SpanModel:
    """Load only the weights of blocks [start, end) (and the stack's small input-side weights) and build them.

    The blocks are built from the whole model's config at their real indices (layer-dependent
    choices such as sparse-MoE steps or attention types stay right), then numbered from 0 for
    the span's own cache.

    Raises:
        ValueError: the range is empty or outside the model.
        UnsupportedArchitecture: the architecture could not be mapped.
    """
    num = checkpoint.num_blocks
    if not 0 <= start < end <= num:
        raise ValueError(f"blocks {start}:{end} are outside the model's 0:{num}")
    structure = family_of(checkpoint.config)
    lm = empty_causal_lm(text_config(checkpoint.config))
    stack = lm.get_submodule(structure.stack_path)
    embeddings = lm.get_input_embeddings()
    embed_dim = embeddings.embedding_dim
    # The stack's own weights outside the blocks, bar the token embeddings: position embeddings, embedding norms.
    input_side = {
        f"{structure.stack_path}.{n}"
        for n, _ in stack.named_parameters()
        if not n.startswith(structure.layers_attr + ".") and not n.startswith(_child_name(stack, embeddings) + ".")
    }
    keys = []
    for key in checkpoint.keys():
        where = structure.block_key(key)
        if (where is not None and start <= where[0] < end) or (where is None and key in input_side):
            keys.append(key)
    _load_into(lm, checkpoint.load(keys, dtype=dtype), dtype)
    blocks = nn.ModuleList(list(getattr(stack, structure.layers_attr))[start:end])
    renumber_blocks(blocks, start)
    setattr(stack, structure.layers_attr, blocks)
    cfg = span_config(checkpoint.config, start, end)
    stack.config = cfg
    for name, module in list(stack.named_children()):
        if module is embeddings:
            setattr(stack, name, None)  # spans receive hidden states, never token ids
        elif name == structure.norm_attr or name in structure.output_projections:
            setattr(stack, name, nn.Identity())  # never reached: the last block's hook stops the forward
        elif name in INPUT_PROJECTIONS:
            setattr(stack, name, None)
            embed_dim = cfg.hidden_size  # the stand-in then has the blocks' width
    stack._span_embed_dim = embed_dim
    missing = [n for n, p in stack.named_parameters() if p.is_meta]
    if missing:
        raise ValueError(f"checkpoint lacks weights for blocks {start}:{end}: {missing[:5]}")
    stack.to(device=device, dtype=dtype)
    stack.eval()
    return SpanModel(stack, cfg, start, end, structure)


def _child_name(parent: nn.Module, child: nn.Module) -> str:
    return next((n for n, m in parent.named_children() if m is child), "")


def _load_into(lm: nn.Module, state: dict[str, torch.Tensor], dtype: torch.dtype) -> None:
    """Load checkpoint tensors into ``lm`` the way ``transformers`` does, key conversions included
    (MoE checkpoints store one tensor per expert; the modules hold them fused)."""
    try:
        from transformers.conversion_mapping import get_model_conversion_mapping
        from transformers.core_model_loading import convert_and_load_state_dict_in_model
        from transformers.modeling_utils import LoadStateDictConfig
    except ImportError:  # another transformers: plain names only
        lm.load_state_dict(state, strict=False, assign=True)
        return
    config = LoadStateDictConfig(dtype=dtype, weight_mapping=get_model_conversion_mapping(lm))
    convert_and_load_state_dict_in_model(model=lm, state_dict=state, load_config=config)


class _Entry(nn.Module):
    """Stands in for the first block in the client's stack: stops its forward with the block's input."""

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        for name, value in vars(block).items():  # plain attributes the stack may read (attention_type...)
            if not name.startswith("_") and name != "training":
                setattr(self, name, value)

    def forward(self, *args, **kwargs):
        raise _Reached(_hidden_of(args, kwargs))


class HeadModules(nn.Module):
    """The client-side parts: the stack's input side (no blocks), the final norm, output projections and LM head.

    ``embed(ids, past_length)`` runs the stack's forward up to its first block, so everything the
    model does there (position embeddings, embedding scaling, embedding norms) is the model's own.
    """

    def __init__(self, stack: nn.Module, lm_head: nn.Module, structure: Structure) -> None:
        super().__init__()
        self.stack = stack
        self.lm_head = lm_head
        self.structure = structure
        self.norm = getattr(stack, structure.norm_attr) or nn.Identity()
        self.hidden_size = int(stack.config.hidden_size)  # the blocks' width (the embeddings' may differ)
        self.projections = nn.ModuleList([getattr(stack, a) for a in structure.output_projections])
        self._kwargs = _forward_kwargs(stack, use_cache=False)
        self._positions = "position_ids" in inspect.signature(stack.forward).parameters

    def get_input_embeddings(self) -> nn.Module:
        """The token embedding table."""
        return self.stack.get_input_embeddings()

    def get_output_embeddings(self) -> nn.Module:
        """The LM head."""
        return self.lm_head

    @torch.inference_mode()
    def embed(self, input_ids: torch.Tensor, past_length: int = 0) -> torch.Tensor:  # (B, T) -> (B, T, H)
        """What the first block receives for ``input_ids`` at positions ``past_length...``."""
        kwargs = dict(self._kwargs)
        if self._positions:
            b, t = input_ids.shape
            kwargs["position_ids"] = torch.arange(past_length, past_length + t, device=input_ids.device).expand(b, t)
        try:
            self.stack(input_ids=input_ids, **kwargs)
        except _Reached as reached:
            return reached.hidden
        raise RuntimeError(f"{type(self.stack).__name__}.forward returned without reaching its first block")

    @torch.inference_mode()
    def logits(self, hidden: torch.Tensor) -> torch.Tensor:  # (B, T, H) -> (B, T, V)
        """Final norm, output projections, LM head and the declared logit transforms."""
        x = self.norm(hidden)
        for projection in self.projections:
            x = projection(x)
        return self.structure.apply_logit_transforms(self.lm_head(x))


def load_head_modules(checkpoint: Checkpoint, dtype: torch.dtype = torch.float32, device: str = "cpu") -> HeadModules:
    """Load the client-side parts: every weight outside the blocks (embeddings, position embeddings,
    norms, projections, the LM head, tied to the embeddings when the checkpoint has none of its own)."""
    structure = family_of(checkpoint.config)
    lm = empty_causal_lm(text_config(checkpoint.config))
    stack = lm.get_submodule(structure.stack_path)
    first = getattr(stack, structure.layers_attr)[0]
    setattr(stack, structure.layers_attr, nn.ModuleList([_Entry(first)]))
    stack.config = span_config(checkpoint.config, 0, 1)
    lm_head = lm.get_output_embeddings()
    keys = _non_block_state(checkpoint, structure, stack_only=False)
    _load_into(lm, checkpoint.load(keys, dtype=dtype), dtype)
    embeddings = lm.get_input_embeddings()
    if lm_head.weight.is_meta:  # tied (or saved once): the head is the embedding table
        lm_head.weight = embeddings.weight
    missing = [n for n, p in lm.named_parameters() if p.is_meta]
    if missing:
        raise ValueError(f"checkpoint lacks weights for the client's parts: {missing[:5]}")
    lm.to(device=device, dtype=dtype)
    lm.eval()
    return HeadModules(stack, lm_head, structure)
