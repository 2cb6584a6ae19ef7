"""Find where a ``transformers`` causal LM keeps its blocks, input side and output side.

Nothing here is a table of families. The model class of a config is built on the meta device
(no memory) and inspected:

- the **block list** is the shallowest ``nn.ModuleList`` of ``num_hidden_layers`` modules of one
  class (``model.layers``, ``transformer.h``, ``gpt_neox.layers``, ``model.decoder.layers``...);
  the module holding it is the **stack** (the base model, or its decoder);
- the **input side** is whatever the stack does before its first block (token embeddings,
  position embeddings, embedding scaling, an embedding layer norm, rotary tables, ALiBi biases,
  per-layer masks such as sliding windows). It is never re-implemented: the stack's own forward
  runs, and a hook on the first block takes the hidden states it receives (the client) or
  replaces them with the ones that came over the wire (a span);
- the **output side** is the stack's final norm (found by name among :data:`FINAL_NORM_NAMES`),
  an output projection where the stack has one (OPT's ``project_out``), the LM head, and the
  logit transforms a config declares (:data:`LOGIT_TRANSFORMS`: soft-capping, scaling).

An architecture with no such block list, or no final norm under a known name, is refused with
an error naming what could not be mapped.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
from torch import nn

#: Names a stack gives its final norm (the output side starts there).
FINAL_NORM_NAMES = ("norm", "ln_f", "final_layer_norm", "final_layernorm", "norm_f", "final_norm")
#: Stack modules between the final norm and the LM head, applied in this order when present.
OUTPUT_PROJECTIONS = ("project_out",)
#: Stack modules that change the width of the input side (dropped in spans, which receive hidden states).
INPUT_PROJECTIONS = ("project_in",)
#: Logit transforms declared by config attributes: ``(attribute, kind)``; applied when the value is set.
LOGIT_TRANSFORMS = (
    ("final_logit_softcapping", "softcap"),  # Gemma 2 / 3: cap * tanh(logits / cap)
    ("logits_scaling", "divide"),  # Granite
    ("logit_scale", "multiply"),  # Cohere
)


class UnsupportedArchitecture(NotImplementedError):
    """The model's structure could not be mapped onto blocks, an input side and an output side."""


@dataclass(frozen=True)
class Structure:
    """Where one architecture keeps its parts (module paths from the causal-LM root).

    Attributes:
        model_type: ``config.model_type``.
        stack_path: the module holding the block list, e.g. ``model`` or ``model.decoder``.
        layers_attr: the block list's attribute on the stack, e.g. ``layers`` or ``h``.
        num_blocks: blocks in the whole model.
        block_class: the blocks' class name.
        norm_attr: the stack's final norm attribute.
        output_projections: stack attributes applied after the final norm, before the head.
        logit_transforms: ``(kind, value)`` applied to the head's logits, in order.
    """

    model_type: str
    stack_path: str
    layers_attr: str
    num_blocks: int
    block_class: str
    norm_attr: str
    output_projections: tuple[str, ...] = ()
    logit_transforms: tuple[tuple[str, float], ...] = field(default=())

    @property
    def layers_prefix(self) -> str:
        """Checkpoint key prefix of the blocks, e.g. ``model.layers.``."""
        return f"{self.stack_path}.{self.layers_attr}."

    def block_key(self, key: str) -> tuple[int, str] | None:
        """``(block index, rest of the key)`` for a block weight, ``None`` for any other key."""
        if not key.startswith(self.layers_prefix):
            return None
        index, rest = key[len(self.layers_prefix) :].split(".", 1)
        return int(index), rest

    def apply_logit_transforms(self, logits: torch.Tensor) -> torch.Tensor:
        """The declared transforms of the head's logits (soft-capping, scaling)."""
        for kind, value in self.logit_transforms:
            if kind == "softcap":
                logits = torch.tanh(logits / value) * value
            elif kind == "divide":
                logits = logits / value
            else:
                logits = logits * value
        return logits


def text_config(config):
    """The text part of a config (multimodal configs nest it), else the config itself."""
    get = getattr(config, "get_text_config", None)
    return get() if callable(get) else config


def empty_causal_lm(config) -> nn.Module:
    """The config's causal-LM class with parameters on the meta device (buffers stay real).

    Raises:
        UnsupportedArchitecture: ``transformers`` has no causal-LM class for this config.
    """
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    try:
        with init_empty_weights(include_buffers=False):
            return AutoModelForCausalLM.from_config(config)
    except (ValueError, KeyError) as exc:
        raise UnsupportedArchitecture(
            f"model type {config.model_type!r}: transformers has no causal-LM class for it ({exc})"
        ) from None


def _find_blocks(lm: nn.Module, n: int) -> tuple[str, str, nn.ModuleList]:
    """The shallowest ModuleList of ``n`` same-class modules: ``(stack path, attribute, list)``."""
    found = []
    for name, module in lm.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == n and n > 0:
            if len({type(m) for m in module}) == 1:
                found.append((name.count("."), name, module))
    if not found:
        raise UnsupportedArchitecture(
            f"model type {type(lm).__name__}: no list of {n} blocks (num_hidden_layers) found in its modules"
        )
    _, name, module = min(found, key=lambda f: f[:2])
    stack_path, _, attr = name.rpartition(".")
    if not stack_path:
        raise UnsupportedArchitecture(f"{type(lm).__name__}: the block list {name!r} is not inside a base model")
    return stack_path, attr, module


def detect_structure(config) -> Structure:
    """Map ``config``'s causal-LM class onto blocks, input side and output side.

    Raises:
        UnsupportedArchitecture: naming what could not be mapped (no causal-LM class, no block
            list, no final norm, no input embeddings, no LM head).
    """
    config = text_config(config)
    n = int(config.num_hidden_layers)
    lm = empty_causal_lm(config)
    stack_path, layers_attr, layers = _find_blocks(lm, n)
    stack = lm.get_submodule(stack_path)
    what = f"model type {config.model_type!r}"
    embeddings = lm.get_input_embeddings()
    if embeddings is None or not any(m is embeddings for m in stack.modules()):
        raise UnsupportedArchitecture(f"{what}: its token embeddings are not inside {stack_path!r}")
    if lm.get_output_embeddings() is None:
        raise UnsupportedArchitecture(f"{what}: no LM head (get_output_embeddings() is None)")
    # A stack may set its final norm to None (OPT with post-block norms): the output side then has none.
    norm_attr = next((a for a in FINAL_NORM_NAMES if a in stack._modules), None)
    if norm_attr is None:
        raise UnsupportedArchitecture(
            f"{what}: no final norm on {stack_path!r} under any of {', '.join(FINAL_NORM_NAMES)}"
        )
    projections = tuple(a for a in OUTPUT_PROJECTIONS if isinstance(getattr(stack, a, None), nn.Module))
    transforms = []
    for attr, kind in LOGIT_TRANSFORMS:
        value = getattr(config, attr, None)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value and float(value) != 1.0:
            transforms.append((kind, float(value)))
    return Structure(
        model_type=config.model_type,
        stack_path=stack_path,
        layers_attr=layers_attr,
        num_blocks=n,
        block_class=type(layers[0]).__name__,
        norm_attr=norm_attr,
        output_projections=projections,
        logit_transforms=tuple(transforms),
    )


def span_config(config, start: int, end: int):
    """A copy of ``config`` describing only blocks [start, end) (per-layer lists sliced too)."""
    cfg = copy.deepcopy(text_config(config))
    cfg.num_hidden_layers = end - start
    if getattr(cfg, "layer_types", None):
        cfg.layer_types = list(cfg.layer_types[start:end])
    return cfg


def renumber_blocks(blocks: nn.ModuleList, start: int) -> None:
    """Give the modules of blocks built at global indices ``start...`` local indices 0... (their cache slots)."""
    for module in blocks.modules():
        index = getattr(module, "layer_idx", None)
        if isinstance(index, int) and not isinstance(index, bool):
            module.layer_idx = index - start


def kv_heads_and_dim(config) -> tuple[int, int]:
    """Key/value heads per block and their size, for cache budgets (families name them differently)."""
    config = text_config(config)
    heads = int(config.num_attention_heads)
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    kv = getattr(config, "num_key_value_heads", None)
    if kv is None and getattr(config, "new_decoder_architecture", False):
        kv = getattr(config, "num_kv_heads", None)  # Falcon's grouped layout
    if kv is None and getattr(config, "multi_query", False):
        kv = 1
    return int(kv or heads), int(head_dim)
