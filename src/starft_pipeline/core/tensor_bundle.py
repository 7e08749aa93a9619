"""Named tensors plus string metadata, stored as safetensors (no pickle): teacher caches and weights.

:meth:`TensorBundle.load` maps the file instead of reading it: the tensors are views of a private
(copy-on-write) memory map, so pages are read when a row is touched and processes that load the
same file (torchrun ranks, every fine-tune of a run) share them in the page cache rather than each
holding a copy in anonymous memory. Writing to a loaded tensor never changes the file.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from starft_pipeline.core.io_utils import atomic_path


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
    def load(cls, path: str | os.PathLike[str]) -> TensorBundle:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path} does not exist; run the stage that writes it first")
        try:
            with safe_open(str(path), framework="pt") as handle:  # validates the header and the sizes
                header = handle.metadata() or {}
                keys = list(handle.keys())
            tensors = _mapped_tensors(path, keys)
        except (SafetensorError, OSError, ValueError) as error:
            raise DamagedFileError(
                f"{path} is damaged or not a safetensors file ({error}); delete it and rerun the stage that writes it"
            ) from error
        return cls(tensors=tensors, metadata={key: json.loads(value) for key, value in header.items()})


_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


def _mapped_tensors(path: Path, keys: list[str]) -> dict[str, torch.Tensor]:
    """The tensors of a (validated) safetensors file as views of one private memory map of it."""
    with path.open("rb") as file:
        header_size = int.from_bytes(file.read(8), "little")
        entries = json.loads(file.read(header_size))
    data_start = 8 + header_size
    mapped = torch.from_file(str(path), shared=False, size=path.stat().st_size, dtype=torch.uint8)
    tensors = {}
    for key in keys:
        entry = entries[key]
        start, stop = entry["data_offsets"]
        dtype = _DTYPES.get(entry["dtype"])
        if dtype is None:
            raise ValueError(f"tensor {key!r} has dtype {entry['dtype']}, which this project does not store")
        raw = mapped[data_start + start : data_start + stop]
        if stop == start:
            tensors[key] = torch.empty(entry["shape"], dtype=dtype)
        elif (data_start + start) % dtype.itemsize:  # safetensors aligns its writes; copy anything else
            tensors[key] = raw.clone().view(dtype).reshape(entry["shape"])
        else:
            tensors[key] = raw.view(dtype).reshape(entry["shape"])
    return tensors
