"""Shared fixtures. End-to-end fixtures are session-scoped: `full` runs once per test session."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.helpers import copy_project, kedro_env

FULL_RUN_TIMEOUT_S = 3000  # a few minutes alone; much more on a CPU shared with other runs
#: The session's `full` run trains every method for this many epochs at most (2: StarFT's
#: diminishing λ is still non-zero in the first epoch) …
FULL_RUN_MAX_EPOCHS = 2
#: … and sweeps WiSE-FT at these α only.
FULL_RUN_WISE_FT_ALPHAS = [0.0, 1.0]


def _lighter_full_run(project: Path) -> None:
    """conf/local/parameters_full_run.yml: the base blocks of the fine-tuned methods and of
    `evaluation`, with fewer epochs and WiSE-FT α (conf/local replaces whole top-level blocks)."""
    overrides = {}
    for path in sorted((project / "conf" / "base").glob("parameters*.yml")):
        for key, block in (yaml.safe_load(path.read_text()) or {}).items():
            finetune = block.get("finetune") if isinstance(block, dict) else None
            if isinstance(finetune, dict) and isinstance(finetune.get("epochs"), int):
                finetune["epochs"] = min(finetune["epochs"], FULL_RUN_MAX_EPOCHS)
                overrides[key] = block
            elif key == "evaluation" and "wise_ft" in block:
                block["wise_ft"]["alphas"] = FULL_RUN_WISE_FT_ALPHAS
                overrides[key] = block
    (project / "conf/local/parameters_full_run.yml").write_text(yaml.safe_dump(overrides, sort_keys=False))


@pytest.fixture(scope="session")
def full_run_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the project (conf/ copied, the package linked) after `kedro run --pipelines=full`.

    Its data/, mlflow.db and mlruns/ hold everything the run wrote; tests must only read them. The
    run is kept short (conf/local): :data:`FULL_RUN_MAX_EPOCHS`, :data:`FULL_RUN_WISE_FT_ALPHAS`.
    """
    project = copy_project(tmp_path_factory.mktemp("full_run") / "project")
    _lighter_full_run(project)
    kedro = Path(sys.executable).with_name("kedro")
    completed = subprocess.run(
        [str(kedro), "run", "--pipelines=full"],
        cwd=project,
        env=kedro_env(),
        capture_output=True,
        text=True,
        timeout=FULL_RUN_TIMEOUT_S,
    )
    (project / "full_run.log").write_text(completed.stdout + completed.stderr)
    if completed.returncode != 0:
        pytest.fail(f"`kedro run --pipelines=full` failed:\n{(completed.stdout + completed.stderr)[-6000:]}")
    return project
