"""Result rows and tables: what ``results.csv``, ``group_results.csv`` and ``class_results.csv`` hold.

Table conventions
-----------------
* ``results.csv`` has one row per (method, split): :data:`RESULTS_COLUMNS`.
* ``results.csv`` continues with bootstrap intervals, the data set's convention and its
  headline average: :data:`REPORT_COLUMNS`.
* ``group_results.csv`` has one row per (method, split, group): :data:`GROUP_COLUMNS`.
* ``class_results.csv`` has one row per (method, split, class): :data:`CLASS_COLUMNS`.
* Accuracies in the CSVs are fractions in ``[0, 1]`` (as produced by
  :mod:`starft_pipeline.evaluate.metrics`); only human-facing output (:mod:`starft_pipeline.evaluate.markdown`,
  mean ± std strings, :mod:`starft_pipeline.evaluate.figures`' axes) is in percent.

No Kedro, no matplotlib here.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import pandas as pd

from starft_pipeline.core.configs import bounded, check_fields
from starft_pipeline.evaluate.metrics import (
    GroupMetrics,
    bootstrap_ci,
    group_robust_metrics,
    headline_average,
    per_class_accuracy,
)

#: Exact column order of ``results.csv``.
RESULTS_COLUMNS: tuple[str, ...] = (
    "method",
    "split",
    "n",
    "avg_acc",
    "worst_group_acc",
    "adjusted_avg_acc",
    "mean_group_acc",
)
#: Exact column order of ``group_results.csv``.
GROUP_COLUMNS: tuple[str, ...] = ("method", "split", "group", "group_name", "n", "acc")
#: Metric columns aggregated by :func:`mean_std_table` by default.
SUMMARY_METRICS: tuple[str, ...] = ("avg_acc", "worst_group_acc", "adjusted_avg_acc", "mean_group_acc")
#: Metrics that get a bootstrap confidence interval (:func:`starft_pipeline.evaluate.metrics.bootstrap_ci`).
CI_METRICS: tuple[str, ...] = ("avg_acc", "worst_group_acc", "adjusted_avg_acc")
#: ``<metric>_ci_low``, ``<metric>_ci_high`` for each of :data:`CI_METRICS`.
CI_COLUMNS: tuple[str, ...] = tuple(f"{m}_ci_{end}" for m in CI_METRICS for end in ("low", "high"))
#: Every ``results.csv`` column: the required ones first, then intervals, convention and headline average.
REPORT_COLUMNS: tuple[str, ...] = (*RESULTS_COLUMNS, *CI_COLUMNS, "convention", "headline_avg_acc")
#: The numeric ``results.csv`` columns logged as MLflow metrics.
METRIC_COLUMNS: tuple[str, ...] = (*SUMMARY_METRICS, *CI_COLUMNS, "headline_avg_acc")
#: Exact column order of ``class_results.csv``.
CLASS_COLUMNS: tuple[str, ...] = ("method", "split", "class", "class_name", "n", "acc")

#: How a missing value reads in human-facing text.
NAN_TEXT = "n/a"


def require_columns(df: pd.DataFrame, columns: Sequence[str], name: str) -> None:
    """``ValueError`` naming the columns ``df`` (called ``name`` in the message) lacks."""
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"`{name}` lacks column(s) {missing}; it has {list(df.columns)}.")


def mlflow_metric_key(method: str, split: str, metric: str) -> str:
    """``<method>.<dataset>.<split>.<metric>`` with characters MLflow refuses (e.g. ``+``) as ``_``."""
    return re.sub(r"[^\w\-. :/]", "_", f"{method}.{split.replace('/', '.')}.{metric}")


def results_rows(method: str, split: str, metrics: GroupMetrics) -> dict[str, Any]:
    """One ``results.csv`` row (keys in :data:`RESULTS_COLUMNS` order; accuracies as fractions)."""
    return {
        "method": method,
        "split": split,
        "n": int(metrics.n),
        "avg_acc": float(metrics.avg_acc),
        "worst_group_acc": float(metrics.worst_group_acc),
        "adjusted_avg_acc": float(metrics.adjusted_avg_acc),
        "mean_group_acc": float(metrics.mean_group_acc),
    }


def group_rows(
    method: str,
    split: str,
    metrics: GroupMetrics,
    group_names: Sequence[str] | Mapping[int, str],
) -> list[dict[str, Any]]:
    """``group_results.csv`` rows, one per group in ascending group id (keys in :data:`GROUP_COLUMNS` order).

    ``group_names`` is indexed by group id (e.g. ``metrics.WATERBIRDS_GROUP_NAMES``); a
    group with no name raises ``ValueError``.
    """
    rows = []
    for g in sorted(metrics.group_acc):
        try:
            name = group_names[g]
        except (IndexError, KeyError):
            raise ValueError(f"`group_names` has no name for group {g}.") from None
        rows.append(
            {
                "method": method,
                "split": split,
                "group": int(g),
                "group_name": str(name),
                "n": int(metrics.group_n.get(g, 0)),
                "acc": float(metrics.group_acc[g]),
            }
        )
    return rows


def ci_columns(ci: Mapping[str, tuple[float, float]]) -> dict[str, float]:
    """:data:`CI_COLUMNS` from :func:`~starft_pipeline.evaluate.metrics.bootstrap_ci`'s ``{metric: (low, high)}``."""
    return {f"{m}_ci_{end}": float(ci[m][i]) for m in CI_METRICS for i, end in enumerate(("low", "high"))}


def class_rows(
    method: str,
    split: str,
    y_true: Sequence[int] | np.ndarray,
    y_pred: Sequence[int] | np.ndarray,
    class_names: Sequence[str],
) -> list[dict[str, Any]]:
    """``class_results.csv`` rows, one per class in label order (keys in :data:`CLASS_COLUMNS` order)."""
    acc = per_class_accuracy(y_true, y_pred, len(class_names))
    counts = np.bincount(np.asarray(y_true, dtype=np.int64), minlength=len(class_names))
    return [
        {"method": method, "split": split, "class": k, "class_name": str(name), "n": int(counts[k]), "acc": acc[k]}
        for k, name in enumerate(class_names)
    ]


@dataclass(frozen=True)
class BootstrapSettings:
    """Percentile bootstrap of :func:`~starft_pipeline.evaluate.metrics.bootstrap_ci` (parameters ``evaluation.bootstrap``)."""

    n_resamples: int = bounded(1000, ge=1)
    confidence: float = bounded(0.95, gt=0, lt=1)
    seed: int = bounded(0, ge=0)

    def __post_init__(self) -> None:
        check_fields(self, "evaluation.bootstrap.")


class GroupLayout(Protocol):
    """What a split's report needs to know about its data set (``evaluate.EvalTask`` has it)."""

    @property
    def class_names(self) -> Sequence[str]: ...

    @property
    def group_names(self) -> Sequence[str]: ...

    @property
    def train_group_counts(self) -> Sequence[int]: ...


def split_report(
    method: str,
    split: str,
    y_true: Sequence[int] | np.ndarray,
    y_pred: Sequence[int] | np.ndarray,
    groups: Sequence[int] | np.ndarray,
    layout: GroupLayout,
    convention: str = "generic",
    bootstrap: BootstrapSettings = BootstrapSettings(),
    allow_empty_groups: bool = False,
) -> dict[str, list[dict[str, Any]]]:
    """Rows of ``results.csv`` (one), ``group_results.csv`` and ``class_results.csv`` for one evaluated split.

    The training weights of the adjusted average are ``layout.train_group_counts`` (the training
    split actually loaded); ``convention`` picks the headline average
    (:func:`~starft_pipeline.evaluate.metrics.headline_average`). ``allow_empty_groups`` as in
    :func:`~starft_pipeline.evaluate.metrics.group_robust_metrics`.
    """
    n_groups, counts = len(layout.group_names), np.asarray(layout.train_group_counts)
    metrics = group_robust_metrics(
        y_true,
        y_pred,
        groups,
        n_groups,
        counts,
        allow_empty_groups=allow_empty_groups,
        n_classes=len(layout.class_names),
    )
    ci = bootstrap_ci(
        y_true,
        y_pred,
        groups,
        n_groups,
        counts,
        bootstrap.n_resamples,
        bootstrap.confidence,
        bootstrap.seed,
        allow_empty_groups=allow_empty_groups,
    )
    result = {
        **results_rows(method, split, metrics),
        **ci_columns(ci),
        "convention": convention,
        "headline_avg_acc": headline_average(metrics, convention),  # type: ignore[arg-type]
    }
    return {
        "results": [result],
        "groups": group_rows(method, split, metrics, layout.group_names),
        "classes": class_rows(method, split, y_true, y_pred, layout.class_names),
    }


def split_parts(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` with ``dataset`` and ``subset`` columns from its ``"<dataset>/<split>"`` labels in ``split``.

    An existing ``dataset`` column is kept; a label without ``/`` is its own subset.
    """
    labels = df["split"].astype(str)
    out = df.assign(subset=labels.map(lambda s: s.rpartition("/")[2]))
    if "dataset" not in out.columns:
        out = out.assign(dataset=labels.map(lambda s: s.rpartition("/")[0]))
    return out


def mean_std_table(
    df: pd.DataFrame,
    by: Sequence[str] = ("method", "split"),
    metrics: Sequence[str] = SUMMARY_METRICS,
    *,
    percent: bool = True,
    decimals: int = 1,
) -> pd.DataFrame:
    """Aggregate rows (typically one per seed) into mean and sample std (ddof=1) per ``by`` group.

    Returns one row per ``by`` combination (in order of first appearance) with columns
    ``*by, n_seeds``, then for each metric ``m``: ``m`` (a string such as ``"87.3 ± 1.2"``),
    ``m_mean`` and ``m_std`` (numbers on the same scale as the string: percent when
    ``percent=True``). ``n_seeds`` counts rows per group; missing metric values are skipped.
    With a single row the std is ``nan`` and the string shows the mean alone (``"87.3"``).
    """
    by = list(by)
    metrics = list(metrics)
    require_columns(df, [*by, *metrics], "df")
    scale = 100.0 if percent else 1.0
    grouped = df.groupby(by, sort=False, dropna=False)
    out = grouped.size().rename("n_seeds").reset_index()
    for m in metrics:
        values = pd.to_numeric(df[m], errors="coerce") * scale
        stats = values.groupby([df[c] for c in by], sort=False, dropna=False).agg(["mean", "std"])
        stats = stats.reset_index(drop=True)
        mean, std = stats["mean"].to_numpy(), stats["std"].to_numpy()
        out[m] = [_mean_std_text(mu, sd, decimals) for mu, sd in zip(mean, std, strict=True)]
        out[f"{m}_mean"] = mean
        out[f"{m}_std"] = std
    return out


def _mean_std_text(mean: float, std: float, decimals: int) -> str:
    if math.isnan(mean):
        return NAN_TEXT
    if math.isnan(std):
        return f"{mean:.{decimals}f}"
    return f"{mean:.{decimals}f} ± {std:.{decimals}f}"
