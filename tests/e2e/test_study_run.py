"""`python -m starft_pipeline.study` end to end on tiny data: one cell and FLYP over two seeds, run
in two goes (the second resumes: it trains only seed 1), each run its own tagged MLflow run, then the
paired table, its Markdown and figure, and the table's own MLflow run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient

from tests.helpers import copy_project, kedro_env, tiny_parameters

pytestmark = pytest.mark.slow

GRID = {"study": {"seeds": [0, 1], "cells": {"star_tiny": {"method": "star", "diminishing": False}}}}


def _study(project: Path, *args: str) -> str:
    command = [sys.executable, "-m", "starft_pipeline.study", "--grid", "study.yml", "--name", "tiny", *args]
    # One intra-op thread: on tiny batches torch's thread pool mostly waits, the more so on a shared CPU
    # (measured under load ≈ 10 on 2 cores: 12 s of CPU for one go instead of 38 s).
    env = kedro_env() | {"OMP_NUM_THREADS": "1"}
    completed = subprocess.run(command, cwd=project, env=env, capture_output=True, text=True, timeout=600)
    output = completed.stdout + completed.stderr
    if completed.returncode != 0:
        pytest.fail(f"{' '.join(command)} failed:\n{output[-6000:]}")
    return output


@pytest.fixture(scope="module")
def study_project(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, str]:
    project = copy_project(tmp_path_factory.mktemp("study") / "project")
    params = tiny_parameters(project / "data" / "01_raw")
    for block in params.values():
        if isinstance(block, dict) and isinstance(block.get("finetune"), dict):
            block["finetune"].update(progress=False)
    params["evaluation"]["bootstrap"]["n_resamples"] = 10
    (project / "conf/local/parameters_tiny.yml").write_text(yaml.safe_dump(params, sort_keys=False))
    (project / "study.yml").write_text(yaml.safe_dump(GRID))
    first = _study(project, "--seeds", "0")  # upstream stages, then FLYP and the cell at seed 0
    second = _study(project, "--skip-upstream")  # the grid's seeds 0 and 1: seed 0 is already there
    return project, first, second


def test_the_second_go_resumes_from_the_rows_file(study_project):
    project, first, second = study_project
    assert "2 runs, 0 already in" in first
    assert "4 runs, 2 already in" in second and "star_tiny seed 1 took" in second
    assert "seed 0 took" not in second
    runs = pd.read_csv(project / "data/08_reporting/tiny_runs.csv")
    assert sorted(set(zip(runs["cell"], runs["seed"], strict=True))) == [
        ("flyp", 0),
        ("flyp", 1),
        ("star_tiny", 0),
        ("star_tiny", 1),
        ("zero_shot", 0),
    ]
    assert (runs.drop_duplicates(["cell", "seed"])["wall_s"] > 0).all()


def test_the_table_pairs_both_seeds_on_every_split(study_project):
    project, _, _ = study_project
    reporting = project / "data/08_reporting"
    table = pd.read_csv(reporting / "tiny_table.csv")
    runs = pd.read_csv(reporting / "tiny_runs.csv")
    assert set(table["split"]) == set(runs["split"]) and len(set(table["split"])) == 4
    assert set(table["metric"]) == {"worst_group_acc", "avg_acc", "minority_group_acc", "adjusted_avg_acc"}
    assert (table["cell"] == "star_tiny").all() and (table["n_seeds"] == 2).all()
    row = table[(table["split"] == "waterbirds_like/test") & (table["metric"] == "avg_acc")].iloc[0]
    flyp = runs[(runs["cell"] == "flyp") & (runs["split"] == "waterbirds_like/test")]["avg_acc"]
    star = runs[(runs["cell"] == "star_tiny") & (runs["split"] == "waterbirds_like/test")]["avg_acc"]
    assert row["diff_mean"] == pytest.approx(star.mean() - flyp.mean())
    markdown = (reporting / "tiny_table.md").read_text()
    assert "Selected: `star_tiny`" in markdown and "waterbirds_like/val" in markdown
    assert (reporting / "tiny_recovered.png").stat().st_size > 0


def test_every_run_and_the_table_are_tagged_mlflow_runs(study_project):
    project, _, _ = study_project
    client = MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("starft_pipeline")
    runs = client.search_runs([experiment.experiment_id], "tags.study = 'tiny'")
    cells = sorted((run.data.tags["study.cell"], run.data.tags.get("study.seed")) for run in runs)
    assert cells == [
        ("flyp", "0"),
        ("flyp", "1"),
        ("star_tiny", "0"),
        ("star_tiny", "1"),
        ("table", None),
        ("table", None),
    ]
    star_1 = next(r for r in runs if r.data.tags["study.cell"] == "star_tiny" and r.data.tags["study.seed"] == "1")
    assert (
        star_1.data.params["star.finetune.seed"] == "1" and star_1.data.params["star.finetune.diminishing"] == "False"
    )
    assert {"star_tiny.waterbirds_like.test.worst_group_acc", "star.train.loss", "study.wall_s"} <= set(
        star_1.data.metrics
    )
    assert len(client.get_metric_history(star_1.info.run_id, "star.train.loss")) > 1  # the curve, every step
    table = next(r for r in runs if r.data.tags["study.cell"] == "table")  # the newest: both goes write the table
    artifacts = {a.path for a in client.list_artifacts(table.info.run_id, "tiny")}
    assert {"tiny/tiny_table.csv", "tiny/tiny_table.md", "tiny/tiny_recovered.png"} <= artifacts


def test_the_frontier_compares_each_cell_with_its_seeds_flyp_curve(study_project):
    project, _, _ = study_project
    reporting = project / "data/08_reporting"
    curves = pd.read_csv(reporting / "tiny_curves.csv")
    assert set(curves["method"]) == {"flyp"} and sorted(set(curves["seed"])) == [0, 1]
    intervals = pd.read_csv(reporting / "tiny_frontier.csv")
    assert {"star_tiny", "zero_shot"} <= set(intervals["method"])
    assert set(intervals["ood_split"]) == {"synthetic/test", "waterbirds_like/test"}
    assert ((intervals["n_seeds"] + intervals["n_outside"]) == 2).all()
    assert "## Frontier" in (reporting / "tiny_table.md").read_text()
    assert (reporting / "tiny_frontier.png").stat().st_size > 0
