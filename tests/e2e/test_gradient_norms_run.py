"""`python -m starft_pipeline.gradient_norms` end to end on a copy of the project with the tiny upstream
outputs in its data folder: the error without them, then per-step lines, the summary and the CSV."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from tests.helpers import copy_project, kedro_env, stage_tiny

pytestmark = pytest.mark.slow

TINY_RUN = ["star.finetune.batch_size=16", "star.finetune.device=cpu", "star.finetune.epochs=2"]


def measure(project: Path) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "starft_pipeline.gradient_norms", "--steps", "2", "--scales", "100", "30"]
    env = kedro_env() | {"OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [*command, "--params", *TINY_RUN], cwd=project, env=env, capture_output=True, text=True, timeout=600
    )


def write_upstream(staged: dict, data: Path) -> None:
    """The files the catalog reads for the finetune node's inputs (conf/base/catalog.yml)."""
    for folder in ("02_intermediate", "03_primary", "04_feature"):
        (data / folder).mkdir(parents=True, exist_ok=True)
    staged["dataset_metadata"].to_csv(data / "02_intermediate/dataset_metadata.csv", index=False)
    (data / "02_intermediate/dataset_index.json").write_text(json.dumps(staged["dataset_index"]))
    (data / "03_primary/descriptions.json").write_text(json.dumps(staged["descriptions"]))
    (data / "04_feature/teacher_model.json").write_text(json.dumps(staged["teacher_model"]))
    staged["teacher_cache"].save(data / "04_feature/teacher_cache.safetensors")


def test_the_command_measures_the_first_steps_and_writes_its_table(tmp_path):
    project = copy_project(tmp_path / "project")
    missing = measure(project)
    assert missing.returncode != 0
    assert "run the class_names, descriptions and teacher stages first" in missing.stderr

    staged = stage_tiny(tmp_path / "raw")
    write_upstream(staged, project / "data")
    completed = measure(project)
    assert completed.returncode == 0, (completed.stdout + completed.stderr)[-6000:]
    own = float(staged["teacher_cache"].metadata["logit_scale"])
    lines = completed.stdout.splitlines()
    assert sum(line.startswith("step ") for line in lines) == 2 * 3  # 2 steps × (own τ₀, 100, 30)
    assert any("mean ‖∇R‖" in line and "(reference, own τ₀)" in line for line in lines)  # base: τ = the teacher's
    table = pd.read_csv(project / "data/08_reporting/star_reg_gradient_norms.csv")
    assert sorted(table["scale"].unique()) == pytest.approx(sorted([own, 100.0, 30.0]))
    assert list(table["step"].unique()) == [1, 2] and (table["reference_scale"] == table["own_scale"]).all()
    at_100 = table[table["scale"] == 100.0].iloc[0]
    assert at_100["matched_reg_weight"] == pytest.approx(0.5 * at_100["ratio"])
