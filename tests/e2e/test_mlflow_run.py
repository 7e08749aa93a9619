"""After `kedro run --pipelines=full`: the reports on disk, and the MLflow run read back through the
client — every stage's parameters, the descriptions file, the teacher fingerprint, the metrics and
the figures."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from mlflow.artifacts import download_artifacts
from mlflow.tracking import MlflowClient

from starft_pipeline.evaluate.results import CI_COLUMNS, CLASS_COLUMNS, REPORT_COLUMNS, RESULTS_COLUMNS
from starft_pipeline.pipeline_registry import register_pipelines
from starft_pipeline.train.methods import METHODS

pytestmark = pytest.mark.slow

MODELS = ("zero_shot", *METHODS)
REPORTS = (
    "results.csv",
    "group_results.csv",
    "class_results.csv",
    "results.md",
    "dataset_checks.json",
    "frontier.csv",
)


def has_wise_ft_sweep() -> bool:
    return "wise_ft_curve" in register_pipelines()["full"].all_outputs()


def expected_figures() -> list[str]:
    names = [f"group_accuracy_{model}.png" for model in MODELS]
    names += ["group_accuracy_comparison.png", "training_curves.png"]
    return names + (["wise_ft_curve.png", "frontier.png"] if has_wise_ft_sweep() else [])


def tracking_uri(project: Path) -> str:
    return f"sqlite:///{project / 'mlflow.db'}"  # conf/base/mlflow.yml: sqlite:///mlflow.db in the project


@pytest.fixture(scope="module")
def run(full_run_project: Path):
    client = MlflowClient(tracking_uri=tracking_uri(full_run_project))
    experiment = client.get_experiment_by_name("starft_pipeline")
    assert experiment is not None, "no MLflow experiment `starft_pipeline` (conf/base/mlflow.yml)"
    runs = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time DESC"], max_results=1)
    assert runs, "the full run left no MLflow run"
    return client, runs[0]


def artifact_paths(client: MlflowClient, run_id: str, path: str | None = None) -> set[str]:
    found = set()
    for item in client.list_artifacts(run_id, path):
        found |= artifact_paths(client, run_id, item.path) if item.is_dir else {item.path}
    return found


def test_reports_are_written(full_run_project: Path) -> None:
    reporting = full_run_project / "data" / "08_reporting"
    results = pd.read_csv(reporting / "results.csv")
    assert list(results.columns)[: len(RESULTS_COLUMNS)] == list(RESULTS_COLUMNS)
    assert list(results.columns) == list(REPORT_COLUMNS)
    assert set(MODELS) <= set(results["method"])
    assert (
        results[[c for c in CI_COLUMNS if c.endswith("_low")]].to_numpy()
        <= results[[c for c in CI_COLUMNS if c.endswith("_high")]].to_numpy()
    ).all()
    index = json.loads((full_run_project / "data/02_intermediate/dataset_index.json").read_text())
    # zero-shot transfer: every model is evaluated on every configured data set
    for model in MODELS:
        evaluated = {split.split("/")[0] for split in results.loc[results["method"] == model, "split"]}
        assert evaluated == set(index["datasets"]), model
    classes = pd.read_csv(reporting / "class_results.csv")
    assert list(classes.columns) == list(CLASS_COLUMNS)
    markdown = (reporting / "results.md").read_text()
    assert "adjusted_avg_acc" in markdown and "mean_group_acc" in markdown and "CI" in markdown


def test_the_frontier_places_every_model_against_flyps_curve(full_run_project: Path) -> None:
    frontier = pd.read_csv(full_run_project / "data" / "08_reporting" / "frontier.csv")
    curve = frontier[frontier["kind"] == "curve"]
    assert set(curve["method"]) == {"flyp"} and set(curve["alpha"]) == {0.0, 1.0}
    points = frontier[frontier["kind"] != "curve"]
    assert set(MODELS) <= set(points["method"])
    assert set(points["ood_split"]) == {"synthetic/test", "waterbirds_like/test"}
    inside = points[points["outside_curve"].isna()]
    gain = inside["ood_value"] - inside["curve_value"]
    assert gain.to_numpy() == pytest.approx(inside["gain_over_curve"].to_numpy())
    flyp = points[points["method"] == "flyp"]  # FLYP is its curve's α = 1 end
    assert flyp["gain_over_curve"].to_numpy() == pytest.approx(0.0, abs=1e-9)


def test_the_embedded_teacher_is_a_real_zero_shot_model(full_run_project: Path) -> None:
    results = pd.read_csv(full_run_project / "data" / "08_reporting" / "results.csv").set_index(["method", "split"])
    index = json.loads((full_run_project / "data/02_intermediate/dataset_index.json").read_text())
    for dataset, entry in index["datasets"].items():
        chance = 1.0 / len(entry["class_names"])
        accuracy = results.loc[("zero_shot", f"{dataset}/test"), "avg_acc"]
        assert accuracy > chance + 0.5 * (1.0 - chance), (dataset, accuracy)  # committed weights: 95% and 99.6%


def test_figures_exist_and_are_not_blank(full_run_project: Path) -> None:
    from PIL import Image, ImageStat

    figures = full_run_project / "data" / "08_reporting" / "figures"
    for name in expected_figures():
        image = Image.open(figures / name).convert("L")
        assert image.width >= 600 and image.height >= 300, name
        assert ImageStat.Stat(image).stddev[0] > 5, f"{name} looks blank"


def test_every_stage_left_its_mark_in_the_run(run, full_run_project: Path) -> None:
    client, found = run
    assert found.info.status == "FINISHED"
    params, metrics = found.data.params, found.data.metrics
    prefixes = ["datasets.", "class_names.", "descriptions.", "teacher.", "evaluation.", "reporting."]
    prefixes += [f"{method}.finetune." for method in METHODS]
    for prefix in prefixes:
        assert any(key.startswith(prefix) for key in params), f"no parameter {prefix}* in the run"
    for method in METHODS:
        assert f"{method}.train.loss" in metrics, f"no loss curve of {method}"
    results = pd.read_csv(full_run_project / "data/08_reporting/results.csv")
    for row in results[results["method"].isin(MODELS)].itertuples():
        key = f"evaluation_metrics.{row.method}.{row.split.replace('/', '.')}"
        assert metrics[f"{key}.worst_group_acc"] == pytest.approx(row.worst_group_acc)
        assert f"{key}.adjusted_avg_acc_ci_high" in metrics

    artifacts = artifact_paths(client, found.info.run_id)
    expected = {"descriptions.json", "teacher/teacher_fingerprint.json", *REPORTS}
    expected |= {f"figures/{name}" for name in expected_figures()}
    assert expected <= artifacts, f"missing artifacts: {sorted(expected - artifacts)}"


def test_the_run_records_the_teacher_fingerprint(run, full_run_project: Path, tmp_path: Path) -> None:
    _, found = run
    local = download_artifacts(
        run_id=found.info.run_id,
        artifact_path="teacher/teacher_fingerprint.json",
        dst_path=str(tmp_path),
        tracking_uri=tracking_uri(full_run_project),
    )
    logged = json.loads(Path(local).read_text())
    teacher = json.loads((full_run_project / "data/04_feature/teacher_model.json").read_text())
    assert logged["fingerprint"] == teacher["fingerprint"] and len(logged["fingerprint"]) >= 8
