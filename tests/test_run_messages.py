"""What a user sees from ``kedro run``: an error of ours as one paragraph (the traceback in the log
file), and a default run with no warning the user cannot act on."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from starft_pipeline.cli import is_user_error
from starft_pipeline.data.metadata import DataError
from tests.helpers import copy_project, kedro_env

#: kedro-mlflow 2.0's own PythonModel (KedroPipelineModel) has an untyped ``predict``; MLflow 3 warns when
#: the plugin is imported, inside ``catch_warnings(simplefilter("once"))``, so no filter of ours applies.
THIRD_PARTY_WARNINGS = (re.compile(r"Add type hints to the `predict` method"), re.compile(r"^\s+color_warning\($"))


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return copy_project(tmp_path_factory.mktemp("run_messages") / "project")


def _kedro_run(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "kedro", "run", *args]
    return subprocess.run(command, cwd=project, env=kedro_env(), capture_output=True, text=True, timeout=600)


def test_an_error_of_ours_is_one_paragraph_and_its_traceback_is_in_the_log(project: Path) -> None:
    run = _kedro_run(project, "--pipelines=class_names", "--params", "datasets.synthetic.bad_data=wrong")
    assert run.returncode == 1
    assert "Traceback" not in run.stderr + run.stdout
    paragraph = run.stderr.strip().splitlines()[-3:]
    assert paragraph[0] == "Error: ParameterValidationError: Parameter validation failed before any node ran:"
    assert paragraph[1] == "- datasets.synthetic.bad_data: Input should be 'error' or 'skip' (got 'wrong')"
    log = project / "logs" / "errors.log"
    assert paragraph[2] == f"(full traceback in {log})"
    text = log.read_text()
    assert "Traceback (most recent call last)" in text and "ParameterValidationError" in text


def test_a_default_run_prints_no_warning(project: Path) -> None:
    run = _kedro_run(project, "--pipelines=class_names")
    assert run.returncode == 0, run.stderr[-3000:]
    lines = (run.stdout + run.stderr).splitlines()
    warnings = [line for line in lines if re.search(r"warning", line, re.IGNORECASE)]
    assert [line for line in warnings if not any(known.search(line) for known in THIRD_PARTY_WARNINGS)] == []


def test_only_errors_of_this_project_are_shortened() -> None:
    assert is_user_error(DataError("metadata.csv line 3: ..."))
    assert not is_user_error(IndexError("list index out of range"))  # a bug keeps its traceback
