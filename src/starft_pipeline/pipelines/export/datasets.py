"""The exported model's MLflow dataset (beside its pipeline: it imports mlflow, which plain datasets need not)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from kedro.io import DatasetError
from kedro_mlflow.io.models import MlflowModelTrackingDataset

from starft_pipeline.models.export import pyfunc_arguments


class PyfuncClassifierDataset(MlflowModelTrackingDataset):
    """kedro-mlflow's model dataset for the exported image classifier (``starft_pipeline.models.clip_pyfunc``).

    ``save_args.artifacts`` names the exported ``checkpoint`` and ``classifier`` files; the node saves
    the example images (encoded bytes), and this logs the pyfunc model to the run with its signature
    (class names from the classifier file), input example and requirements. Loading returns the
    last logged model (``mlflow.pyfunc.load_model``).
    """

    def _save(self, example_images: list[bytes]) -> None:
        base: dict[str, Any] = dict(self._save_args)  # type: ignore[has-type]  # kedro-mlflow's attribute
        artifacts = base.pop("artifacts", None) or {}
        if not {"checkpoint", "classifier"} <= set(artifacts):
            raise DatasetError(
                "PyfuncClassifierDataset needs save_args.artifacts.checkpoint and .classifier (file paths)"
            )
        with tempfile.TemporaryDirectory() as folder:
            arguments = pyfunc_arguments(artifacts["checkpoint"], artifacts["classifier"], example_images, Path(folder))
            python_model = arguments.pop("python_model")
            self._save_args = {**base, **arguments}
            try:
                super()._save(python_model)
            finally:
                self._save_args = {**base, "artifacts": artifacts}
