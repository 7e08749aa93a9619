"""Per-step overhead of logging the loss curves to MLflow, as % of a training step: before and after.

The step is ``training_step`` of StarFT (cached teacher) at batch 512 with the 1,000 ImageNet classes
on the stub CLIP of ``bench_train_step.py`` (trivially cheap towers: the host-side floor of a step,
so the percentage is an upper bound for any real model). The curves are the ``log_loss_curve`` node's
metrics (``loss_curve_metrics``: the per-step terms and the per-epoch summaries) of a ``--steps``-step
history, saved into a fresh SQLite tracking store inside a run, as a pipeline run saves them:

* before: kedro-mlflow's ``MlflowMetricsHistoryDataset`` (one ``log_metric`` call, one SQL
  transaction, per value);
* after: ``kedro_io.BatchedMlflowMetricsHistoryDataset`` (``log_batch``, 1,000 values per call).

Logging time / steps = overhead per step. Both are timed in the same process, interleaved
``--repeats`` times (median), so a load drift on a shared machine hits them alike. Target: ≤ 1 %.

    OMP_NUM_THREADS=1 python benchmarks/bench_metric_logging.py --steps 500

A script that prints figures, not a test.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch
from bench_train_step import HOST_BATCH, Setting, method_config, random_train_data, stub_model
from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

from starft_pipeline.pipelines.finetune.nodes import EPOCH_TERMS, STEP_TERMS, loss_curve_metrics
from starft_pipeline.train.finetune import setup_state, training_step


def step_seconds(steps: int, warmup: int = 2) -> float:
    """Median wall seconds of one StarFT training step on the stub model at batch 512."""
    setting = Setting("host", "stub", HOST_BATCH, tuple(IMAGENET_CLASSNAMES), "background")
    device, loaded = torch.device("cpu"), stub_model(8)
    data = random_train_data(loaded, setting, HOST_BATCH * 4)
    config = method_config("star_cached", HOST_BATCH)
    state = setup_state(loaded, config, len(data.labels), device)
    times = []
    for step in range(warmup + steps):
        state.step = step
        indices = torch.arange((step % 4) * HOST_BATCH, (step % 4 + 1) * HOST_BATCH)
        start = time.perf_counter()
        training_step(loaded, state, data, indices, config, config.reg_weight, device)
        times.append(time.perf_counter() - start)
    return statistics.median(times[warmup:])


def history(steps: int, epochs: int = 3) -> pd.DataFrame:
    """A fine-tuning history of ``steps`` steps with every logged term, the epoch summaries on each epoch's last row."""
    rows = []
    for step in range(1, steps + 1):
        row = {"step": step, "epoch": (step - 1) * epochs // steps + 1} | {term: 1.0 / step for term in STEP_TERMS}
        if step * epochs % steps == 0:
            row |= {term: float(step) for term in EPOCH_TERMS}
        rows.append(row)
    return pd.DataFrame(rows).assign(method="star")


def logging_seconds(dataset_class: type, metrics: dict) -> float:
    import mlflow

    with mlflow.start_run():
        start = time.perf_counter()
        dataset_class().save(metrics)
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=500, help="steps of the logged history")
    parser.add_argument("--train-steps", type=int, default=5, help="training steps timed (median)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import mlflow
    from kedro_mlflow.io.metrics import MlflowMetricsHistoryDataset

    from starft_pipeline.kedro_io import BatchedMlflowMetricsHistoryDataset

    step_s = step_seconds(args.train_steps)
    metrics = loss_curve_metrics(history(args.steps))
    n_values = sum(len(points) for points in metrics.values())
    with tempfile.TemporaryDirectory() as folder:
        mlflow.set_tracking_uri(f"sqlite:///{Path(folder) / 'mlflow.db'}")
        with mlflow.start_run():  # creates the store's tables: not part of either timing
            pass
        seconds: dict[str, list[float]] = {"before": [], "after": []}
        for _ in range(args.repeats):
            seconds["before"].append(logging_seconds(MlflowMetricsHistoryDataset, metrics))
            seconds["after"].append(logging_seconds(BatchedMlflowMetricsHistoryDataset, metrics))
    print(
        f"metric logging: {args.steps}-step history, {n_values} values ({len(metrics)} series), SQLite store; "
        f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, median of {args.repeats}"
    )
    print(f"training step (StarFT cached, stub CLIP, batch {HOST_BATCH}, CPU): {1000 * step_s:.1f} ms")
    for name, label in (("before", "log_metric per value"), ("after", "log_batch, 1,000 per call")):
        total = statistics.median(seconds[name])
        per_step = total / args.steps
        print(
            f"  {name:<6} ({label:<26}) {total:8.2f} s in all, {1000 * per_step:7.2f} ms per step "
            f"= {100 * per_step / step_s:6.2f} % of a step"
        )
    before, after = (statistics.median(seconds[name]) for name in ("before", "after"))
    print(f"  after / before: {after / before:.4f} ({before / after:.0f}x less time); target <= 1 % of a step")


if __name__ == "__main__":
    main()
