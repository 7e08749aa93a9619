"""notebooks/analysis.ipynb runs top to bottom against a project where `full` has run, loading the
results through the Kedro catalog and drawing the figures."""

from __future__ import annotations

import shutil
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from tests.helpers import PROJECT_ROOT, kedro_env

pytestmark = pytest.mark.slow

NOTEBOOK = PROJECT_ROOT / "notebooks" / "analysis.ipynb"


def test_analysis_notebook_runs_and_draws_the_figures(full_run_project: Path, monkeypatch) -> None:
    for key, value in kedro_env().items():
        monkeypatch.setenv(key, value)  # the kernel inherits the environment: telemetry off
    workdir = full_run_project / "notebooks"
    workdir.mkdir(exist_ok=True)
    shutil.copy(NOTEBOOK, workdir / NOTEBOOK.name)  # the notebook finds its project from its folder
    notebook = nbformat.read(workdir / NOTEBOOK.name, as_version=4)
    client = NotebookClient(
        notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(workdir)}}
    )
    client.execute()

    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs]
    assert not [output for output in outputs if output.output_type == "error"]
    images = [output for output in outputs if "image/png" in output.get("data", {})]
    assert len(images) >= 2, "the notebook drew fewer figures than expected"
    text = "\n".join(str(output.get("data", {}).get("text/markdown", "")) for output in outputs)
    assert "worst_group_acc" in text and "zero_shot" in text  # the comparison table, loaded via the catalog
    assert str(full_run_project) in "\n".join(output.get("text", "") for output in outputs)
