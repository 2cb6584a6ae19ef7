"""The client's final norm and LM head as an ONNX graph run by ONNX Runtime (CPU, fp32)."""

from __future__ import annotations

import hashlib

import numpy as np
import torch

from swarmnode.models.cachefiles import save_onnx_once
from swarmnode.models.registry import layerswarm_home

OPSET = 17


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().to(torch.float32).cpu().numpy()


def build_head_graph(norm_weight: torch.Tensor, eps: float, lm_weight: torch.Tensor, lm_bias: torch.Tensor | None):
    """The client's final norm and LM head: ``hidden (B, T, H) -> logits (B, T, V)``."""
    from onnx import TensorProto, helper, numpy_helper

    hidden, vocab = lm_weight.shape[1], lm_weight.shape[0]
    inits = [
        numpy_helper.from_array(np.ascontiguousarray(_np(norm_weight)), "norm"),
        numpy_helper.from_array(np.ascontiguousarray(_np(lm_weight).T), "lm_head"),
    ]
    nodes = [
        helper.make_node("SimplifiedLayerNormalization", ["hidden", "norm"], ["x"], axis=-1, epsilon=float(eps)),
        helper.make_node("MatMul", ["x", "lm_head"], ["mm" if lm_bias is not None else "logits"]),
    ]
    if lm_bias is not None:
        inits.append(numpy_helper.from_array(_np(lm_bias), "lm_bias"))
        nodes.append(helper.make_node("Add", ["mm", "lm_bias"], ["logits"]))
    graph = helper.make_graph(
        nodes,
        "client_head",
        [helper.make_tensor_value_info("hidden", TensorProto.FLOAT, ["batch", "tokens", hidden])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "tokens", vocab])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 9
    return model


class OnnxHead:
    """The client's final norm and LM head in ONNX Runtime (CPU, fp32).

    The LM head reads ~113 MB of weights per token for the default model; PyTorch's CPU
    matrix-vector product measured ~3x slower than ONNX Runtime's here, and the head ran as
    long as a third of the whole model. Not bit-identical to PyTorch (different summation
    order), so clients use it only where exactness is not promised (see ``head_backend``).
    """

    def __init__(self, norm: torch.nn.Module, lm_head: torch.nn.Linear, threads: int | None = None) -> None:
        import onnxruntime as ort

        eps = float(getattr(norm, "variance_epsilon", getattr(norm, "eps", 1e-6)))
        h = hashlib.sha256(f"head1 {eps} {ort.__version__}".encode())
        for t in (norm.weight, lm_head.weight, lm_head.bias):
            if t is not None:
                h.update(t.detach().float().contiguous().cpu().numpy().tobytes())
        path = layerswarm_home() / "onnx" / f"head-{h.hexdigest()[:24]}.onnx"
        save_onnx_once(path, lambda: build_head_graph(norm.weight, eps, lm_head.weight, lm_head.bias))
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads or torch.get_num_threads()
        opts.inter_op_num_threads = 1
        opts.add_session_config_entry("session.intra_op.allow_spinning", "1")
        opts.add_session_config_entry("session.force_spinning_stop", "1")
        self.path = path
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])

    def __call__(self, hidden: torch.Tensor) -> torch.Tensor:  # (B, T, H) -> (B, T, V)
        """Logits of ``hidden``."""
        x = np.ascontiguousarray(hidden.detach().to("cpu", torch.float32).numpy())
        return torch.from_numpy(self.session.run(None, {"hidden": x})[0])
