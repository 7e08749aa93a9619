"""The figure dataset: figures saved as image files, logged by kedro-mlflow's artifact wrapper, and a
catalog that does not import matplotlib until a figure is drawn (kedro-mlflow builds every catalog
dataset at start-up of every `kedro` command)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from kedro.io import DatasetError

from starft_pipeline.evaluate.figures import message_figure
from starft_pipeline.kedro_io import FigureDataset
from tests.helpers import PROJECT_ROOT

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_a_figure_is_saved_as_an_image_in_the_format_of_its_extension(tmp_path: Path) -> None:
    png, svg = tmp_path / "figures" / "plot.png", tmp_path / "plot.svg"
    FigureDataset(str(png), save_args={"dpi": 40, "bbox_inches": "tight"}).save(message_figure("nothing to plot"))
    FigureDataset(str(svg)).save(message_figure("nothing to plot"))
    assert png.read_bytes().startswith(PNG_MAGIC)
    assert b"<svg" in svg.read_bytes()[:500]
    assert sorted(path.name for path in tmp_path.rglob("*")) == ["figures", "plot.png", "plot.svg"]  # no temp files
    assert FigureDataset(str(png)).exists() and not FigureDataset(str(tmp_path / "other.png")).exists()


def test_a_failed_save_keeps_the_previous_figure(tmp_path: Path) -> None:
    path = tmp_path / "plot.png"
    dataset = FigureDataset(str(path))
    dataset.save(message_figure("first"))
    before = path.read_bytes()
    with pytest.raises(DatasetError):
        dataset.save("not a figure")
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["plot.png"]


def test_loading_a_figure_says_it_is_write_only(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="written by the pipeline, not read back"):
        FigureDataset(str(tmp_path / "plot.png")).load()


def test_wrapped_in_mlflow_artifact_dataset_the_saved_file_is_logged(tmp_path: Path, monkeypatch) -> None:
    import mlflow
    from kedro_mlflow.io.artifacts import MlflowArtifactDataset

    logged = []
    monkeypatch.setattr(
        mlflow, "log_artifact", lambda local_path, artifact_path=None: logged.append((local_path, artifact_path))
    )
    path = tmp_path / "plot.png"
    dataset = MlflowArtifactDataset(
        dataset={"type": "starft_pipeline.kedro_io.FigureDataset", "filepath": str(path), "save_args": {"dpi": 40}},
        artifact_path="figures",
    )
    dataset.save(message_figure("logged"))
    assert path.read_bytes().startswith(PNG_MAGIC)
    assert logged == [(path.as_posix(), "figures")]


BUILD_THE_CATALOG = textwrap.dedent(
    """
    import json, sys
    from kedro.io import DataCatalog
    from starft_pipeline.settings import CONFIG_LOADER_ARGS, CONFIG_LOADER_CLASS

    loader = CONFIG_LOADER_CLASS(sys.argv[1], **CONFIG_LOADER_ARGS)
    catalog = DataCatalog.from_config(loader["catalog"])
    names = [name for name, _ in catalog.items()] + ["star.group_accuracy_plot"]  # what kedro-mlflow builds, and a figure
    figures = [catalog.get(name) for name in names if name.endswith("_plot")]
    figure_types = sorted({type(getattr(figure, "wrapped", figure)).__name__ for figure in figures})
    matplotlib_at_start_up = "matplotlib" in sys.modules
    from starft_pipeline.evaluate.figures import message_figure

    catalog.get("star.group_accuracy_plot").wrapped._logging_activated = False  # no MLflow run here
    catalog.save("star.group_accuracy_plot", message_figure("saved through the project's catalog"))
    print(json.dumps({"figure_types": figure_types, "matplotlib_at_start_up": matplotlib_at_start_up}))
    """
)


def test_the_project_catalog_imports_matplotlib_only_when_a_figure_is_drawn(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", BUILD_THE_CATALOG, str(PROJECT_ROOT / "conf")],
        cwd=tmp_path,  # the catalog's relative data/ paths land here
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["figure_types"] == ["MlflowFigureDataset"]
    assert report["matplotlib_at_start_up"] is False
    saved = tmp_path / "data/08_reporting/figures/group_accuracy_star.png"
    assert saved.read_bytes().startswith(PNG_MAGIC)


# --- metrics: one MLflow call per 1,000 values ------------------------------------------------------


@pytest.fixture(scope="module")
def tracking_store(tmp_path_factory):
    """One SQLite store for the module's tests (creating one costs seconds); the previous URI restored after."""
    import mlflow

    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}")
    yield
    mlflow.set_tracking_uri(previous)


def _curve(n_steps: int) -> dict[str, list[dict[str, float]]]:
    return {
        "star.train.loss": [{"step": step, "value": 1.0 / step} for step in range(1, n_steps + 1)],
        "star.train.epoch_loss": [{"step": 1, "value": 0.5}],
    }


def test_metrics_are_logged_in_batches_of_at_most_1000_with_kedro_mlflows_keys(tracking_store, monkeypatch) -> None:
    import mlflow
    from mlflow.tracking import MlflowClient

    from starft_pipeline.kedro_io import BatchedMlflowMetricsHistoryDataset

    batches: list[int] = []
    log_batch = MlflowClient.log_batch

    def counting_log_batch(self, run_id, metrics=(), **kwargs):
        batches.append(len(metrics))
        return log_batch(self, run_id, metrics=metrics, **kwargs)

    monkeypatch.setattr(MlflowClient, "log_batch", counting_log_batch)
    monkeypatch.setattr(MlflowClient, "log_metric", lambda *args, **kwargs: pytest.fail("one call per value"))
    with mlflow.start_run() as run:
        BatchedMlflowMetricsHistoryDataset(prefix="curves").save(_curve(2400))
    assert batches == [1000, 1000, 401]
    client = MlflowClient()
    history = client.get_metric_history(run.info.run_id, "curves.star.train.loss")
    assert sorted((point.step, point.value) for point in history) == [(s, 1.0 / s) for s in range(1, 2401)]
    # read back as kedro-mlflow's own dataset reads it
    loaded = BatchedMlflowMetricsHistoryDataset(run_id=run.info.run_id, prefix="curves").load()
    assert loaded["curves.star.train.epoch_loss"] == {"step": 1, "value": 0.5}


def test_without_an_active_run_no_metric_and_no_run_is_logged(tracking_store) -> None:
    from mlflow.tracking import MlflowClient

    from starft_pipeline.kedro_io import BatchedMlflowMetricsHistoryDataset

    client = MlflowClient()
    runs_before = sum(len(client.search_runs([e.experiment_id])) for e in client.search_experiments())
    BatchedMlflowMetricsHistoryDataset().save(_curve(3))
    assert sum(len(client.search_runs([e.experiment_id])) for e in client.search_experiments()) == runs_before


def test_saving_unchanged_leaves_the_file_as_it_was(tmp_path: Path) -> None:
    """A model a run does not evaluate keeps its previous file; within the run it reads back as UNCHANGED."""
    import copy

    from starft_pipeline.kedro_io import UNCHANGED, UnlessUnchanged

    path = tmp_path / "star_evaluation.json"
    dataset = UnlessUnchanged({"type": "json.JSONDataset", "filepath": str(path)})
    dataset.save({"results": [1]})
    before = path.read_bytes()
    dataset.save(UNCHANGED)
    assert path.read_bytes() == before and dataset.load() is UNCHANGED
    assert UnlessUnchanged({"type": "json.JSONDataset", "filepath": str(path)}).load() == {"results": [1]}
    missing = UnlessUnchanged({"type": "json.JSONDataset", "filepath": str(tmp_path / "never.json")})
    missing.save(UNCHANGED)
    assert not missing.exists() and copy.deepcopy(UNCHANGED) is UNCHANGED
