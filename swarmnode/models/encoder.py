"""Encoder-only (BERT-style) models: spans of bidirectional blocks without a cache, and the client's pooling.

Detected, not declared. A config is **encoder-only** when its ``transformers`` base model (``AutoModel``,
built on the meta device) has a list of ``num_hidden_layers`` blocks whose attention modules say they are
not causal (``is_causal`` False: BERT, RoBERTa, MiniLM, ...). Then:

- the **input side** is what the base model does before its first block: token, position and token-type
  embeddings, the embedding LayerNorm. The client runs it (its own forward, stopped at the first block);
- the **blocks** run on nodes, all positions at once, each position attending to every other one that the
  attention mask keeps (padding is masked out), through the node's cache-less ``forward`` (spec §4.4);
  there is no KV cache and no session;
- the **output side** is the base model's final norm where it has one (BERT has none), then pooling on
  the client: mean over the real tokens (or the first token) and L2 normalisation, as sentence-transformers
  does (:class:`Pooling`, read from the checkpoint's ``1_Pooling/config.json`` and ``modules.json``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from swarmnode.models.checkpoint import Checkpoint
from swarmnode.models.span import SpanModel, _Entry, _Reached
from swarmnode.models.structure import FINAL_NORM_NAMES, UnsupportedArchitecture, span_config, text_config
from swarmnode.protocol.errors import ProtocolError

__all__ = [
    "EncoderHead",
    "EncoderSpan",
    "EncoderStructure",
    "Pooling",
    "encoder_structure",
    "is_encoder_only",
    "load_encoder_head",
    "load_encoder_span",
]


@dataclass(frozen=True)
class EncoderStructure:
    """Where an encoder-only base model keeps its parts (module paths from the base model).

    Attributes:
        model_type: ``config.model_type``.
        blocks_path: the block list, e.g. ``encoder.layer``.
        num_blocks: blocks in the whole model.
        block_class: the blocks' class name.
        norm_attr: the base model's final norm (``""``: none, as in BERT).
        embeddings_path: the token embedding table, e.g. ``embeddings.word_embeddings``.
    """

    model_type: str
    blocks_path: str
    num_blocks: int
    block_class: str
    norm_attr: str
    embeddings_path: str


_ENCODERS: dict[str, EncoderStructure | None] = {}


def _empty_base(config) -> nn.Module:
    """The config's base model (``AutoModel``) with parameters on the meta device (buffers stay real)."""
    from accelerate import init_empty_weights
    from transformers import AutoModel

    with init_empty_weights(include_buffers=False):
        return AutoModel.from_config(config)


def _block_list(base: nn.Module, n: int) -> tuple[str, nn.ModuleList] | None:
    """The shallowest ``nn.ModuleList`` of ``n`` modules of one class: ``(path, list)``."""
    found = [
        (name.count("."), name, module)
        for name, module in base.named_modules()
        if isinstance(module, nn.ModuleList) and len(module) == n > 0 and len({type(m) for m in module}) == 1
    ]
    if not found:
        return None
    _, name, module = min(found, key=lambda f: f[:2])
    return name, module


def encoder_structure(config) -> EncoderStructure | None:
    """The :class:`EncoderStructure` of ``config`` if it is an encoder-only model, else ``None`` (cached).

    Raises:
        UnsupportedArchitecture: an encoder whose token embeddings are not inside its base model.
    """
    config = text_config(config)
    key = config.to_json_string(use_diff=False)
    if key in _ENCODERS:
        return _ENCODERS[key]
    try:
        base = _empty_base(config)
    except Exception:  # no base-model class for this config (or one that cannot be built empty): no encoder
        base = None
    found = _block_list(base, int(getattr(config, "num_hidden_layers", 0) or 0)) if base is not None else None
    flags = []
    if found is not None:
        flags = [m.is_causal for m in found[1][0].modules() if isinstance(getattr(m, "is_causal", None), bool)]
    if not flags or any(flags):  # no blocks, or causal attention (or none that says): not an encoder
        _ENCODERS[key] = None
        return None
    path, blocks = found
    embeddings = base.get_input_embeddings()
    where = next((n for n, m in base.named_modules() if m is embeddings), None)
    if not where:
        raise UnsupportedArchitecture(
            f"model type {config.model_type!r}: its token embeddings are not in its base model"
        )
    _ENCODERS[key] = EncoderStructure(
        model_type=config.model_type,
        blocks_path=path,
        num_blocks=len(blocks),
        block_class=type(blocks[0]).__name__,
        norm_attr=next((a for a in FINAL_NORM_NAMES if isinstance(base._modules.get(a), nn.Module)), ""),
        embeddings_path=where,
    )
    return _ENCODERS[key]


def is_encoder_only(config) -> bool:
    """Whether ``config`` describes an encoder-only (bidirectional, cache-less) model."""
    return encoder_structure(config) is not None


def _set_module(root: nn.Module, path: str, module: nn.Module | None) -> None:
    parent, _, attr = path.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, attr, module)


def _key_prefix(checkpoint: Checkpoint, base: nn.Module) -> str:
    """``bert.`` where the checkpoint was saved from a model with a head (``BertForMaskedLM``), else ``""``."""
    children = tuple(f"{n}." for n, _ in base.named_children())
    keys = checkpoint.keys()
    if any(k.startswith(children) for k in keys):
        return ""
    prefix = f"{getattr(base, 'base_model_prefix', '')}."
    return prefix if prefix != "." and any(k.startswith(prefix) for k in keys) else ""


def _load_base(
    checkpoint: Checkpoint, structure: EncoderStructure, wanted, dtype: torch.dtype
) -> tuple[nn.Module, nn.ModuleList]:
    """The base model on the meta device with the weights ``wanted(name, block_index_or_None)`` selects loaded."""
    base = _empty_base(text_config(checkpoint.config))
    blocks = base.get_submodule(structure.blocks_path)
    prefix = _key_prefix(checkpoint, base)
    block_prefix = structure.blocks_path + "."
    keys = {}
    for key in checkpoint.keys():
        if not key.startswith(prefix):
            continue
        name = key[len(prefix) :]
        index = int(name[len(block_prefix) :].split(".", 1)[0]) if name.startswith(block_prefix) else None
        if wanted(name, index):
            keys[key] = name
    state = {keys[k]: v for k, v in checkpoint.load(list(keys), dtype=dtype).items()}
    base.load_state_dict(state, strict=False, assign=True)
    return base, blocks


def _drop_unloaded(base: nn.Module, structure: EncoderStructure, what: str) -> None:
    """Remove top-level parts never reached (a pooler the checkpoint lacks); refuse missing weights elsewhere."""
    top_blocks = structure.blocks_path.split(".", 1)[0]
    for name, child in list(base.named_children()):
        if name != top_blocks and name != structure.embeddings_path.split(".", 1)[0]:
            if any(p.is_meta for p in child.parameters()) and name != structure.norm_attr:
                setattr(base, name, None)  # after the last block: the forward stops before it
    missing = [n for n, p in base.named_parameters() if p.is_meta]
    if missing:
        raise ValueError(f"checkpoint lacks weights for {what}: {missing[:5]}")


class EncoderSpan(SpanModel):
    """Blocks [start, end) of an encoder. ``forward(hidden, attention_mask=None)`` maps ``(B, T, H) -> (B, T, H)``.

    All positions go through at once; ``attention_mask`` ``(B, T)`` (1: a token, 0: padding) keeps padding
    out of every other position's attention. There is no cache: :meth:`new_cache` refuses (no sessions).
    """

    cache_less = True

    @property
    def layers(self) -> nn.ModuleList:
        """This span's blocks."""
        return self.inner.get_submodule(self.structure.blocks_path)

    def new_cache(self):
        """Refused: an encoder keeps no cache, so a node of one opens no sessions (spec §4.4)."""
        raise ProtocolError(
            "encoder_only", "this node serves an encoder-only model: it keeps no sessions; send 'forward'"
        )

    @torch.inference_mode()
    def forward(  # (B, T, H) -> (B, T, H)
        self, hidden: torch.Tensor, cache=None, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        if cache is not None:
            raise ValueError("an encoder span keeps no cache")
        b, t, _ = hidden.shape
        # The base model's input side runs on a stand-in (it makes the mask from its shape and the given
        # attention mask); the first block gets the real hidden states.
        stand_in = hidden if self._embed_dim == hidden.shape[-1] else hidden.new_zeros(b, t, self._embed_dim)
        self._local.incoming = hidden
        try:
            self.inner(inputs_embeds=stand_in, attention_mask=attention_mask)
        except _Reached as reached:
            return reached.hidden
        finally:
            self._local.incoming = None
        raise RuntimeError(f"{type(self.inner).__name__}.forward returned without running its last block")


def load_encoder_span(
    checkpoint: Checkpoint, start: int, end: int, dtype: torch.dtype = torch.float32, device: str = "cpu"
) -> EncoderSpan:
    """Load blocks [start, end) of an encoder (and its small input-side weights, not the token embeddings).

    Raises:
        ValueError: the range is outside the model, or the checkpoint lacks weights.
        UnsupportedArchitecture: the config is no encoder-only model.
    """
    structure = encoder_structure(checkpoint.config)
    if structure is None:
        raise UnsupportedArchitecture(f"model type {checkpoint.config.model_type!r} is not an encoder-only model")
    if not 0 <= start < end <= structure.num_blocks:
        raise ValueError(f"blocks {start}:{end} are outside the model's 0:{structure.num_blocks}")
    table = structure.embeddings_path + "."
    base, blocks = _load_base(
        checkpoint,
        structure,
        lambda name, i: (start <= i < end) if i is not None else not name.startswith(table),
        dtype,
    )
    embed_dim = base.get_input_embeddings().embedding_dim
    _set_module(base, structure.blocks_path, nn.ModuleList(list(blocks)[start:end]))
    _set_module(base, structure.embeddings_path, None)  # spans receive hidden states, never token ids
    if structure.norm_attr:
        setattr(base, structure.norm_attr, nn.Identity())  # never reached: the last block's hook stops the forward
    _drop_unloaded(base, structure, f"blocks {start}:{end}")
    base._span_embed_dim = embed_dim
    base.to(device=device, dtype=dtype)
    base.eval()
    return EncoderSpan(base, span_config(checkpoint.config, start, end), start, end, structure)


@dataclass(frozen=True)
class Pooling:
    """How token states become one sentence embedding (sentence-transformers' ``Pooling`` + ``Normalize``).

    Attributes:
        mode: ``mean`` (over the real tokens) or ``cls`` (the first token).
        normalize: L2-normalise the result.
        max_tokens: longest input in tokens, special tokens included (longer inputs are refused).
    """

    mode: str = "mean"
    normalize: bool = True
    max_tokens: int = 512

    @classmethod
    def of(cls, path: Path, config) -> Pooling:
        """Read a sentence-transformers checkpoint's pooling (defaults: mean, normalised, the model's positions)."""
        max_tokens = int(getattr(config, "max_position_embeddings", 512) or 512)
        mode, normalize = "mean", True
        try:
            st = json.loads((path / "sentence_bert_config.json").read_text())
            max_tokens = min(max_tokens, int(st.get("max_seq_length") or max_tokens))
        except (OSError, ValueError, TypeError):
            pass
        try:
            pool = json.loads((path / "1_Pooling" / "config.json").read_text())
            mode = "cls" if pool.get("pooling_mode_cls_token") else "mean"
            if pool.get("pooling_mode_max_tokens") or pool.get("pooling_mode_mean_sqrt_len_tokens"):
                raise UnsupportedArchitecture(f"{path}: only mean or CLS pooling is supported")
            modules = json.loads((path / "modules.json").read_text())
            normalize = any(str(m.get("type", "")).endswith("Normalize") for m in modules)
        except (OSError, ValueError, AttributeError):
            pass
        return cls(mode, normalize, max_tokens)

    def __call__(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:  # (B, T, H) -> (B, H)
        """One vector per row."""
        if self.mode == "cls":
            out = hidden[:, 0]
        else:
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
            out = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
        return nn.functional.normalize(out, p=2, dim=1) if self.normalize else out


class EncoderHead(nn.Module):
    """The client-side parts of an encoder: its input side (no blocks), final norm (if any) and pooling.

    ``embed(ids, mask)`` runs the base model's forward up to its first block, so the position and
    token-type embeddings and the embedding norm are the model's own.
    """

    def __init__(self, base: nn.Module, structure: EncoderStructure, pooling: Pooling) -> None:
        super().__init__()
        self.base = base
        self.structure = structure
        self.pooling = pooling
        self.norm = getattr(base, structure.norm_attr) if structure.norm_attr else nn.Identity()
        self.hidden_size = int(base.config.hidden_size)

    @torch.inference_mode()
    def embed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:  # (B, T) -> (B, T, H)
        """What the first block receives for ``input_ids``."""
        try:
            self.base(input_ids=input_ids, attention_mask=attention_mask)
        except _Reached as reached:
            return reached.hidden
        raise RuntimeError(f"{type(self.base).__name__}.forward returned without reaching its first block")

    @torch.inference_mode()
    def pool(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:  # (B, T, H) -> (B, H)
        """Final norm (if the model has one), then pooling and normalisation."""
        return self.pooling(self.norm(hidden), attention_mask)


def load_encoder_head(checkpoint: Checkpoint, dtype: torch.dtype = torch.float32, device: str = "cpu") -> EncoderHead:
    """Load the client-side parts of an encoder: every weight outside the blocks.

    Raises:
        UnsupportedArchitecture: the config is no encoder-only model.
        ValueError: the checkpoint lacks weights.
    """
    structure = encoder_structure(checkpoint.config)
    if structure is None:
        raise UnsupportedArchitecture(f"model type {checkpoint.config.model_type!r} is not an encoder-only model")
    base, blocks = _load_base(checkpoint, structure, lambda name, i: i is None, dtype)
    _set_module(base, structure.blocks_path, nn.ModuleList([_Entry(blocks[0])]))
    _drop_unloaded(base, structure, "the client's parts")
    base.to(device=device, dtype=dtype)
    base.eval()
    return EncoderHead(base, structure, Pooling.of(checkpoint.path, checkpoint.config))
