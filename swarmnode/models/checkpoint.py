"""A safetensors checkpoint directory read tensor by tensor, so a node loads only its span."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open


class Checkpoint:
    """A Hugging Face-style checkpoint directory: ``config.json``, tokenizer, ``*.safetensors``.

    Args:
        path: the directory.

    Raises:
        FileNotFoundError: no config or no safetensors files in ``path``.
    """

    def __init__(self, path: str | Path) -> None:
        from transformers import AutoConfig

        self.path = Path(path)
        if not (self.path / "config.json").is_file():
            raise FileNotFoundError(f"{self.path} has no config.json")
        self.config = AutoConfig.from_pretrained(self.path, local_files_only=True)
        self._files: dict[str, Path] = {}
        index = self.path / "model.safetensors.index.json"
        if index.is_file():
            weight_map = json.loads(index.read_text())["weight_map"]
            self._files = {key: self.path / name for key, name in weight_map.items()}
        else:
            for file in sorted(self.path.glob("*.safetensors")):
                with safe_open(file, framework="pt") as f:
                    self._files.update({key: file for key in f.keys()})
        if not self._files:
            raise FileNotFoundError(f"{self.path} has no *.safetensors weights")

    @property
    def num_blocks(self) -> int:
        """Number of transformer blocks (decoder layers)."""
        return int(self.config.num_hidden_layers)

    @property
    def hidden_size(self) -> int:
        """Width of the hidden states that travel between spans."""
        return int(self.config.hidden_size)

    def keys(self) -> list[str]:
        """All tensor names in the checkpoint."""
        return list(self._files)

    def load(self, keys: list[str], dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
        """Read only ``keys`` from disk (each file opened once, memory-mapped)."""
        by_file: dict[Path, list[str]] = {}
        for key in keys:
            by_file.setdefault(self._files[key], []).append(key)
        out: dict[str, torch.Tensor] = {}
        for file, file_keys in by_file.items():
            with safe_open(file, framework="pt") as f:
                for key in file_keys:
                    tensor = f.get_tensor(key)
                    out[key] = tensor.to(dtype) if dtype is not None and tensor.is_floating_point() else tensor
        return out

    def tokenizer(self):
        """The checkpoint's tokenizer (local files only)."""
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(self.path, local_files_only=True)
