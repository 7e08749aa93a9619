"""Kedro datasets for this project's artifacts (the only module besides pipelines/ that imports Kedro)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kedro.io import AbstractDataset

from .tensor_bundle import TensorBundle


class TensorBundleDataset(AbstractDataset[TensorBundle, TensorBundle]):
    """Named tensors plus JSON metadata in one safetensors file, written atomically (no pickle)."""

    def __init__(self, filepath: str, metadata: dict[str, Any] | None = None) -> None:
        self._filepath = Path(filepath)
        self.metadata = metadata

    def load(self) -> TensorBundle:
        return TensorBundle.load(self._filepath)

    def save(self, data: TensorBundle) -> None:
        data.save(self._filepath)

    def _exists(self) -> bool:
        return self._filepath.is_file()

    def _describe(self) -> dict[str, Any]:
        return {"filepath": str(self._filepath)}
