"""One ONNX Runtime session over a span's graph, and the two ways of feeding it.

The fused graph takes every layer's keys and values bound in place (an IO binding kept between
passes while the buffers stay the same); the portable graph takes the pasts as plain inputs
and returns the new keys and values.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


class SpanRunner:
    """Run a span's ONNX file on CPU.

    Args:
        path: the ONNX file.
        num_layers: layers in the span (the fused graph has one key and one value input per layer).
        threads: intra-op threads.
        spin: let worker threads spin between the ops of one run (they stop spinning when the
            run ends, so the next node on a shared machine, or the client's head, gets the cores).
    """

    def __init__(self, path: Path, num_layers: int, threads: int, spin: bool = True) -> None:
        import onnxruntime as ort

        self.num_layers = num_layers
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
        opts.add_session_config_entry("session.force_spinning_stop", "1")
        self._ort = ort
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])

    # -- the fused graph: buffers updated in place --------------------------------------------

    def kv_binding(self, k: np.ndarray, v: np.ndarray, slot: dict | None):
        """An IO binding with every layer's keys/values bound in place to ``k``/``v``; kept in ``slot``
        (a cache's or the batch buffers') and reused while the buffers stay the same."""
        ident = (k.ctypes.data, v.ctypes.data, k.shape)
        held = slot.get("io") if slot is not None else None
        if held is not None and held[0] == ident:
            return held[1]
        io = self.session.io_binding()
        ort_value = self._ort.OrtValue.ortvalue_from_numpy
        values = []  # the OrtValues reference the numpy buffers: kept alive with the binding
        for i in range(self.num_layers):
            kv, vv = ort_value(k[i]), ort_value(v[i])
            values += [kv, vv]
            io.bind_ortvalue_input(f"past_key_{i}", kv)
            io.bind_ortvalue_output(f"present_key_{i}", kv)
            io.bind_ortvalue_input(f"past_value_{i}", vv)
            io.bind_ortvalue_output(f"present_value_{i}", vv)
        if slot is not None:
            slot["io"] = (ident, io, values)
        return io

    def run_fused(
        self,
        x: np.ndarray,
        k: np.ndarray,
        v: np.ndarray,
        lengths: list[int],
        news: list[int] | None = None,
        slot: dict | None = None,
    ) -> np.ndarray:
        """Run ``x (B, T, H)`` with rows' pasts ``lengths``; new keys/values land in ``k``/``v`` in place.

        ``news``: each row's real new tokens when rows are right-padded to T (first prompts only).
        ``slot``: where the binding of ``k``/``v`` is kept between passes.
        """
        b, t, h = x.shape
        news = news or [t] * b
        if b > 1 and t > 1 and max(lengths) > 0:  # the kernel takes several new tokens after a past one row at a time
            return np.concatenate(
                [self.run_fused(x[r : r + 1], k[:, r : r + 1], v[:, r : r + 1], lengths[r : r + 1]) for r in range(b)]
            )
        io = self.kv_binding(k, v, slot)
        x = np.ascontiguousarray(x, np.float32)
        io.bind_cpu_input("hidden", x)
        io.bind_cpu_input("seqlens_k", np.array([p + m - 1 for p, m in zip(lengths, news, strict=True)], np.int32))
        io.bind_cpu_input("total_len", np.array(max(lengths) + t, np.int32))
        out = np.empty((b, t, h), np.float32)
        io.bind_output("out", "cpu", 0, np.float32, list(out.shape), out.ctypes.data)
        self.session.run_with_iobinding(io)
        return out

    # -- the portable graph: pasts concatenated -------------------------------------------------

    def run(self, x: np.ndarray, past_k, past_v, positions: np.ndarray, mask: np.ndarray):
        """Run ``x (B, T, H)`` after pasts ``(L, B, KV, P, D)``; returns ``(out, new_k, new_v)``."""
        out, new_k, new_v = self.session.run(
            None, {"hidden": x, "past_k": past_k, "past_v": past_v, "position_ids": positions, "attn_mask": mask}
        )
        return out, new_k, new_v
