"""Kedro datasets for this project's artifacts (the only module besides pipelines/ that imports Kedro)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from kedro.io import AbstractDataset

from starft_pipeline.core.tensor_bundle import TensorBundle


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


class LazyTensorBundle(TensorBundle):
    """A bundle file that is read on first use of ``tensors`` or ``metadata``, and may be missing.

    What a node that takes several optional weights files gets (the evaluation stage: only the
    methods in ``evaluation.models`` must exist): ``exists()`` asks without reading.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._bundle: TensorBundle | None = None

    def exists(self) -> bool:
        return self._bundle is not None or self.path.is_file()

    def _read(self) -> TensorBundle:
        if self._bundle is None:
            self._bundle = TensorBundle.load(self.path)
        return self._bundle

    # Properties standing in for TensorBundle's fields, so settable as those are (on the bundle read).
    @property
    def tensors(self) -> dict[str, torch.Tensor]:
        return self._read().tensors

    @tensors.setter
    def tensors(self, value: dict[str, torch.Tensor]) -> None:
        self._read().tensors = value

    @property
    def metadata(self) -> dict[str, Any]:
        return self._read().metadata

    @metadata.setter
    def metadata(self, value: dict[str, Any]) -> None:
        self._read().metadata = value

    def __repr__(self) -> str:
        return f"LazyTensorBundle({str(self.path)!r})"


class LazyTensorBundleDataset(TensorBundleDataset):
    """A :class:`TensorBundleDataset` whose ``load`` returns a :class:`LazyTensorBundle`: nothing is
    read until a node uses it, and a missing file is only an error then."""

    def load(self) -> TensorBundle:
        return LazyTensorBundle(self._filepath)


class OptionalCSVDataset(AbstractDataset[Any, Any]):
    """A CSV file read as a DataFrame, or an empty DataFrame while it does not exist (a method not
    trained yet); written atomically."""

    def __init__(self, filepath: str, metadata: dict[str, Any] | None = None) -> None:
        self._filepath = Path(filepath)
        self.metadata = metadata

    def load(self) -> Any:
        import pandas as pd

        return pd.read_csv(self._filepath) if self._filepath.is_file() else pd.DataFrame()

    def save(self, data: Any) -> None:
        from starft_pipeline.core.io_utils import atomic_path

        with atomic_path(self._filepath) as tmp:
            data.to_csv(tmp, index=False)

    def _exists(self) -> bool:
        return self._filepath.is_file()

    def _describe(self) -> dict[str, Any]:
        return {"filepath": str(self._filepath)}
