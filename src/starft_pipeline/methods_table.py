"""The methods table: every fine-tuning method over several seeds, as mean ± std.

    python -m starft_pipeline.methods_table --seeds 0 1 2

runs the upstream stages once (class_names, descriptions, teacher), then for each seed the
`finetune` and `evaluation` pipelines in their own KedroSession with every method's
``<method>.finetune.seed`` overridden (the method list is
``starft_pipeline.train.methods.METHOD_SPECS``), keeps each seed's results, and writes
``data/08_reporting/methods_table.{csv,md}`` plus the per-seed rows ``methods_table_runs.csv``,
logged to MLflow as one more run. When every seed sweeps the frontier's reference (FLYP, in
``evaluation.wise_ft.methods``) it also writes ``methods_table_frontier.{csv,png}`` and
``methods_table_frontier_runs.csv``: each method's gain over its seed's WiSE-FT curve at equal ID
accuracy, mean over seeds with a 95 % t-interval (docs/frontier.md). Only the fine-tuning seed varies: data sets and the pretrained
teacher are fixed, so the std measures fine-tuning noise (batch order, crops, caption and
description draws), not data noise; the zero-shot rows therefore have std 0.

The aggregation helpers are plain pandas; only :func:`run_seeds` and :func:`main` drive Kedro
(this module is an entry point, like ``__main__``).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from starft_pipeline.evaluate.markdown import markdown_table
from starft_pipeline.evaluate.results import mean_std_table, mlflow_metric_key
from starft_pipeline.evaluate.study_stats import frontier_intervals, frontier_markdown, seed_frontiers

logger = logging.getLogger(__name__)

UPSTREAM_PIPELINES = ("class_names", "descriptions", "teacher")
SEED_PIPELINES = ("finetune", "evaluation")
TABLE_METRICS = ("avg_acc", "worst_group_acc", "minority_group_acc", "adjusted_avg_acc")
REPORT_DIR = Path("data/08_reporting")


# --------------------------------------------------------------------------------------------
# Pure helpers (tested without Kedro runs)
# --------------------------------------------------------------------------------------------


def seed_overrides(params: Mapping[str, Any], methods: Sequence[str], seed: int) -> dict[str, Any]:
    """Runtime parameters setting ``<method>.finetune.seed`` for every method that has a finetune block."""
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    overrides = {
        method: {"finetune": {"seed": seed}}
        for method in methods
        if isinstance(params.get(method), Mapping) and isinstance(params[method].get("finetune"), Mapping)
    }
    if not overrides:
        raise ValueError(
            f"none of the methods {list(methods)} has a `<method>.finetune` parameters block; "
            "nothing would change with the seed"
        )
    return overrides


def parse_overrides(pairs: Sequence[str]) -> dict[str, Any]:
    """``["star.finetune.reg_weight=2", ...]`` → nested runtime parameters (values read as YAML)."""
    import yaml

    overrides: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key or any(not part for part in key.split(".")):
            raise ValueError(
                f"--params entry {pair!r} is not of the form dotted.key=value (e.g. star.finetune.reg_weight=2)"
            )
        *parents, leaf = key.split(".")
        node = overrides
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(
                    f"--params entry {pair!r} sets a key below {part!r}, which another entry sets to a value"
                )
        node[leaf] = yaml.safe_load(raw)
    return overrides


def merged(base: Mapping[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``extra`` merged in, nested mappings key by key (``extra`` wins)."""
    out = dict(base)
    for key, value in extra.items():
        both_mappings = isinstance(out.get(key), Mapping) and isinstance(value, Mapping)
        out[key] = merged(out[key], value) if both_mappings else value
    return out


def minority_groups(index: Mapping[str, Any], dataset: str) -> list[int]:
    """Groups that are not their class's largest training group: where the correlation breaks."""
    entry = index["datasets"][dataset]
    n_places = int(entry["n_places"])
    counts = list(entry["train_group_counts"])
    minority = []
    for y in range(len(entry["class_names"])):
        row = counts[y * n_places : (y + 1) * n_places]
        majority = max(range(n_places), key=row.__getitem__)
        minority += [y * n_places + p for p in range(n_places) if p != majority]
    return minority


def minority_accuracy(group_results: pd.DataFrame, index: Mapping[str, Any]) -> pd.DataFrame:
    """Mean accuracy over each split's minority groups (unweighted), one row per (method, split)."""
    rows = []
    for (method, split), part in group_results.groupby(["method", "split"], sort=False):
        dataset = str(split).split("/")[0]
        if dataset not in index["datasets"]:
            raise KeyError(f"split {split!r}: data set {dataset!r} is not in the dataset index")
        minority = part[part["group"].isin(minority_groups(index, dataset))]
        rows.append({"method": method, "split": split, "minority_group_acc": float(minority["acc"].mean())})
    return pd.DataFrame(rows, columns=["method", "split", "minority_group_acc"])


def seed_rows(results: pd.DataFrame, group_results: pd.DataFrame, index: Mapping[str, Any], seed: int) -> pd.DataFrame:
    """One seed's ``results.csv`` rows with the minority-group accuracy and the seed added."""
    rows = results.merge(minority_accuracy(group_results, index), on=["method", "split"], how="left")
    return rows.assign(seed=seed)


def aggregate(runs: pd.DataFrame, metrics: Sequence[str] = TABLE_METRICS) -> pd.DataFrame:
    """Mean ± sample std over seeds per (method, split), in percent, methods and splits in run order."""
    seeds_per_method = runs.groupby("method", sort=False)["seed"].nunique()
    if seeds_per_method.nunique() > 1:
        raise ValueError(f"methods were run over different numbers of seeds: {seeds_per_method.to_dict()}")
    return mean_std_table(runs, by=("method", "split"), metrics=metrics, percent=True, decimals=1)


def table_markdown(
    table: pd.DataFrame, splits: Iterable[str] | None = None, metrics: Sequence[str] = TABLE_METRICS
) -> str:
    """The Markdown table: one row per (method, split), the ``mean ± std`` strings in percent."""
    frame = table if splits is None else table[table["split"].isin(list(splits))]
    columns = ["method", "split", "n_seeds", *metrics]
    return markdown_table(frame[columns].rename(columns={m: f"{m} (%)" for m in metrics}))


def mean_frontier(frontiers: pd.DataFrame) -> pd.DataFrame:
    """The per-seed frontiers averaged over seeds, point by point (for the figure)."""
    keys = ["kind", "method", "alpha", "id_split", "ood_split", "ood_metric"]
    values = ["id_acc", "ood_value", "curve_value", "gain_over_curve"]
    return frontiers.groupby(keys, sort=False, dropna=False)[values].mean().reset_index()


def frontier_outputs(
    runs: pd.DataFrame, curves: pd.DataFrame, finetune_dataset: str, reference: str
) -> tuple[pd.DataFrame, pd.DataFrame] | None:
    """Per-seed frontiers and their intervals over seeds; None when no seed swept ``reference``."""
    swept = curves[curves["method"] == reference] if not curves.empty else curves
    if swept.empty:
        logger.info("methods table: no %s WiSE-FT sweep in these runs, so no frontier", reference)
        return None
    frontiers = seed_frontiers(runs, swept, finetune_dataset, reference)
    return frontiers, frontier_intervals(frontiers)


def markdown_document(table: pd.DataFrame, command: str, seeds: Sequence[int], wall_s: float) -> str:
    lines = [
        "# Methods table",
        "",
        f"`{command}` — seeds {list(seeds)}, wall time {wall_s / 60:.1f} min. Mean ± sample std over seeds, in percent.",
        "`minority_group_acc`: mean accuracy over the groups that are not their class's majority training group.",
        "",
        table_markdown(table),
    ]
    return "\n".join(lines)


def table_metrics(table: pd.DataFrame, metrics: Sequence[str] = TABLE_METRICS) -> dict[str, float]:
    """``<method>.<dataset>.<split>.<metric>_{mean,std}`` for MLflow (NaN stds, of one seed, left out)."""
    out = {}
    for row in table.to_dict("records"):
        for metric in metrics:
            for stat in ("mean", "std"):
                value = row[f"{metric}_{stat}"]
                if pd.notna(value):
                    out[mlflow_metric_key(row["method"], str(row["split"]), f"{metric}_{stat}")] = float(value)
    return out


# --------------------------------------------------------------------------------------------
# Driving Kedro
# --------------------------------------------------------------------------------------------


def kedro_session(project_path: Path, env: str | None, runtime_params: dict[str, Any] | None = None):
    from kedro.framework.session import KedroSession

    return KedroSession.create(project_path=project_path, env=env, runtime_params=runtime_params)


def run_pipelines(
    session: Any,
    pipeline_names: Sequence[str],
    namespaces: Sequence[str] | None = None,
    node_names: Sequence[str] | None = None,
) -> None:
    """``session.run`` (of ``node_names`` only, when given), then close every MLflow run left on the stack.

    kedro-mlflow re-enters its run at each node (``start_run(run_id=…, nested=True)``) and ends it
    once after the pipeline, so in a long-lived process the run stays active and the next
    session's parameters would be logged into it (and refused: MLflow params are immutable).
    """
    import mlflow

    status = "FAILED"
    only = {"node_names": list(node_names)} if node_names else {}
    try:
        session.run(pipeline_names=list(pipeline_names), namespaces=list(namespaces) if namespaces else None, **only)
        status = "FINISHED"
    finally:
        while mlflow.active_run() is not None:
            mlflow.end_run(status)


def evaluated_rows(catalog: Any, methods: Sequence[str], seed: int) -> pd.DataFrame:
    """``methods``' rows of the last evaluation (their ``<method>.evaluation`` outputs) for ``seed``."""
    from starft_pipeline.pipelines.evaluation.nodes import collect_results

    results, groups, _ = collect_results(*(catalog.load(f"{method}.evaluation") for method in methods))
    return seed_rows(results, groups, catalog.load("dataset_index"), seed)


@dataclass(frozen=True)
class SeedRuns:
    """What :func:`run_seeds` gathered: every seed's rows, wall times and WiSE-FT curves (with ``seed``)."""

    rows: pd.DataFrame
    times: dict[int, float]
    curves: pd.DataFrame
    finetune_dataset: str
    frontier_reference: str


def run_seeds(
    seeds: Sequence[int],
    project_path: Path,
    env: str | None = None,
    run_upstream: bool = True,
    extra_params: Mapping[str, Any] | None = None,
    methods: Sequence[str] | None = None,
) -> SeedRuns:
    """Run finetune + evaluation once per seed; returns every seed's rows, wall time and WiSE-FT curve.

    ``extra_params`` (runtime parameters, e.g. another λ) apply to every run, upstream included.
    ``methods`` restricts the runs to those methods' namespaces (an ablation of one method costs
    one method's fine-tuning); their rows then come from each method's own evaluation output.
    """
    from kedro.framework.startup import bootstrap_project

    from starft_pipeline.train.methods import check_methods, method_names

    check_methods(methods or (), "--methods")

    bootstrap_project(project_path)
    if run_upstream:
        with kedro_session(project_path, env, dict(extra_params or {})) as session:
            run_pipelines(session, UPSTREAM_PIPELINES)
    with kedro_session(project_path, env, dict(extra_params or {})) as session:
        params = session.load_context().params
    runs, times, curves = [], {}, []
    for seed in seeds:
        started = time.perf_counter()
        overrides = merged(seed_overrides(params, method_names(), seed), extra_params or {})
        if methods:  # the one-pass evaluation node (namespace `evaluation`) evaluates just these
            overrides = merged(overrides, {"evaluation": {"models": list(methods)}})
        logger.info("methods table: seed %d, runtime parameters %s", seed, overrides)
        with kedro_session(project_path, env, overrides) as session:
            run_pipelines(session, SEED_PIPELINES, [*methods, "evaluation"] if methods else None)
            catalog = session.load_context().catalog
            if methods:
                runs.append(evaluated_rows(catalog, methods, seed))
            else:
                results, groups = catalog.load("results"), catalog.load("group_results")
                runs.append(seed_rows(results, groups, catalog.load("dataset_index"), seed))
                curves.append(catalog.load("wise_ft_curve").assign(seed=seed))
        times[seed] = time.perf_counter() - started
        logger.info("methods table: seed %d done in %.0f s", seed, times[seed])
    return SeedRuns(
        pd.concat(runs, ignore_index=True),
        times,
        pd.concat(curves, ignore_index=True) if curves else pd.DataFrame(),
        str(params["class_names"]["finetune_dataset"]),
        str(params["reporting"].get("frontier_reference", "flyp")),
    )


def write_outputs(
    table: pd.DataFrame,
    runs: pd.DataFrame,
    document: str,
    summary: dict[str, Any],
    folder: Path,
    name: str = "methods_table",
) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{name}.csv", folder / f"{name}_runs.csv", folder / f"{name}.md", folder / f"{name}.json"]
    table.to_csv(paths[0], index=False)
    runs.to_csv(paths[1], index=False)
    paths[2].write_text(document, encoding="utf-8")
    paths[3].write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return paths


FRONTIER_NOTE = (
    "Each method's OOD metric minus its seed's {reference} WiSE-FT curve at the method's ID accuracy "
    "(the fine-tuned data set's test adjusted average), mean over seeds with a t-interval. `outside curve` counts "
    "the seeds outside the curve's ID range: above it a method is compared with {reference} itself (the curve's "
    "end), below it it has no gain. docs/frontier.md."
)


def write_frontier(frontiers: pd.DataFrame, intervals: pd.DataFrame, folder: Path, name: str) -> list[Path]:
    """``<name>_frontier.csv`` (intervals), ``<name>_frontier_runs.csv`` (per seed), ``<name>_frontier.png``."""
    from starft_pipeline.evaluate.figures import plot_frontier

    paths = [folder / f"{name}_frontier.csv", folder / f"{name}_frontier_runs.csv", folder / f"{name}_frontier.png"]
    intervals.to_csv(paths[0], index=False)
    frontiers.to_csv(paths[1], index=False)
    plot_frontier(mean_frontier(frontiers), title="Frontier, mean over seeds").savefig(paths[2], dpi=120)
    return paths


def log_to_mlflow(
    table: pd.DataFrame, paths: Sequence[Path], summary: Mapping[str, Any], project_path: Path, env: str | None
) -> str:
    """One MLflow run holding the table's means and stds and the files; tracking set up by kedro-mlflow."""
    import mlflow

    with kedro_session(project_path, env) as session:
        session.load_context()  # kedro-mlflow's hook points mlflow at conf's tracking URI and experiment
    with mlflow.start_run(run_name=summary["name"]) as run:
        mlflow.log_params({"seeds": " ".join(map(str, summary["seeds"])), "command": summary["command"][:250]})
        mlflow.log_metrics(table_metrics(table) | {"wall_s": float(summary["wall_s"])})
        for path in paths:
            mlflow.log_artifact(str(path), artifact_path=summary["name"])
        return run.info.run_id


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="fine-tuning seeds (default 0 1 2)")
    parser.add_argument("--env", default=None, help="Kedro configuration environment")
    parser.add_argument("--project-path", type=Path, default=Path.cwd(), help="Kedro project root (default: cwd)")
    parser.add_argument(
        "--skip-upstream", action="store_true", help="reuse the cached class_names/descriptions/teacher outputs"
    )
    parser.add_argument(
        "--params",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="runtime parameters for every run, e.g. star.finetune.reg_weight=2",
    )
    parser.add_argument(
        "--methods",
        nargs="+",
        default=None,
        help="only these methods (their finetune and evaluation namespaces); default: all",
    )
    parser.add_argument(
        "--name",
        default="methods_table",
        help="stem of the files in data/08_reporting/ and of the MLflow run (default methods_table)",
    )
    args = parser.parse_args(argv)
    if len(set(args.seeds)) != len(args.seeds):
        parser.error(f"--seeds has duplicates: {args.seeds}")
    try:
        extra_params = parse_overrides(args.params)
    except ValueError as error:
        parser.error(str(error))
    command = " ".join(["python -m starft_pipeline.methods_table", *(argv if argv is not None else sys.argv[1:])])
    started = time.perf_counter()
    gathered = run_seeds(
        args.seeds, args.project_path.resolve(), args.env, not args.skip_upstream, extra_params, args.methods
    )
    runs, times = gathered.rows, gathered.times
    wall_s = time.perf_counter() - started
    table = aggregate(runs)
    summary = {
        "name": args.name,
        "command": command,
        "seeds": args.seeds,
        "params": extra_params,
        "wall_s": round(wall_s, 1),
        "seed_wall_s": {str(k): round(v, 1) for k, v in times.items()},
        "methods": list(dict.fromkeys(runs["method"])),
    }
    document = markdown_document(table, command, args.seeds, wall_s)
    frontier = frontier_outputs(runs, gathered.curves, gathered.finetune_dataset, gathered.frontier_reference)
    if frontier is not None:
        document += f"\n\n## Frontier\n\n{FRONTIER_NOTE.format(reference=gathered.frontier_reference)}\n\n"
        document += frontier_markdown(frontier[1], gathered.frontier_reference)
    folder = args.project_path / REPORT_DIR
    paths = write_outputs(table, runs, document, summary, folder, args.name)
    if frontier is not None:
        paths += write_frontier(*frontier, folder, args.name)
    run_id = log_to_mlflow(table, paths, summary, args.project_path.resolve(), args.env)
    logger.info("methods table: %s (MLflow run %s), %.1f min", paths[2], run_id, wall_s / 60)
    print(table_markdown(table))


if __name__ == "__main__":
    main()
