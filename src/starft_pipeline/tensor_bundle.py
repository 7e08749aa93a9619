"""Named tensors plus string metadata, stored as safetensors (no pickle): teacher caches and weights."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .io_utils import atomic_path


class DamagedFileError(ValueError):
    """A cache or weights file that cannot be read (truncated, not safetensors)."""


@dataclass
class TensorBundle:
    tensors: dict[str, torch.Tensor]
    metadata: dict[str, Any] = field(default_factory=dict)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write atomically; metadata values are JSON-encoded into safetensors' string header."""
        tensors = {key: value.detach().cpu().contiguous() for key, value in self.tensors.items()}
        header = {key: json.dumps(value) for key, value in self.metadata.items()}
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata=header)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> "TensorBundle":
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path} does not exist; run the stage that writes it first")
        try:
            with safe_open(str(path), framework="pt") as handle:
                header = handle.metadata() or {}
                tensors = {key: handle.get_tensor(key) for key in handle.keys()}
        except (SafetensorError, OSError, ValueError) as error:
            raise DamagedFileError(
                f"{path} is damaged or not a safetensors file ({error}); delete it and rerun the stage that writes it"
            ) from error
        return cls(tensors=tensors, metadata={key: json.loads(value) for key, value in header.items()})
