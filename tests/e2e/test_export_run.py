"""End to end: `full` exports every fine-tuned model (open_clip files, MLflow models), and the predict
pipeline classifies a folder with one of them (in a copy of the project: the full run stays untouched)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from mlflow import MlflowClient

from starft_pipeline.models.export import classifier_path
from starft_pipeline.train.methods import METHODS
from tests.helpers import kedro_env

pytestmark = pytest.mark.slow
#: What the predict pipeline reads (besides conf/ and the package).
PREDICT_INPUTS = (
    "data/02_intermediate/dataset_index.json",
    "data/04_feature/teacher_model.json",
    "data/06_models/star.safetensors",
)


def _predict_project(full_run_project: Path, destination: Path) -> Path:
    for name in ("pyproject.toml", ".telemetry", "conf", "src", *PREDICT_INPUTS):
        source, target = full_run_project / name, destination / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target, symlinks=True)
        else:
            shutil.copy2(source, target, follow_symlinks=False)
    return destination


def test_full_exports_every_model_and_predict_writes_the_csv(full_run_project: Path, tmp_path: Path) -> None:
    exported = full_run_project / "data/06_models/open_clip"
    for method in METHODS:
        assert (exported / f"{method}.safetensors").is_file() and classifier_path(
            exported / f"{method}.safetensors"
        ).is_file()

    client = MlflowClient(tracking_uri=f"sqlite:///{full_run_project / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("starft_pipeline").experiment_id
    models = client.search_logged_models([experiment], order_by=[{"field_name": "creation_time", "ascending": False}])
    star = next(model for model in models if model.name == "star")
    # one MLflow model per method, all in the run that logged the newest
    assert sorted(model.name for model in models if model.source_run_id == star.source_run_id) == sorted(METHODS)

    images = tmp_path / "images"
    images.mkdir()
    for source in sorted((full_run_project / "data/01_raw/synthetic/images/test").rglob("*.png"))[:4]:
        shutil.copy2(source, images / source.name)
    project = _predict_project(full_run_project, tmp_path / "project")
    command = [
        str(Path(sys.executable).with_name("kedro")),
        "run",
        "--pipelines=predict",
        f"--params=predict.model=star,predict.images={images}",
    ]
    completed = subprocess.run(
        command, cwd=project, env=kedro_env(), capture_output=True, text=True, timeout=600, check=False
    )
    assert completed.returncode == 0, (completed.stdout + completed.stderr)[-4000:]

    table = pd.read_csv(project / "data/07_model_output/predictions.csv")
    assert sorted(table["file"]) == sorted(path.name for path in images.iterdir())
    served = mlflow.pyfunc.load_model(star.artifact_location).predict(
        pd.DataFrame({"image": [(images / name).read_bytes() for name in table["file"]]})
    )
    classes = [column for column in served.columns if column != "predicted_class"]
    assert list(table.columns) == ["file", "predicted_class", *classes]
    pd.testing.assert_frame_equal(table[classes], served[classes], atol=1e-5, check_dtype=False)
    assert list(table["predicted_class"]) == list(served["predicted_class"])
