"""The pre-registered study's grid and its paired statistics (StarFT − FLYP, by seed). No Kedro here.

* :func:`load_grid` reads the grid file (``conf/<env>/study.yml``): a reference method, the seeds, the
  selection rule and the named cells (a StarFT namespace plus ``finetune`` overrides); an unknown key
  or namespace is an error naming the file and the cell.
* :func:`paired_table`: per split × metric × cell, the reference's and the cell's means over seeds,
  the mean paired difference (cell − reference, paired by seed) with a t-interval on n − 1 degrees of
  freedom, and the fraction of the reference's erosion from zero-shot that the cell recovers.
* :func:`seed_frontiers` / :func:`frontier_intervals`: each point's OOD metric minus the reference's
  WiSE-FT curve at its ID accuracy (``evaluate.frontier``), per seed against that seed's curve, then
  its mean over seeds with the same t-interval.
* :func:`select_cell`: the setting chosen on a validation split only; :func:`study_markdown` and
  :func:`plot_recovered` render the outcome.

Accuracies are fractions in [0, 1], as in ``results.csv``; the Markdown shows points (percent).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from starft_pipeline.core.configs import known_keys
from starft_pipeline.evaluate.markdown import markdown_table
from starft_pipeline.models.heads import ZERO_SHOT
from starft_pipeline.train.finetune import FinetuneConfig
from starft_pipeline.train.methods import teacher_method_names

if TYPE_CHECKING:  # matplotlib is imported by the function that draws
    from matplotlib.figure import Figure

#: The namespaces a cell may override: the methods with a teacher (StarFT and its plain-KL variant).
CELL_METHODS = teacher_method_names()
#: ``confounder_types: all`` in a cell: every pool the descriptions stage writes (``descriptions.confounder_types``).
ALL_POOLS = "all"
#: ``adjusted_avg_acc`` on the fine-tuned data set's test split is the in-distribution accuracy (the frontier's x).
STUDY_METRICS = ("worst_group_acc", "avg_acc", "minority_group_acc", "adjusted_avg_acc")
#: Keys a cell may not set: the runner sets the seed, and the method is the cell's namespace.
RUNNER_KEYS = ("seed", "method")
GRID_KEYS = {"reference", "seeds", "confidence", "selection", "cells"}
SELECTION_KEYS = {"split", "metric", "tie_break", "by"}
#: What a cell is ranked by (``selection.by``; a key named ``on`` would read as true in YAML 1.1): its
#: paired difference with the reference, or its gain over the reference's WiSE-FT curve at its own
#: in-distribution accuracy (the frontier, on validation splits).
SELECTION_RULES = {
    "difference": (
        "the cell with the highest mean paired difference (cell − reference) in `{metric}` on `{split}`, "
        "ties broken by the mean paired difference in `{tie_break}` on the same split; validation data only"
    ),
    "frontier": (
        "the cell with the highest mean gain over the reference's WiSE-FT curve, at the cell's own "
        "in-distribution accuracy on the fine-tuned data set's val split, in `{metric}` on `{split}`, "
        "ties broken by the mean gain in `{tie_break}` on the same split; validation data only"
    ),
}


# --------------------------------------------------------------------------------------------
# The grid
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Cell:
    """One setting: ``method`` (a StarFT namespace) trained with ``overrides`` of its ``finetune`` block."""

    name: str
    method: str
    overrides: dict[str, Any] = field(default_factory=dict)

    def finetune_params(self, all_pools: Sequence[str]) -> dict[str, Any]:
        """The overrides with ``confounder_types: all`` replaced by ``all_pools``."""
        params = dict(self.overrides)
        if params.get("confounder_types") == ALL_POOLS:
            params["confounder_types"] = list(all_pools)
        return params


@dataclass(frozen=True)
class Selection:
    split: str | None = None  # None: the first validation split of a transfer data set (default_selection_split)
    metric: str = "worst_group_acc"
    tie_break: str = "avg_acc"
    by: str = "difference"  # a key of SELECTION_RULES

    def __post_init__(self) -> None:
        if self.by not in SELECTION_RULES:
            raise ValueError(f"selection.by must be one of {list(SELECTION_RULES)}, got {self.by!r}")


@dataclass(frozen=True)
class StudyGrid:
    reference: str
    seeds: tuple[int, ...]
    cells: tuple[Cell, ...]
    selection: Selection = Selection()
    confidence: float = 0.95
    source: str = "<grid>"

    def subset(self, names: Sequence[str]) -> StudyGrid:
        """The grid restricted to ``names`` (in the grid's order); an unknown name is an error."""
        known = [cell.name for cell in self.cells]
        unknown = [name for name in names if name not in known]
        if unknown:
            raise ValueError(f"--cells {unknown} are not cells of {self.source}; known: {known}")
        cells = tuple(cell for cell in self.cells if cell.name in set(names))
        return StudyGrid(self.reference, self.seeds, cells, self.selection, self.confidence, self.source)


def _seeds(value: Any, where: str) -> tuple[int, ...]:
    if not isinstance(value, list) or not value:
        raise ValueError(f"{where}: `seeds` must be a non-empty list of integers, got {value!r}")
    if any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in value):
        raise ValueError(f"{where}: `seeds` must hold non-negative integers, got {value!r}")
    if len(set(value)) != len(value):
        raise ValueError(f"{where}: `seeds` has duplicates: {value!r}")
    return tuple(value)


def parse_cell(name: Any, spec: Any, source: str) -> Cell:
    """One cell of the grid file; every problem names ``source`` and the cell."""
    where = f"{source}, cell {name!r}"
    if not isinstance(name, str) or not name or "/" in name:
        raise ValueError(f"{where}: a cell name must be a non-empty string without '/'")
    if not isinstance(spec, Mapping) or "method" not in spec:
        raise ValueError(f"{where}: expected a mapping with `method` ({' or '.join(CELL_METHODS)}) and overrides")
    method = spec["method"]
    if method not in CELL_METHODS:
        raise ValueError(f"{where}: unknown method namespace {method!r}; a cell trains one of {list(CELL_METHODS)}")
    overrides = {key: value for key, value in spec.items() if key != "method"}
    fixed = sorted(set(overrides) & set(RUNNER_KEYS))
    if fixed:
        raise ValueError(f"{where}: {fixed} cannot be set in a cell (the runner sets the seed; `method` names it)")
    unknown = sorted(set(overrides) - known_keys(FinetuneConfig))
    if unknown:
        allowed = sorted(known_keys(FinetuneConfig) - set(RUNNER_KEYS))
        raise ValueError(f"{where}: unknown key(s) {unknown}; a cell sets `method` and `finetune` keys: {allowed}")
    pools = overrides.get("confounder_types")
    if pools is not None and pools != ALL_POOLS and not (isinstance(pools, list) and pools):
        raise ValueError(f"{where}: `confounder_types` must be a non-empty list or `{ALL_POOLS}`, got {pools!r}")
    return Cell(name, method, overrides)


def parse_grid(raw: Any, source: str = "<grid>") -> StudyGrid:
    """The grid from the file's parsed YAML (its top-level ``study:`` block)."""
    if not isinstance(raw, Mapping) or not isinstance(raw.get("study"), Mapping):
        raise ValueError(f"{source}: expected a top-level `study:` mapping")
    study = raw["study"]
    unknown = sorted(set(study) - GRID_KEYS)
    if unknown:
        raise ValueError(f"{source}: unknown key(s) {unknown} under `study`; known: {sorted(GRID_KEYS)}")
    reference = study.get("reference", "flyp")
    if not isinstance(reference, str) or reference in CELL_METHODS:
        raise ValueError(f"{source}: `reference` must name a method without the regulariser (e.g. flyp)")
    cells = study.get("cells")
    if not isinstance(cells, Mapping) or not cells:
        raise ValueError(f"{source}: `cells` must be a non-empty mapping of cell name → settings")
    selection = study.get("selection") or {}
    bad = sorted(set(selection) - SELECTION_KEYS) if isinstance(selection, Mapping) else ["<not a mapping>"]
    if bad:
        raise ValueError(f"{source}: unknown key(s) {bad} under `selection`; known: {sorted(SELECTION_KEYS)}")
    confidence = study.get("confidence", 0.95)
    if isinstance(confidence, bool) or not isinstance(confidence, float) or not 0 < confidence < 1:
        raise ValueError(f"{source}: `confidence` must be a number in (0, 1), got {confidence!r}")
    return StudyGrid(
        reference=reference,
        seeds=_seeds(study.get("seeds", [0, 1, 2, 3, 4]), source),
        cells=tuple(parse_cell(name, spec, source) for name, spec in cells.items()),
        selection=Selection(**selection),
        confidence=confidence,
        source=source,
    )


def load_grid(path: str | Path, source: str | None = None) -> StudyGrid:
    """The grid in ``path``; errors and reports name it as ``source`` (default: the path)."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"study grid {path} does not exist (the runner reads conf/<env>/study.yml, else conf/base/study.yml)"
        )
    return parse_grid(yaml.safe_load(path.read_text(encoding="utf-8")), source or str(path))


# --------------------------------------------------------------------------------------------
# Paired statistics
# --------------------------------------------------------------------------------------------


def t_quantile(dof: int, confidence: float = 0.95) -> float:
    """The two-sided t quantile, e.g. ``t_quantile(2) == 4.303``."""
    from scipy.stats import t

    return float(t.ppf(0.5 + confidence / 2, dof))


def t_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """Mean and ``confidence`` t-interval (n − 1 degrees of freedom); NaN bounds for fewer than 2 values."""
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        return math.nan, math.nan, math.nan
    mean = float(x.mean())
    if x.size < 2:
        return mean, math.nan, math.nan
    half = t_quantile(x.size - 1, confidence) * float(x.std(ddof=1)) / math.sqrt(x.size)
    return mean, mean - half, mean + half


def recovered_fraction(
    cell: pd.Series, reference: pd.Series, zero_shot: float, confidence: float = 0.95
) -> tuple[float, float, float, str]:
    """Per seed k, (cell_k − reference_k) / (zero-shot − reference_k); their mean and t-interval.

    ``cell`` and ``reference`` are indexed by seed (the same seeds). Each seed's ratio uses that seed's
    own erosion, so the reference's noise is in the interval. NaN with a note when zero-shot is
    missing or a seed has no erosion to recover (zero-shot − reference ≤ 0: the ratio is undefined).
    """
    if math.isnan(zero_shot):
        return math.nan, math.nan, math.nan, "no zero-shot result"
    erosion = zero_shot - reference
    if (erosion <= 0).any():
        worst = float(erosion.min())
        return math.nan, math.nan, math.nan, f"no erosion in a seed: zero-shot − reference = {100 * worst:+.1f} points"
    mean, low, high = t_interval(((cell - reference) / erosion).tolist(), confidence)
    return mean, low, high, ""


def _by_seed(runs: pd.DataFrame, cell: str, split: str, metric: str) -> pd.Series:
    part = runs[(runs["cell"] == cell) & (runs["split"] == split)]
    return pd.to_numeric(part.set_index("seed")[metric], errors="coerce").dropna()


def _metrics_in(runs: pd.DataFrame, metrics: Sequence[str]) -> list[str]:
    return [m for m in metrics if m in runs.columns and pd.to_numeric(runs[m], errors="coerce").notna().any()]


def paired_table(
    runs: pd.DataFrame,
    cells: Sequence[str],
    reference: str = "flyp",
    metrics: Sequence[str] = STUDY_METRICS,
    confidence: float = 0.95,
) -> pd.DataFrame:
    """One row per split × metric × cell (splits in run order), paired by seed against ``reference``.

    ``runs`` has one row per (cell, seed, split) with a column per metric; the reference's rows have
    ``cell == reference`` and zero-shot's ``cell == "zero_shot"`` (any seed: it does not depend on it).
    """
    rows = []
    splits = list(dict.fromkeys(runs["split"]))
    for split in splits:
        for metric in _metrics_in(runs, metrics):
            ref = _by_seed(runs, reference, split, metric)
            zero_shot = float(_by_seed(runs, ZERO_SHOT, split, metric).mean())
            for cell in cells:
                values = _by_seed(runs, cell, split, metric)
                seeds = sorted(set(values.index) & set(ref.index))
                diff = t_interval((values[seeds] - ref[seeds]).tolist(), confidence)
                ref_mean = float(ref[seeds].mean()) if seeds else math.nan
                recovered = recovered_fraction(values[seeds], ref[seeds], zero_shot, confidence)
                rows.append(
                    {
                        "split": split,
                        "metric": metric,
                        "cell": cell,
                        "n_seeds": len(seeds),
                        "zero_shot": zero_shot,
                        "reference_mean": ref_mean,
                        "cell_mean": float(values[seeds].mean()) if seeds else math.nan,
                        "diff_mean": diff[0],
                        "diff_ci_low": diff[1],
                        "diff_ci_high": diff[2],
                        "recovered": recovered[0],
                        "recovered_ci_low": recovered[1],
                        "recovered_ci_high": recovered[2],
                        "note": recovered[3],
                    }
                )
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------------------------
# The frontier over seeds: gain over the reference's WiSE-FT curve at equal ID accuracy
# --------------------------------------------------------------------------------------------

#: Columns of :func:`frontier_intervals`.
FRONTIER_INTERVAL_COLUMNS = (
    "method",
    "ood_split",
    "ood_metric",
    "n_seeds",
    "n_outside",
    "id_acc_mean",
    "ood_mean",
    "gain_mean",
    "gain_ci_low",
    "gain_ci_high",
)


def seed_frontiers(
    results: pd.DataFrame,
    curves: pd.DataFrame,
    finetune_dataset: str,
    reference: str = "flyp",
    split: str = "test",
    method_column: str = "method",
) -> pd.DataFrame:
    """Each seed's frontier (:func:`~starft_pipeline.evaluate.frontier.frontier_table`) with a ``seed`` column.

    ``results`` has one row per (``method_column``, seed, split) — ``results.csv`` rows plus ``seed``
    (the methods table) or the study's rows (``method_column="cell"``); ``curves`` the reference's
    ``wise_ft_curve.csv`` rows plus ``seed``. A seed's points are compared with *that seed's* curve, so
    each gain is already paired by seed. Zero-shot rows (seed-independent) join every seed. Seeds
    without a curve are left out.
    """
    from starft_pipeline.evaluate.frontier import ZERO_SHOT as FRONTIER_ZERO_SHOT
    from starft_pipeline.evaluate.frontier import frontier_table

    rows = results if method_column == "method" else results.drop(columns=["method"], errors="ignore")
    rows = rows.rename(columns={method_column: "method"})
    zero_shot = rows[rows["method"] == FRONTIER_ZERO_SHOT].drop_duplicates(subset=["split"])
    frames = []
    for seed in sorted(set(curves["seed"])):
        own = rows[(rows["seed"] == seed) & (rows["method"] != FRONTIER_ZERO_SHOT)]
        if own.empty:
            continue
        table = frontier_table(
            pd.concat([zero_shot, own]), curves[curves["seed"] == seed], finetune_dataset, reference, split
        )
        frames.append(table.assign(seed=seed))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def frontier_intervals(frontiers: pd.DataFrame, confidence: float = 0.95) -> pd.DataFrame:
    """Per method × OOD axis: the mean gain over the reference's curve across seeds with a t-interval.

    ``frontiers`` is :func:`seed_frontiers`' output. The gain of each seed is against that seed's own
    curve (paired by seed). Seeds where the method's ID accuracy lies outside the curve's range are
    counted in ``n_outside``: above it the gain is against the curve's fine-tuned end and averaged,
    below it there is no gain. Curve points are left out.
    """
    points = frontiers[frontiers["kind"] != "curve"]
    rows = []
    for (method, split, metric), part in points.groupby(["method", "ood_split", "ood_metric"], sort=False):
        gains = pd.to_numeric(part["gain_over_curve"], errors="coerce").dropna()
        mean, low, high = t_interval(gains.tolist(), confidence)
        rows.append(
            {
                "method": method,
                "ood_split": split,
                "ood_metric": metric,
                "n_seeds": len(gains),
                "n_outside": int((part["outside_curve"].fillna("") != "").sum()),
                "id_acc_mean": float(part["id_acc"].mean()),
                "ood_mean": float(part["ood_value"].mean()),
                "gain_mean": mean,
                "gain_ci_low": low,
                "gain_ci_high": high,
            }
        )
    return pd.DataFrame(rows, columns=list(FRONTIER_INTERVAL_COLUMNS))


def frontier_markdown(intervals: pd.DataFrame, reference: str = "flyp", confidence: float = 0.95) -> str:
    """The frontier intervals as a Markdown table in points."""
    shown = pd.DataFrame(
        {
            "method": intervals["method"],
            "OOD": intervals["ood_split"] + " " + intervals["ood_metric"],
            "n_seeds": intervals["n_seeds"],
            "outside curve": intervals["n_outside"],
            "ID (%)": intervals["id_acc_mean"].map(_points),
            "OOD (%)": intervals["ood_mean"].map(_points),
            f"gain over {reference} WiSE-FT (points) [{confidence:.0%} CI]": [
                _interval(r.gain_mean, r.gain_ci_low, r.gain_ci_high, 100, "+.1f") for r in intervals.itertuples()
            ],
        }
    )
    return markdown_table(shown)


# --------------------------------------------------------------------------------------------
# Selection on validation data
# --------------------------------------------------------------------------------------------


def default_selection_split(splits: Sequence[str], finetune_dataset: str) -> str:
    """The first ``<dataset>/val`` of a data set other than the fine-tuning one (the transfer task),
    else the fine-tuning data set's ``val``."""
    vals = [s for s in dict.fromkeys(splits) if s.rpartition("/")[2] == "val"]
    transfer = [s for s in vals if s.rpartition("/")[0] != finetune_dataset]
    if not (transfer or vals):
        raise ValueError(f"no validation split among {list(splits)}: the study selects on validation data only")
    return (transfer or vals)[0]


def selection_rule(selection: Selection, split: str) -> str:
    return SELECTION_RULES[selection.by].format(metric=selection.metric, split=split, tie_break=selection.tie_break)


def _refuse_test(split: str) -> None:
    if split.rpartition("/")[2] == "test":
        raise ValueError(f"selection on {split!r}: choose on a validation split, never on test")


def _best(scores: Mapping[str, pd.Series], metric: str, tie_break: str, split: str) -> str:
    """The index label ranked first by ``scores[metric]`` then ``scores[tie_break]`` (float noise is not a win)."""
    ranked = pd.DataFrame({key: value.round(12) for key, value in scores.items()})
    ranked = ranked.dropna(subset=[metric]).fillna({tie_break: -math.inf})
    if ranked.empty:
        raise ValueError(f"selection: no cell has a `{metric}` value on {split!r}")
    return str(ranked.sort_values([metric, tie_break], ascending=False, kind="stable").index[0])


def select_cell(table: pd.DataFrame, split: str, metric: str = "worst_group_acc", tie_break: str = "avg_acc") -> str:
    """The cell the pre-registered rule picks: highest mean paired ``metric`` difference on ``split``
    (a validation split), ties by ``tie_break``'s. Test splits are refused."""
    _refuse_test(split)
    scores = {}
    for key in (metric, tie_break):
        part = table[(table["split"] == split) & (table["metric"] == key)]
        if part.empty:
            raise ValueError(f"selection: no `{key}` rows on split {split!r}; splits: {sorted(set(table['split']))}")
        scores[key] = part.set_index("cell")["diff_mean"]
    return _best(scores, metric, tie_break, split)


def select_on_frontier(
    intervals: pd.DataFrame,
    cells: Sequence[str],
    split: str,
    metric: str = "worst_group_acc",
    tie_break: str = "avg_acc",
) -> str:
    """The cell among ``cells`` with the highest mean gain over the reference's curve in ``metric`` on
    ``split`` (:func:`frontier_intervals` of validation frontiers), ties by ``tie_break``'s gain."""
    _refuse_test(split)
    scores = {}
    for key in (metric, tie_break):
        part = intervals[
            (intervals["ood_split"] == split) & (intervals["ood_metric"] == key) & intervals["method"].isin(cells)
        ]
        if part.empty:
            raise ValueError(
                f"selection: no frontier rows for `{key}` on {split!r}; axes: "
                f"{sorted(set(intervals['ood_split'] + ' ' + intervals['ood_metric']))}"
            )
        scores[key] = part.set_index("method")["gain_mean"]
    return _best(scores, metric, tie_break, split)


def matching_test_split(split: str) -> str:
    """``<dataset>/val`` → ``<dataset>/test``."""
    return f"{split.rpartition('/')[0]}/test"


# --------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------


def _points(value: float, signed: bool = False) -> str:
    if value is None or math.isnan(value):
        return "n/a"
    return f"{100 * value:+.1f}" if signed else f"{100 * value:.1f}"


def _interval(mean: float, low: float, high: float, scale: float, fmt: str) -> str:
    if math.isnan(mean):
        return "n/a"
    text = format(scale * mean, fmt)
    if math.isnan(low):
        return text
    return f"{text} [{format(scale * low, fmt)}, {format(scale * high, fmt)}]"


def display_table(table: pd.DataFrame, reference: str = "flyp") -> pd.DataFrame:
    """The paired table as strings: points for accuracies and differences, a fraction for recovered."""
    return pd.DataFrame(
        {
            "split": table["split"],
            "metric": table["metric"],
            "cell": table["cell"],
            "n_seeds": table["n_seeds"],
            "zero-shot (%)": table["zero_shot"].map(_points),
            f"{reference} (%)": table["reference_mean"].map(_points),
            "cell (%)": table["cell_mean"].map(_points),
            f"cell − {reference} (points) [CI]": [
                _interval(r.diff_mean, r.diff_ci_low, r.diff_ci_high, 100, "+.1f") for r in table.itertuples()
            ],
            "recovered [CI]": [
                _interval(r.recovered, r.recovered_ci_low, r.recovered_ci_high, 1, "+.2f") if not r.note else r.note
                for r in table.itertuples()
            ],
        }
    )


def selected_rows(table: pd.DataFrame, cell: str) -> pd.DataFrame:
    """The chosen cell's rows on every test split."""
    return table[(table["cell"] == cell) & (table["split"].str.rpartition("/")[2] == "test")]


def study_markdown(
    table: pd.DataFrame,
    grid: StudyGrid,
    selection_split: str,
    chosen: str,
    header: Mapping[str, Any],
) -> str:
    """The study's report: how it was run, the selected cell with its test numbers, then every split."""
    reference = grid.reference
    lines = [
        f"# Study `{header['name']}`",
        "",
        f"`{header['command']}` — grid `{grid.source}`, seeds {list(header['seeds'])}, "
        f"{header['runs']} runs, this invocation's wall time {header['wall_s'] / 60:.1f} min (runs already in the rows file are not rerun).",
        "",
        f"Paired by seed: cell − {reference}, mean over seeds with a {grid.confidence:.0%} t-interval (n − 1 dof). "
        f"Recovered = mean over seeds of (cell − {reference}) / (zero-shot − {reference}), each seed with its own "
        f"{reference} run, with a {grid.confidence:.0%} t-interval over the per-seed ratios.",
        "",
        "## Selected on validation",
        "",
        f"Rule: {selection_rule(grid.selection, selection_split)}. **Selected: `{chosen}`**. Its test numbers:",
        "",
        markdown_table(display_table(selected_rows(table, chosen), reference)),
        "",
        "## Every split",
    ]
    for split, part in table.groupby("split", sort=False):
        lines += ["", f"### {split}", "", markdown_table(display_table(part, reference))]
    return "\n".join(lines) + "\n"


def plot_recovered(table: pd.DataFrame, metrics: Sequence[str] = ("worst_group_acc", "avg_acc")) -> Figure:
    """Recovered fraction per cell with its interval, one panel per test split, a colour per metric."""
    from starft_pipeline.evaluate.figures import _new_figure, method_colors

    test = table[(table["split"].str.rpartition("/")[2] == "test") & table["metric"].isin(list(metrics))]
    splits = list(dict.fromkeys(test["split"]))
    cells = list(dict.fromkeys(table["cell"]))
    colors = method_colors(list(metrics))
    fig = _new_figure((max(6.0, 0.55 * len(cells) + 2), 3.2 * max(1, len(splits))))
    axes = fig.subplots(max(1, len(splits)), 1, squeeze=False)[:, 0]
    x = np.arange(len(cells), dtype=float)
    for ax, split in zip(axes, splits, strict=False):
        for i, metric in enumerate(metrics):
            part = test[(test["split"] == split) & (test["metric"] == metric)].set_index("cell").reindex(cells)
            mean = part["recovered"].to_numpy(dtype=float)
            low = mean - part["recovered_ci_low"].to_numpy(dtype=float)
            high = part["recovered_ci_high"].to_numpy(dtype=float) - mean
            offset = x + 0.2 * (i - (len(metrics) - 1) / 2)  # the metrics side by side at each cell
            ax.errorbar(offset, mean, yerr=[low, high], fmt="o", color=colors[metric], capsize=3, label=metric)
        ax.set_xlim(-0.6, len(cells) - 0.4)
        ax.axhline(0.0, color="grey", linewidth=0.8)
        ax.axhline(1.0, color="grey", linewidth=0.8, linestyle=":")
        ax.set_title(split)
        ax.set_ylabel("recovered fraction")
        ax.set_xticks(x, cells, rotation=30, ha="right", fontsize=8)
    axes[0].legend(fontsize=8, loc="best")
    fig.tight_layout()
    return fig
