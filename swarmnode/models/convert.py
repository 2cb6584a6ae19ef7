"""Turn a GGUF file into a plain safetensors checkpoint directory, once.

transformers can read GGUF, but dequantizing and rebuilding the tokenizer takes tens of
seconds and needs the whole model in memory. Nodes want to load only their span, lazily,
so we convert once (with progress) into a directory that :class:`Checkpoint` reads per tensor.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path

import torch
from safetensors.torch import save_file


def convert_gguf(gguf_path: Path, out_dir: Path) -> Path:
    """Dequantize ``gguf_path`` to fp32 and write config, tokenizer and ``model.safetensors``.

    The directory is written under a temporary name and renamed at the end, so an interrupted
    conversion never leaves a half-written checkpoint behind.

    Returns:
        ``out_dir``, containing ``config.json``, tokenizer files and ``model.safetensors``.
    """

    gguf_path = Path(gguf_path)
    # Unique to this process: two nodes converting at once must not delete each other's work.
    tmp = out_dir.with_name(f"{out_dir.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.partial")
    tmp.mkdir(parents=True)
    try:
        return _convert_into(gguf_path, tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _convert_into(gguf_path: Path, tmp: Path, out_dir: Path) -> Path:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    print(f"converting {gguf_path.name} to a safetensors checkpoint (one time only)...", flush=True)
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(
        gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32, local_files_only=True
    )
    # A GGUF-loaded model refuses save_pretrained (it carries a 'quantized with gguf' marker);
    # the dequantized weights are ordinary fp32 tensors, so write them directly.
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = "float32"
    config.save_pretrained(tmp)
    model.generation_config.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    state = {}
    seen: set[int] = set()
    for name, tensor in model.state_dict().items():
        if tensor.data_ptr() in seen:  # tied weights are stored once
            continue
        seen.add(tensor.data_ptr())
        state[name] = tensor.detach().contiguous()
    save_file(state, tmp / "model.safetensors", metadata={"format": "pt"})
    (tmp / "layerswarm.json").write_text(json.dumps({"source": gguf_path.name}) + "\n")
    if (out_dir / "config.json").is_file() and (out_dir / "model.safetensors").is_file():
        return out_dir  # another process finished first: keep its copy, which may be in use
    shutil.rmtree(out_dir, ignore_errors=True)  # a half-made folder from before
    tmp.rename(out_dir)
    return out_dir
