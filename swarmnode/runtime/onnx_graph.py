"""A span written directly as an ONNX graph of ONNX Runtime's fused CPU kernels.

:class:`~swarmnode.runtime.graph.SpanGraph` exported through ``torch.onnx`` yields ~60 small
ops per block, concatenates the whole past into new tensors every step and leaves the cache
for Python to grow. This builder writes the same maths with the kernels ONNX Runtime's own
generators use for Llama-style models:

- ``SimplifiedLayerNormalization`` / ``SkipSimplifiedLayerNormalization`` (RMSNorm, fused with
  the residual add);
- one ``MatMul`` for q, k and v together and one for gate and up (fewer, larger products);
- ``GroupQueryAttention`` (com.microsoft) with rotary embedding inside, per-row sequence
  lengths (so sessions at different positions share a batch, right-padded) and a KV buffer
  that is read and written in place when input and output are bound to the same memory.

Inputs: ``hidden (B, T, H)``, ``seqlens_k (B,)`` int32 (each row's total length minus one),
``total_len ()`` int32 (the longest row's total length), ``past_key_<i>`` / ``past_value_<i>``
``(B, KV, S, D)`` per block. Outputs: ``out (B, T, H)``, ``present_key_<i>`` /
``present_value_<i>``. Architectures it cannot express raise
:class:`~swarmnode.runtime.graph.UnsupportedForGraph` (the torch export is used for those).
"""

from __future__ import annotations

import numpy as np
import torch

from swarmnode.models.span import SpanModel
from swarmnode.runtime.graph import UnsupportedForGraph, check_llama_layout

#: Bump when inputs, outputs or maths change: exported files are keyed by it.
FUSED_GRAPH_VERSION = 1
OPSET = 17
_ACTIVATIONS = ("silu", "swish")


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().to(torch.float32).cpu().numpy()


def rope_tables(span: SpanModel, positions: int) -> tuple[np.ndarray, np.ndarray]:
    """``cos`` and ``sin`` of every position ``(positions, D/2)``, attention scaling folded in."""
    rotary = span.inner.rotary_emb
    inv_freq = rotary.inv_freq.detach().float().cpu()
    scale = float(getattr(rotary, "attention_scaling", 1.0))
    freqs = torch.arange(positions, dtype=torch.float32)[:, None] * inv_freq[None, :]
    return (freqs.cos() * scale).numpy(), (freqs.sin() * scale).numpy()


def check_supported(span: SpanModel) -> None:
    """Raise :class:`UnsupportedForGraph` for what this builder does not express."""
    cfg = span.config
    if span.end == span.start:
        raise UnsupportedForGraph("empty span")
    check_llama_layout(span)
    attn = span.inner.layers[0].self_attn
    for name in ("q_norm", "k_norm"):
        if hasattr(attn, name):
            raise UnsupportedForGraph(f"{cfg.model_type} attention has {name}")
    if getattr(cfg, "sliding_window", None) and getattr(cfg, "use_sliding_window", True):
        raise UnsupportedForGraph("sliding-window attention")
    if getattr(cfg, "hidden_act", "silu") not in _ACTIVATIONS:
        raise UnsupportedForGraph(f"activation {cfg.hidden_act}")
    mlp = span.inner.layers[0].mlp
    if not all(hasattr(mlp, n) for n in ("gate_proj", "up_proj", "down_proj")):
        raise UnsupportedForGraph("MLP is not gate/up/down")
    rotary = span.inner.rotary_emb
    if getattr(rotary, "rope_type", "default") not in ("default", "linear", "dynamic", "llama3"):
        raise UnsupportedForGraph(f"rope type {rotary.rope_type}")
    head_dim = attn.head_dim
    if rotary.inv_freq.numel() * 2 != head_dim:
        raise UnsupportedForGraph("partial rotary embedding")
    for layer in span.inner.layers:
        norm = layer.input_layernorm
        if not type(norm).__name__.endswith("RMSNorm"):
            raise UnsupportedForGraph(f"norm {type(norm).__name__}")


def build_span_graph(span: SpanModel):
    """The span as an ``onnx.ModelProto`` (see the module docstring for its signature)."""
    from onnx import TensorProto, helper, numpy_helper

    check_supported(span)
    cfg = span.config
    layers = span.inner.layers
    nh, kv = cfg.num_attention_heads, cfg.num_key_value_heads
    attn0 = layers[0].self_attn
    d = attn0.head_dim
    hidden = cfg.hidden_size
    eps = float(getattr(cfg, "rms_norm_eps", 1e-6))
    max_pos = int(getattr(cfg, "max_position_embeddings", 4096))
    cos, sin = rope_tables(span, max_pos)

    inits: list = []
    nodes: list = []

    def init(name: str, array: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def node(op: str, inputs: list[str], outputs: list[str], domain: str = "", **attrs):
        nodes.append(helper.make_node(op, inputs, outputs, name=f"{op}_{len(nodes)}", domain=domain, **attrs))
        return outputs

    init("cos_cache", cos)
    init("sin_cache", sin)
    inputs = [
        helper.make_tensor_value_info("hidden", TensorProto.FLOAT, ["batch", "tokens", hidden]),
        helper.make_tensor_value_info("seqlens_k", TensorProto.INT32, ["batch"]),
        helper.make_tensor_value_info("total_len", TensorProto.INT32, []),
    ]
    outputs = [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["batch", "tokens", hidden])]
    residual = "hidden"
    pending = None  # the previous block's MLP output, not yet added to the residual
    for i, layer in enumerate(layers):
        a, m = layer.self_attn, layer.mlp
        for kind in ("key", "value"):
            past, present = f"past_{kind}_{i}", f"present_{kind}_{i}"
            inputs.append(helper.make_tensor_value_info(past, TensorProto.FLOAT, ["batch", kv, "past", d]))
            outputs.append(helper.make_tensor_value_info(present, TensorProto.FLOAT, ["batch", kv, "present", d]))
        w_in = init(f"l{i}.in_norm", _np(layer.input_layernorm.weight))
        if pending is None:
            (x,) = node("SimplifiedLayerNormalization", [residual, w_in], [f"l{i}.x"], axis=-1, epsilon=eps)
        else:
            x, _, _, residual = node(
                "SkipSimplifiedLayerNormalization",
                [pending, residual, w_in],
                [f"l{i}.x", "", "", f"l{i}.res_in"],
                domain="com.microsoft",
                epsilon=eps,
            )
        w_qkv = torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight], dim=0)
        (qkv,) = node("MatMul", [x, init(f"l{i}.qkv", _np(w_qkv).T)], [f"l{i}.qkv_mm"])
        if a.q_proj.bias is not None:
            b_qkv = torch.cat([a.q_proj.bias, a.k_proj.bias, a.v_proj.bias])
            (qkv,) = node("Add", [qkv, init(f"l{i}.qkv_b", _np(b_qkv))], [f"l{i}.qkv_add"])
        ctx, _, _ = node(
            "GroupQueryAttention",
            [qkv, "", "", f"past_key_{i}", f"past_value_{i}", "seqlens_k", "total_len", "cos_cache", "sin_cache"],
            [f"l{i}.ctx", f"present_key_{i}", f"present_value_{i}"],
            domain="com.microsoft",
            num_heads=nh,
            kv_num_heads=kv,
            scale=float(a.scaling),
            do_rotary=1,
            rotary_interleaved=0,
        )
        (o,) = node("MatMul", [ctx, init(f"l{i}.o", _np(a.o_proj.weight).T)], [f"l{i}.o_mm"])
        if a.o_proj.bias is not None:
            (o,) = node("Add", [o, init(f"l{i}.o_b", _np(a.o_proj.bias))], [f"l{i}.o_add"])
        x2, _, _, residual = node(
            "SkipSimplifiedLayerNormalization",
            [o, residual, init(f"l{i}.post_norm", _np(layer.post_attention_layernorm.weight))],
            [f"l{i}.x2", "", "", f"l{i}.res_mid"],
            domain="com.microsoft",
            epsilon=eps,
        )
        inter = m.gate_proj.weight.shape[0]
        w_gu = torch.cat([m.gate_proj.weight, m.up_proj.weight], dim=0)
        (gu,) = node("MatMul", [x2, init(f"l{i}.gu", _np(w_gu).T)], [f"l{i}.gu_mm"])
        if m.gate_proj.bias is not None:
            b_gu = torch.cat([m.gate_proj.bias, m.up_proj.bias])
            (gu,) = node("Add", [gu, init(f"l{i}.gu_b", _np(b_gu))], [f"l{i}.gu_add"])
        gate, up = node(
            "Split", [gu, init(f"l{i}.split", np.array([inter, inter], np.int64))], [f"l{i}.gate", f"l{i}.up"], axis=-1
        )
        (sig,) = node("Sigmoid", [gate], [f"l{i}.sig"])
        (act,) = node("Mul", [gate, sig], [f"l{i}.silu"])
        (act,) = node("Mul", [act, up], [f"l{i}.act"])
        (down,) = node("MatMul", [act, init(f"l{i}.down", _np(m.down_proj.weight).T)], [f"l{i}.down_mm"])
        if m.down_proj.bias is not None:
            (down,) = node("Add", [down, init(f"l{i}.down_b", _np(m.down_proj.bias))], [f"l{i}.down_add"])
        pending = down
    node("Add", [pending, residual], ["out"])
    graph = helper.make_graph(nodes, f"span_{span.start}_{span.end}", inputs, outputs, inits)
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid("com.microsoft", 1)]
    )
    model.ir_version = 9
    return model
