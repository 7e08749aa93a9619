"""Kedro datasets for this project's artifacts (the only module besides pipelines/ that imports Kedro)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from kedro.io import AbstractDataset, DatasetError
from kedro_mlflow.io.metrics import MlflowMetricsHistoryDataset

from starft_pipeline.core.tensor_bundle import TensorBundle

if TYPE_CHECKING:
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

#: MLflow's limit on the metrics of one ``log_batch`` call.
MAX_METRICS_PER_BATCH = 1000


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


class OptionalJSONDataset(AbstractDataset[Any, Any]):
    """A JSON file, or ``{}`` while it does not exist (the shards stage's record before that stage
    first ran: a later stage run alone reads the original files, as without shards); written atomically."""

    def __init__(self, filepath: str, metadata: dict[str, Any] | None = None) -> None:
        self._filepath = Path(filepath)
        self.metadata = metadata

    def load(self) -> Any:
        return json.loads(self._filepath.read_text()) if self._filepath.is_file() else {}

    def save(self, data: Any) -> None:
        from starft_pipeline.core.io_utils import atomic_path

        with atomic_path(self._filepath) as tmp:
            tmp.write_text(json.dumps(data, indent=1))

    def _exists(self) -> bool:
        return self._filepath.is_file()

    def _describe(self) -> dict[str, Any]:
        return {"filepath": str(self._filepath)}


class FigureDataset(AbstractDataset[Any, Any]):
    """A matplotlib figure saved as an image file (format from the extension), written atomically.

    Stands in for kedro-datasets' ``matplotlib.MatplotlibDataset``, which imports ``matplotlib.pyplot``
    when the catalog is built: kedro-mlflow builds every catalog dataset at start-up, so each
    ``kedro`` command paid that import even when no figure was drawn. This class imports nothing: it
    only calls the figure's own ``savefig``. Wrapped in ``MlflowArtifactDataset``, the file is also
    logged to the run (the wrapper reads ``_filepath``).
    """

    def __init__(self, filepath: str, save_args: dict[str, Any] | None = None, metadata: dict[str, Any] | None = None):
        self._filepath = Path(filepath)
        self._save_args = {"format": self._filepath.suffix.lstrip(".") or "png", **(save_args or {})}
        self.metadata = metadata

    def load(self) -> Any:
        raise DatasetError(f"{self._filepath}: a figure file is written by the pipeline, not read back")

    def save(self, data: Any) -> None:
        from starft_pipeline.core.io_utils import atomic_path

        with atomic_path(self._filepath) as tmp:  # tmp's suffix is .tmp: the format is passed explicitly
            data.savefig(tmp, **self._save_args)

    def _exists(self) -> bool:
        return self._filepath.is_file()

    def _describe(self) -> dict[str, Any]:
        return {"filepath": str(self._filepath), "save_args": self._save_args}


def log_metrics_in_batches(
    client: MlflowClient, run_id: str, metrics: Iterable[Metric], tags: Mapping[str, str] | None = None
) -> int:
    """Log ``metrics`` (and ``tags``, with the first call) to the run, ``MAX_METRICS_PER_BATCH`` per call.

    One ``log_batch`` is one request (one transaction on a SQL store) where ``log_metric`` costs one
    per value: a 25,000-step curve of 5 terms is 125 calls instead of 125,000. Returns the calls made.
    """
    from mlflow.entities import RunTag

    entities, calls = list(metrics), 0
    for start in range(0, max(len(entities), 1), MAX_METRICS_PER_BATCH):
        batch_tags = [RunTag(key, value) for key, value in (tags or {}).items()] if start == 0 else []
        client.log_batch(run_id, metrics=entities[start : start + MAX_METRICS_PER_BATCH], tags=batch_tags)
        calls += 1
    return calls


class BatchedMlflowMetricsHistoryDataset(MlflowMetricsHistoryDataset):
    """kedro-mlflow's metrics history dataset (same data, same keys, same loading), saved with
    :func:`log_metrics_in_batches` instead of one ``log_metric`` call per value.

    Outside an active MLflow run (``run_id`` unset) nothing is logged, where kedro-mlflow's own would
    start a run of its own for the first value.
    """

    def _save(self, data: dict[str, Any]) -> None:
        from mlflow.entities import Metric
        from mlflow.tracking import MlflowClient

        if not self._logging_activated:
            return
        try:
            run_id = self.run_id
        except DatasetError:
            return
        now = int(time.time() * 1000)
        metrics = [
            Metric(key, float(value), now, int(step))
            for name, item in data.items()
            for key, value, step in self._build_args_list_from_metric_item(name, item)
        ]
        log_metrics_in_batches(MlflowClient(), run_id, metrics)


class _Unchanged:
    """The type of :data:`UNCHANGED`: one instance, kept by copies and pickling (MemoryDataset copies)."""

    def __repr__(self) -> str:
        return "UNCHANGED"

    def __copy__(self) -> _Unchanged:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> _Unchanged:
        return self

    def __reduce__(self) -> str:
        return "UNCHANGED"


#: A node's output that leaves its dataset as it was: a model this run does not evaluate
#: (``evaluation.models``) keeps its previous evaluation file and figure.
UNCHANGED = _Unchanged()


class UnlessUnchanged(AbstractDataset[Any, Any]):
    """Wraps a dataset (``dataset``: its catalog entry); saving :data:`UNCHANGED` writes nothing.

    Within the run, loading it back gives :data:`UNCHANGED` again (the nodes downstream skip it,
    never reading the previous run's file); otherwise loading reads the wrapped dataset.
    """

    def __init__(self, dataset: dict[str, Any], metadata: dict[str, Any] | None = None) -> None:
        self._dataset = AbstractDataset.from_config("wrapped", dataset)
        self._unchanged = False
        self.metadata = metadata

    @property
    def wrapped(self) -> AbstractDataset:
        return self._dataset

    def load(self) -> Any:
        return UNCHANGED if self._unchanged else self._dataset.load()

    def save(self, data: Any) -> None:
        self._unchanged = data is UNCHANGED
        if not self._unchanged:
            self._dataset.save(data)

    def _exists(self) -> bool:
        return self._dataset.exists()

    def _describe(self) -> dict[str, Any]:
        return {"dataset": str(self._dataset)}
