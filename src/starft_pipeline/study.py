"""The pre-registered study: FLYP against StarFT settings over seeds, with paired statistics.

    python -m starft_pipeline.study --env miniature --seeds 0 1 2 3 4 [--cells NAME ...] [--name study]

reads the grid (``conf/<env>/study.yml``, else ``conf/base/study.yml``; docs/study.md), runs
``class_names``, ``descriptions`` and ``teacher`` once (``--skip-upstream`` reuses them), then for each
seed the reference (FLYP) once and every cell: the cell's ``finetune`` node with its overrides and the
one-pass evaluation of that model alone (``evaluation.models``), in one Python process, each run its own
MLflow run (tagged ``study``, ``cell``, ``seed``). Each finished cell × seed is appended atomically to
``data/08_reporting/<name>_runs.csv``; a rerun skips what is there, so an interrupted study resumes.
Then it writes ``<name>_table.{csv,md}``, ``<name>_recovered.png`` and ``<name>.json`` and logs them
as one more MLflow run. The statistics are in :mod:`starft_pipeline.evaluate.study_stats` (no Kedro).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from starft_pipeline.core.io_utils import atomic_path, atomic_write_json, fingerprint
from starft_pipeline.core.progress import format_duration, progress_line
from starft_pipeline.evaluate.results import mlflow_metric_key
from starft_pipeline.evaluate.study_stats import (
    STUDY_METRICS,
    Cell,
    StudyGrid,
    default_selection_split,
    frontier_intervals,
    frontier_markdown,
    load_grid,
    paired_table,
    plot_recovered,
    seed_frontiers,
    select_cell,
    select_on_frontier,
    selection_rule,
    study_markdown,
)
from starft_pipeline.methods_table import (
    FRONTIER_NOTE,
    REPORT_DIR,
    UPSTREAM_PIPELINES,
    evaluated_rows,
    kedro_session,
    merged,
    parse_overrides,
    run_pipelines,
    write_frontier,
)
from starft_pipeline.models.heads import ZERO_SHOT

# Not __name__: under `python -m` that is __main__, which conf/logging.yml does not show.
logger = logging.getLogger("starft_pipeline.study")

GRID_FILE = "study.yml"
#: A cell's run evaluates one model: no WiSE-FT sweep (the one-pass node would add every α).
LEAN_EVALUATION: dict[str, Any] = {"wise_ft": {"methods": []}}
#: The reference's run also sweeps its own WiSE-FT curve: the frontier every cell is compared with.
REFERENCE_SWEEP = "sweep"


def grid_path(project_path: Path, env: str | None) -> Path:
    """``conf/<env>/study.yml`` when the environment has one, else ``conf/base/study.yml``."""
    if env:
        own = project_path / "conf" / env / GRID_FILE
        if own.is_file():
            return own
    return project_path / "conf" / "base" / GRID_FILE


@dataclass(frozen=True)
class Job:
    """One cell × seed: ``cell`` is the reference's name for the reference run."""

    cell: str
    method: str
    seed: int
    finetune: Mapping[str, Any]
    key: str  # fingerprint of the settings: a resumed row must come from the same settings
    sweep: bool = False  # the reference: its evaluation sweeps its WiSE-FT curve (the frontier)

    def node_names(self) -> list[str]:
        """Fine-tuning and the one-pass evaluation. Not ``<method>.log_loss_curve``: it logs one MLflow
        metric per call (seconds per run, more with many steps); :func:`_record_run` batches them."""
        return [f"{self.method}.finetune", "evaluation.evaluate_models"]

    def runtime_params(self, extra: Mapping[str, Any], zero_shot: bool = True) -> dict[str, Any]:
        """``extra``, the cell's finetune overrides and seed, and an evaluation of this model alone
        (plus zero-shot when ``zero_shot``: it does not depend on the seed, so a study needs it once)."""
        sweep = {"wise_ft": {"methods": [self.method]}} if self.sweep else LEAN_EVALUATION
        own = {
            self.method: {"finetune": {**self.finetune, "seed": self.seed}},
            "evaluation": {"models": [self.method], "zero_shot": zero_shot, **sweep},
        }
        return merged(extra, own)


def study_jobs(
    grid: StudyGrid, seeds: Sequence[int], all_pools: Sequence[str], extra: Mapping[str, Any], upstream: str = ""
) -> list[Job]:
    """Seed by seed: the reference, then every cell (so a partial study has complete seeds first).

    A job's key covers its settings, ``extra`` and ``upstream`` (the teacher cache's fingerprint:
    weights, prompts, descriptions, data), so rows of another environment are never taken for its own."""
    cells = [Cell(grid.reference, grid.reference), *grid.cells]
    jobs = []
    for seed in seeds:
        for cell in cells:
            finetune = cell.finetune_params(all_pools)
            key = fingerprint(cell.method, finetune, dict(extra), upstream)
            jobs.append(Job(cell.name, cell.method, seed, finetune, key, sweep=cell.name == grid.reference))
    return jobs


# --------------------------------------------------------------------------------------------
# The per-run rows file (resumable)
# --------------------------------------------------------------------------------------------


def read_runs(path: Path) -> pd.DataFrame:
    return pd.read_csv(path) if path.is_file() else pd.DataFrame(columns=["cell", "seed", "split", "settings_key"])


def append_runs(path: Path, rows: pd.DataFrame) -> pd.DataFrame:
    """``rows`` appended to the file, which is replaced atomically (a crash leaves the previous file)."""
    runs = pd.concat([frame for frame in (read_runs(path), rows) if not frame.empty], ignore_index=True)
    with atomic_path(path) as tmp:
        runs.to_csv(tmp, index=False)
    return runs


def done_keys(runs: pd.DataFrame, jobs: Sequence[Job], path: Path) -> set[tuple[str, int]]:
    """The (cell, seed) pairs already in ``runs``; a row from other settings under a cell's name is an error."""
    wanted = {(job.cell, job.seed): job.key for job in jobs}
    done = set()
    for cell, seed, key in runs[["cell", "seed", "settings_key"]].drop_duplicates().itertuples(index=False):
        if (cell, int(seed)) not in wanted:
            continue
        if wanted[(cell, int(seed))] != key:
            raise ValueError(
                f"{path}: cell {cell!r} seed {seed} was run with other settings (the grid, --params, the environment "
                "or the upstream stages' outputs changed). "
                "Use another --name for the new settings, or delete that file to start over."
            )
        done.add((cell, int(seed)))
    return done


# --------------------------------------------------------------------------------------------
# Driving Kedro
# --------------------------------------------------------------------------------------------


def run_metrics(job: Job, rows: pd.DataFrame, history: pd.DataFrame, wall_s: float) -> list[tuple[str, float, int]]:
    """(key, value, step) of one run: its loss curves (the ``log_loss_curve`` node's keys), wall time
    and accuracies (``<cell>.<dataset>.<split>.<metric>``)."""
    from starft_pipeline.pipelines.finetune.nodes import loss_curve_metrics

    curves = loss_curve_metrics(history).items()
    out = [(key, float(p["value"]), int(p["step"])) for key, points in curves for p in points]
    out.append(("study.wall_s", wall_s, 0))
    for row in rows.to_dict("records"):
        for metric in STUDY_METRICS:
            if metric in row and pd.notna(row[metric]):
                out.append((mlflow_metric_key(job.cell, str(row["split"]), metric), float(row[metric]), 0))
    return out


def _record_run(study: str, job: Job, metrics: Sequence[tuple[str, float, int]]) -> str:
    """Name and tag the MLflow run kedro-mlflow just closed and log ``metrics`` in batches."""
    import mlflow
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    from starft_pipeline.kedro_io import log_metrics_in_batches

    run = mlflow.last_active_run()
    if run is None:
        return ""
    client, run_id, now = MlflowClient(), run.info.run_id, int(time.time() * 1000)
    tags = {"mlflow.runName": f"{study}/{job.cell}/seed{job.seed}", "study": study, "study.cell": job.cell}
    entities = [Metric(key, float(value), now, int(step)) for key, value, step in metrics]
    log_metrics_in_batches(client, run_id, entities, tags | {"study.seed": str(job.seed)})
    return run_id


def curves_path(runs_path: Path) -> Path:
    """``<name>_curves.csv`` beside ``<name>_runs.csv``: the reference's WiSE-FT curve of every seed."""
    return runs_path.with_name(runs_path.name.replace("_runs.csv", "_curves.csv"))


def import_rows(path: Path, folder: Path) -> int:
    """Append to ``path`` (and its curves file) the rows of the same study in ``folder`` that it lacks.

    For studies split over several project copies (``--seeds`` apart, one core each): their cell ×
    seed rows, their reference curves, and zero-shot's rows when this file has none. Curves go first,
    so a reference row never lands without its curve. The settings keys are checked afterwards, by
    the run as always. Returns the number of cell × seed pairs imported.
    """
    theirs_curves = read_runs(folder / curves_path(path).name)
    if not theirs_curves.empty:
        have = set(read_runs(curves_path(path)).get("seed", pd.Series(dtype=int)))
        new_curves = theirs_curves[~theirs_curves["seed"].isin(have)]
        if not new_curves.empty:
            append_runs(curves_path(path), new_curves)
    theirs = read_runs(folder / path.name)
    if theirs.empty:
        raise FileNotFoundError(f"--rows-from {folder}: no {path.name} there (run the study in that copy first)")
    mine = read_runs(path)
    pairs = pd.MultiIndex.from_arrays([theirs["cell"], theirs["seed"].astype(int)])
    missing = ~pairs.isin(list(zip(mine["cell"], mine["seed"].astype(int))))
    zero_shot = (theirs["cell"] == ZERO_SHOT).to_numpy()
    new_runs = missing & ~zero_shot
    take = new_runs | (zero_shot & ~(mine["cell"] == ZERO_SHOT).any())
    if take.any():
        append_runs(path, theirs[take])
    return len(set(pairs[new_runs]))


def run_job(
    job: Job, project_path: Path, env: str | None, extra: Mapping[str, Any], catalog: Any, zero_shot: bool
) -> pd.DataFrame:
    """Train and evaluate one cell × seed; its rows (``cell``, ``seed``, ``split``, accuracies), plus
    zero-shot's when ``zero_shot``."""
    with kedro_session(project_path, env, job.runtime_params(extra, zero_shot)) as session:
        run_pipelines(session, ["finetune", "evaluation"], node_names=job.node_names())
    models = [job.method, ZERO_SHOT] if zero_shot else [job.method]
    rows = [
        evaluated_rows(catalog, [model], job.seed).assign(cell=job.cell if model == job.method else model)
        for model in models
    ]
    return pd.concat(rows, ignore_index=True).assign(settings_key=job.key)


def run_study(
    grid: StudyGrid,
    seeds: Sequence[int],
    project_path: Path,
    env: str | None,
    name: str,
    run_upstream: bool = True,
    extra: Mapping[str, Any] | None = None,
    rows_from: Sequence[Path] = (),
) -> tuple[pd.DataFrame, str]:
    """Every job not yet in ``<name>_runs.csv`` (after importing the rows of the copies in ``rows_from``);
    returns the file's rows for this grid and seeds, and the fine-tuning data set's name (the others are
    transfer tasks)."""
    from kedro.framework.startup import bootstrap_project

    extra = dict(extra or {})
    bootstrap_project(project_path)
    if run_upstream:
        with kedro_session(project_path, env, extra) as session:
            run_pipelines(session, UPSTREAM_PIPELINES)
    with kedro_session(project_path, env, extra) as session:
        context = session.load_context()  # also points MLflow at the project's tracking URI
        params, catalog = context.params, context.catalog
    if grid.selection.split is None and "val" not in params["evaluation"]["splits"]:
        raise ValueError(
            f"evaluation.splits is {params['evaluation']['splits']}: the study selects its setting on validation "
            "splits only, so they must include `val` (or set `selection.split` in the grid file)"
        )
    all_pools = params["descriptions"]["confounder_types"]
    jobs = study_jobs(grid, seeds, all_pools, extra, str(catalog.load("teacher_model")["fingerprint"]))
    path = project_path / REPORT_DIR / f"{name}_runs.csv"
    for folder in rows_from:
        logger.info("study %s: %d cell × seed runs imported from %s", name, import_rows(path, folder), folder)
    done = done_keys(read_runs(path), jobs, path)
    todo = [job for job in jobs if (job.cell, job.seed) not in done]
    logger.info("study %s: %d runs, %d already in %s, %d to go", name, len(jobs), len(done), path, len(todo))
    started = time.perf_counter()
    for i, job in enumerate(todo, start=1):
        run_started = time.perf_counter()
        need_zero_shot = not (read_runs(path)["cell"] == ZERO_SHOT).any()
        rows = run_job(job, project_path, env, extra, catalog, need_zero_shot)
        wall_s = time.perf_counter() - run_started
        if job.sweep:  # before the rows: a resumed study never holds a reference row without its curve
            append_runs(curves_path(path), catalog.load("wise_ft_curve").assign(seed=job.seed, settings_key=job.key))
        append_runs(path, rows.assign(wall_s=wall_s))
        own = rows[rows["cell"] == job.cell]
        _record_run(name, job, run_metrics(job, own, catalog.load(f"{job.method}.history"), wall_s))
        # One line per run (each takes minutes, between the runs' own Kedro logs): the shared progress line.
        elapsed = time.perf_counter() - started
        logger.info(
            "%s (%s seed %d took %s)",
            progress_line(f"study {name}", i, len(todo), elapsed, "runs"),
            job.cell,
            job.seed,
            format_duration(wall_s),
        )
    runs = read_runs(path)
    wanted = {job.cell for job in jobs}
    ours = runs[(runs["cell"] == ZERO_SHOT) | (runs["cell"].isin(wanted) & runs["seed"].isin(list(seeds)))]
    return ours, str(catalog.load("dataset_index")["finetune_dataset"])


# --------------------------------------------------------------------------------------------
# Outputs
# --------------------------------------------------------------------------------------------


def write_outputs(
    runs: pd.DataFrame, grid: StudyGrid, finetune_dataset: str, summary: dict[str, Any], folder: Path
) -> tuple[list[Path], pd.DataFrame]:
    """``<name>_table.{csv,md}``, ``<name>_recovered.png`` and ``<name>.json``; returns the paths and the table."""
    name = summary["name"]
    table = paired_table(runs, [cell.name for cell in grid.cells], grid.reference, confidence=grid.confidence)
    split = grid.selection.split or default_selection_split(list(runs["split"]), finetune_dataset)
    chosen, validation_frontier = chosen_cell(runs, table, grid, split, finetune_dataset, folder / f"{name}_curves.csv")
    summary |= {"selection": {"split": split, "rule": selection_rule(grid.selection, split), "chosen": chosen}}
    paths = [folder / f"{name}_table.csv", folder / f"{name}_table.md", folder / f"{name}_recovered.png"]
    with atomic_path(paths[0]) as tmp:
        table.to_csv(tmp, index=False)
    document = study_markdown(table, grid, split, chosen, summary)
    frontier = study_frontier(runs, folder / f"{name}_curves.csv", grid, finetune_dataset)
    if frontier is not None:
        primary = frontier[1][frontier[1]["method"] == chosen]
        document += f"\n## The selected cell at equal in-distribution accuracy (test)\n\n`{chosen}`:\n\n"
        document += frontier_markdown(primary, grid.reference, grid.confidence) + "\n"
        document += f"\n## Frontier\n\n{FRONTIER_NOTE.format(reference=grid.reference)}\n\n"
        document += frontier_markdown(frontier[1], grid.reference, grid.confidence) + "\n"
    if validation_frontier is not None:
        document += "\n## Frontier on validation (what the selection ranked)\n\n"
        document += frontier_markdown(validation_frontier, grid.reference, grid.confidence) + "\n"
    with atomic_path(paths[1]) as tmp:
        tmp.write_text(document, encoding="utf-8")
    with atomic_path(paths[2]) as tmp:
        plot_recovered(table).savefig(tmp, format="png")
    atomic_write_json(folder / f"{name}.json", summary)
    if frontier is not None:
        paths += [*write_frontier(*frontier, folder, name), folder / f"{name}_curves.csv"]
    return [*paths, folder / f"{name}.json", folder / f"{name}_runs.csv"], table


def chosen_cell(
    runs: pd.DataFrame, table: pd.DataFrame, grid: StudyGrid, split: str, finetune_dataset: str, curves_file: Path
) -> tuple[str, pd.DataFrame | None]:
    """The grid's selection rule applied on validation ``split``: by paired difference, or on the frontier
    (then also the validation frontier's intervals it ranked, for the report)."""
    selection = grid.selection
    if selection.by == "difference":
        return select_cell(table, split, selection.metric, selection.tie_break), None
    frontier = study_frontier(runs, curves_file, grid, finetune_dataset, split="val")
    if frontier is None:
        raise ValueError(f"selection.by: frontier needs the reference's WiSE-FT curves ({curves_file} is empty)")
    cells = [cell.name for cell in grid.cells]
    return select_on_frontier(frontier[1], cells, split, selection.metric, selection.tie_break), frontier[1]


def study_frontier(
    runs: pd.DataFrame, curves_file: Path, grid: StudyGrid, finetune_dataset: str, split: str = "test"
) -> tuple[pd.DataFrame, pd.DataFrame] | None:
    """Per-seed frontiers of every cell against that seed's reference curve on ``split``, and their
    intervals; None when no reference run swept its curve (rows of a study run before the frontier existed)."""
    curves = read_runs(curves_file)
    curves = curves[curves["seed"].isin(set(runs["seed"]))] if "seed" in curves else curves
    if curves.empty:
        logger.info("study: no reference WiSE-FT curves in %s, so no frontier", curves_file)
        return None
    frontiers = seed_frontiers(runs, curves, finetune_dataset, grid.reference, split, method_column="cell")
    return frontiers, frontier_intervals(frontiers, grid.confidence)


def table_metrics(table: pd.DataFrame) -> dict[str, float]:
    """``<cell>.<dataset>.<split>.<metric>_{diff,diff_ci_low,diff_ci_high,recovered}`` for MLflow."""
    columns = {
        "diff_mean": "diff",
        "diff_ci_low": "diff_ci_low",
        "diff_ci_high": "diff_ci_high",
        "recovered": "recovered",
    }
    out = {}
    for row in table.to_dict("records"):
        for column, suffix in columns.items():
            if pd.notna(row[column]):
                out[mlflow_metric_key(row["cell"], str(row["split"]), f"{row['metric']}_{suffix}")] = float(row[column])
    return out


def log_table_run(table: pd.DataFrame, paths: Sequence[Path], summary: Mapping[str, Any]) -> str:
    """The table as one MLflow run (tracking already pointed at the project by the sessions)."""
    import mlflow

    with mlflow.start_run(run_name=summary["name"]) as run:
        mlflow.set_tags({"study": summary["name"], "study.cell": "table"})
        mlflow.log_params(
            {
                "seeds": " ".join(map(str, summary["seeds"])),
                "cells": " ".join(summary["cells"])[:500],
                "grid": summary["grid"],
                "selected": summary["selection"]["chosen"],
            }
        )
        mlflow.log_metrics(table_metrics(table) | {"wall_s": float(summary["wall_s"])})
        for path in paths:
            mlflow.log_artifact(str(path), artifact_path=summary["name"])
        return run.info.run_id


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--env", default=None, help="Kedro configuration environment (its study.yml, if any)")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="fine-tuning seeds (default: the grid's)")
    parser.add_argument("--cells", nargs="+", default=None, help="run only these cells of the grid (default: all)")
    parser.add_argument("--name", default="study", help="stem of the files in data/08_reporting/ (default study)")
    parser.add_argument(
        "--grid", type=Path, default=None, help="the grid file (default conf/<env>/study.yml or conf/base/)"
    )
    parser.add_argument("--project-path", type=Path, default=Path.cwd(), help="Kedro project root (default: cwd)")
    parser.add_argument("--skip-upstream", action="store_true", help="reuse cached class_names/descriptions/teacher")
    parser.add_argument(
        "--rows-from",
        type=Path,
        nargs="+",
        default=[],
        metavar="FOLDER",
        help="first import this study's rows from other project copies' data/08_reporting (a study split by seeds)",
    )
    parser.add_argument(
        "--params",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="runtime parameters for every run (e.g. star.finetune.epochs=5)",
    )
    args = parser.parse_args(argv)
    project_path = args.project_path.resolve()
    try:
        path = (args.grid or grid_path(project_path, args.env)).resolve()
        grid = load_grid(path, str(path.relative_to(project_path)) if path.is_relative_to(project_path) else None)
        grid = grid.subset(args.cells) if args.cells else grid
        extra = parse_overrides(args.params)
    except (ValueError, FileNotFoundError) as error:
        parser.error(str(error))
    seeds = list(args.seeds or grid.seeds)
    if len(set(seeds)) != len(seeds) or any(s < 0 for s in seeds):
        parser.error(f"--seeds must be distinct non-negative integers: {seeds}")
    command = " ".join(["python -m starft_pipeline.study", *(argv if argv is not None else sys.argv[1:])])
    started = time.perf_counter()
    runs, finetune_dataset = run_study(
        grid, seeds, project_path, args.env, args.name, not args.skip_upstream, extra, args.rows_from
    )
    wall_s = time.perf_counter() - started
    run_walls = runs[runs["cell"] != ZERO_SHOT].drop_duplicates(["cell", "seed"])["wall_s"]
    summary = {
        "name": args.name,
        "command": command,
        "grid": str(grid.source),
        "seeds": seeds,
        "cells": [cell.name for cell in grid.cells],
        "reference": grid.reference,
        "params": extra,
        "runs": len(run_walls),
        "wall_s": round(wall_s, 1),
        "run_wall_s_mean": round(float(run_walls.mean()), 1),
    }
    paths, table = write_outputs(runs, grid, finetune_dataset, summary, project_path / REPORT_DIR)
    run_id = log_table_run(table, paths, summary)
    logger.info("study %s: %s (MLflow run %s), %.1f min", args.name, paths[1], run_id, wall_s / 60)
    print(paths[1].read_text(encoding="utf-8"))


if __name__ == "__main__":
    main()
