"""`python -m starft_pipeline.methods_table` end to end, on a copy of the session's `full` run:
several seeds in one process, each its own MLflow run, and the table logged as one more."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from tests.helpers import kedro_env

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def table_project(full_run_project: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    project = tmp_path_factory.mktemp("methods_table") / "project"
    shutil.copytree(full_run_project, project, symlinks=True)
    command = [
        sys.executable,
        "-m",
        "starft_pipeline.methods_table",
        "--seeds",
        "0",
        "1",
        "--skip-upstream",
        "--methods",
        "star",
        "--name",
        "star_check",
        "--params",
        "star.finetune.epochs=1",
    ]
    completed = subprocess.run(command, cwd=project, env=kedro_env(), capture_output=True, text=True, timeout=1800)
    if completed.returncode != 0:
        pytest.fail(f"{' '.join(command)} failed:\n{(completed.stdout + completed.stderr)[-6000:]}")
    return project


def test_the_table_has_every_split_over_both_seeds(table_project: Path) -> None:
    reporting = table_project / "data" / "08_reporting"
    table = pd.read_csv(reporting / "star_check.csv")
    runs = pd.read_csv(reporting / "star_check_runs.csv")
    assert set(table["method"]) == {"star"} and (table["n_seeds"] == 2).all()
    assert sorted(runs["seed"].unique()) == [0, 1]
    assert "--params star.finetune.epochs=1" in (reporting / "star_check.md").read_text()


def test_each_seed_and_the_table_are_mlflow_runs_of_their_own(table_project: Path) -> None:
    client = MlflowClient(tracking_uri=f"sqlite:///{table_project / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("starft_pipeline")
    runs = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time DESC"], max_results=3)
    table_run, *seed_runs = runs
    assert table_run.info.run_name == "star_check"
    assert "star.waterbirds_like.test.worst_group_acc_mean" in table_run.data.metrics
    assert [run.info.run_name for run in seed_runs] == ["finetune+evaluation"] * 2
    assert [run.data.params["star.finetune.seed"] for run in seed_runs] == ["1", "0"]
    assert all(run.info.status == "FINISHED" for run in runs)
