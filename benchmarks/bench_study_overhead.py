"""What a study run costs besides its fine-tuning, before and after the study runner's savings.

    python benchmarks/bench_study_overhead.py [--repeats 3]

In the project root, after the upstream stages and one FLYP fine-tune (the weights in
``data/06_models/flyp.safetensors`` and its history). In one process, medians of ``--repeats``:

* a KedroSession created and its context loaded (every run pays it once);
* the one-pass evaluation of the fine-tuned model with zero-shot (what every run paid before)
  and without it (``evaluation.zero_shot: false``, what the study's runs after the first pay);
* the loss curves into MLflow: the ``log_loss_curve`` node's dataset (one ``log_metric`` per point,
  before) and one ``log_batch`` per 1,000 points (after), into a scratch SQLite store.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path


def median_s(action: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        action()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--method", default="flyp")
    args = parser.parse_args()

    import mlflow
    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project
    from kedro_mlflow.io.metrics import MlflowMetricsHistoryDataset
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    from starft_pipeline.pipelines.evaluation.nodes import evaluate_models
    from starft_pipeline.pipelines.finetune.nodes import loss_curve_metrics
    from starft_pipeline.train.methods import METHODS

    project = Path.cwd()
    bootstrap_project(project)

    def session_context() -> object:
        with KedroSession.create(project_path=project) as session:
            return session.load_context()

    context: object = session_context()
    session_s = median_s(session_context, args.repeats)
    catalog, params = context.catalog, context.params  # type: ignore[attr-defined]
    shared = [catalog.load(name) for name in ("dataset_metadata", "dataset_index", "teacher_model", "teacher_cache")]
    weights = [catalog.load(f"{method}.weights") for method in METHODS]
    evaluation = params["evaluation"] | {"models": [args.method], "wise_ft": {"methods": []}}
    evaluate_models(*shared, evaluation | {"zero_shot": False}, *weights)  # warm-up: imports, model creation
    with_zero_shot = median_s(lambda: evaluate_models(*shared, evaluation, *weights), args.repeats)
    without = median_s(lambda: evaluate_models(*shared, evaluation | {"zero_shot": False}, *weights), args.repeats)

    curves = loss_curve_metrics(catalog.load(f"{args.method}.history"))
    points = sum(len(values) for values in curves.values())
    with tempfile.TemporaryDirectory() as scratch:
        mlflow.set_tracking_uri(f"sqlite:///{scratch}/mlflow.db")
        client = MlflowClient()
        experiment = client.create_experiment("bench")

        def per_metric() -> None:
            with mlflow.start_run(experiment_id=experiment):
                MlflowMetricsHistoryDataset().save(curves)  # what the catalog's `<method>.loss_curve` does

        def batched() -> None:
            run_id = client.create_run(experiment).info.run_id
            now = int(time.time() * 1000)
            entities = [
                Metric(key, float(p["value"]), now, int(p["step"])) for key, values in curves.items() for p in values
            ]
            for start in range(0, len(entities), 1000):
                client.log_batch(run_id, metrics=entities[start : start + 1000])

        per_metric_s, batched_s = median_s(per_metric, args.repeats), median_s(batched, args.repeats)

    print(f"KedroSession.create + load_context: {session_s:.2f} s")
    print(f"one-pass evaluation of {args.method} with zero-shot: {with_zero_shot:.2f} s, without: {without:.2f} s")
    print(f"  ratio without/with: {without / with_zero_shot:.2f}")
    print(f"loss curves ({points} points) per metric: {per_metric_s:.2f} s, batched: {batched_s:.3f} s")
    before = session_s + with_zero_shot + per_metric_s
    after = session_s + without + batched_s
    print(f"per-run overhead: before {before:.1f} s, after {after:.1f} s (ratio {after / before:.2f})")


if __name__ == "__main__":
    main()
