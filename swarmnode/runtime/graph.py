"""A span as a plain tensor function, for export to ONNX and for batched decoding.

The ``transformers`` modules keep their cache in Python objects, which an exporter cannot
follow. :class:`SpanGraph` reuses the span's own layer modules (norms, projections, MLP) but
takes the cache as explicit tensors and an additive attention mask, so sessions at different
positions can share one batch (spec: padding keys are masked out).
"""

from __future__ import annotations

import torch
from torch import nn

from swarmnode.models.span import SpanModel

#: Bump when the graph's inputs, outputs or maths change: exported files are keyed by it.
GRAPH_VERSION = 1


class UnsupportedForGraph(NotImplementedError):
    """The span's architecture has parts :class:`SpanGraph` does not express (e.g. q/k norms)."""


_BLOCK_PARTS = {"self_attn", "mlp", "input_layernorm", "post_attention_layernorm"}
_ATTN_PARTS = {"q_proj", "k_proj", "v_proj", "o_proj"}


def check_llama_layout(span: SpanModel) -> None:
    """Raise :class:`UnsupportedForGraph` unless every block is the pre-norm Llama layout this graph writes
    (input norm, attention of q/k/v/o projections with rotary tables, post-attention norm, MLP)."""
    kind = span.config.model_type
    blocks = getattr(span.inner, "layers", None)
    if blocks is None or not hasattr(span.inner, "rotary_emb"):
        raise UnsupportedForGraph(f"{kind}: no 'layers' block list with a 'rotary_emb' table")
    for block in blocks:
        parts = {n for n, _ in block.named_children()}
        if parts != _BLOCK_PARTS:
            raise UnsupportedForGraph(f"{kind} blocks are not the Llama layout: {sorted(parts ^ _BLOCK_PARTS)}")
        mlp = {n for n, _ in block.mlp.named_children()}
        if not {"gate_proj", "up_proj", "down_proj"} <= mlp:
            raise UnsupportedForGraph(f"{kind} MLP is not gate/up/down projections (e.g. mixture of experts)")
        attn = {n for n, _ in block.self_attn.named_children()}
        if not _ATTN_PARTS <= attn:
            raise UnsupportedForGraph(f"{kind} attention lacks {sorted(_ATTN_PARTS - attn)}")


class SpanGraph(nn.Module):
    """``(hidden, past_k, past_v, position_ids, attn_mask) -> (hidden, new_k, new_v)``.

    Shapes: hidden ``(B, T, H)``; past_k/past_v ``(L, B, KV, P, D)``; position_ids ``(B, T)``
    int64; attn_mask ``(B, 1, T, P + T)`` additive float (0 or a large negative); new_k/new_v
    ``(L, B, KV, T, D)`` hold only the T new positions.
    """

    def __init__(self, span: SpanModel) -> None:
        super().__init__()
        inner = span.inner
        cfg = span.config
        check_llama_layout(span)
        self.layers = inner.layers
        attn = self.layers[0].self_attn
        for name in ("q_norm", "k_norm"):
            if hasattr(attn, name):
                raise UnsupportedForGraph(f"{cfg.model_type} attention has {name}")
        if getattr(cfg, "sliding_window", None) and getattr(cfg, "use_sliding_window", True):
            raise UnsupportedForGraph("sliding-window attention")
        self.num_heads = cfg.num_attention_heads
        self.num_kv = cfg.num_key_value_heads
        self.head_dim = attn.head_dim
        self.scaling = attn.scaling
        self.register_buffer("inv_freq", inner.rotary_emb.inv_freq.detach().clone().float(), persistent=False)
        self.rope_scaling = float(getattr(inner.rotary_emb, "attention_scaling", 1.0))

    def rope(self, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = position_ids[:, :, None].float() * self.inv_freq[None, None, :]  # (B, T, D/2)
        emb = torch.cat([freqs, freqs], dim=-1)  # (B, T, D)
        return (emb.cos() * self.rope_scaling)[:, None], (emb.sin() * self.rope_scaling)[:, None]  # (B, 1, T, D)

    @staticmethod
    def _rotate_half(x: torch.Tensor) -> torch.Tensor:
        half = x.shape[-1] // 2
        return torch.cat([-x[..., half:], x[..., :half]], dim=-1)

    def forward(self, hidden, past_k, past_v, position_ids, attn_mask):
        b, t, _ = hidden.shape
        cos, sin = self.rope(position_ids)
        dtype = hidden.dtype
        cos, sin = cos.to(dtype), sin.to(dtype)
        rep = self.num_heads // self.num_kv
        new_k, new_v = [], []
        for i, layer in enumerate(self.layers):
            attn = layer.self_attn
            x = layer.input_layernorm(hidden)
            q = attn.q_proj(x).view(b, t, self.num_heads, self.head_dim).transpose(1, 2)  # (B, NH, T, D)
            k = attn.k_proj(x).view(b, t, self.num_kv, self.head_dim).transpose(1, 2)  # (B, KV, T, D)
            v = attn.v_proj(x).view(b, t, self.num_kv, self.head_dim).transpose(1, 2)
            q = q * cos + self._rotate_half(q) * sin
            k = k * cos + self._rotate_half(k) * sin
            new_k.append(k)
            new_v.append(v)
            keys = torch.cat([past_k[i], k], dim=2)  # (B, KV, P+T, D)
            values = torch.cat([past_v[i], v], dim=2)
            q = q.reshape(b, self.num_kv, rep * t, self.head_dim)  # group query heads by KV head
            scores = torch.matmul(q, keys.transpose(2, 3)) * self.scaling  # (B, KV, rep*T, P+T)
            scores = scores.view(b, self.num_kv, rep, t, -1) + attn_mask[:, :, None]
            probs = torch.softmax(scores.float(), dim=-1).to(dtype).view(b, self.num_kv, rep * t, -1)
            out = torch.matmul(probs, values)  # (B, KV, rep*T, D)
            out = out.view(b, self.num_heads, t, self.head_dim).transpose(1, 2).reshape(b, t, -1)
            hidden = hidden + attn.o_proj(out)
            hidden = hidden + layer.mlp(layer.post_attention_layernorm(hidden))
        return hidden, torch.stack(new_k), torch.stack(new_v)


def causal_mask(past_lengths: list[int], padded_past: int, new_tokens: int, dtype=torch.float32) -> torch.Tensor:
    """Additive mask ``(B, 1, T, P + T)``: each row sees its own past and new tokens up to itself."""
    neg = torch.finfo(dtype).min
    b = len(past_lengths)
    mask = torch.full((b, 1, new_tokens, padded_past + new_tokens), neg, dtype=dtype)
    tri = torch.triu(torch.full((new_tokens, new_tokens), neg, dtype=dtype), diagonal=1)
    for row, p in enumerate(past_lengths):
        mask[row, 0, :, :p] = 0
        mask[row, 0, :, padded_past:] = tri
    return mask
