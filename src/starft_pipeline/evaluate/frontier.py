"""The accuracy frontier: each method's OOD metric against the reference's WiSE-FT curve at equal ID accuracy.

Robust fine-tuning trades in-distribution (ID) accuracy for robustness, and WiSE-FT's α sweep
between the zero-shot and the fine-tuned weights draws, at no training cost, a curve from one to
the other in the (ID accuracy, OOD metric) plane. A method helps only if its point lies *above*
that curve at its own ID accuracy (Taori et al. 2020, effective robustness; Wortsman et al. 2022).

* ID accuracy: ``adjusted_avg_acc`` (the training split's group proportions) on the fine-tuned data
  set's split (``test`` by default).
* OOD axes: on the same split, the fine-tuned data set's ``avg_acc`` and ``worst_group_acc`` (its
  balanced split, where the training correlation is broken: the shifted distribution), and every
  other (transfer) data set's ``worst_group_acc`` and ``avg_acc``.
* ``gain_over_curve``: a point's OOD value minus the curve's value at the point's ID accuracy,
  linearly interpolated between the curve's points sorted by ID accuracy. A point more accurate ID
  than the whole curve is compared with the curve's fine-tuned end (the reference itself, α = 1;
  ``outside_curve`` says ``above``): the curve is not extrapolated, and beating the reference on
  both axes is a gain. Below the curve's range (less accurate ID than zero-shot) the gain is NaN
  (``below``).

Accuracies are fractions, as in ``results.csv``. Pure pandas / numpy; no Kedro, no matplotlib.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from starft_pipeline.evaluate.results import require_columns
from starft_pipeline.models.heads import ZERO_SHOT

#: The ID axis: the fine-tuned data set's train-weighted average (WILDS ``adj_acc_avg``).
ID_METRIC = "adjusted_avg_acc"
#: OOD metrics of the fine-tuned data set's own (balanced, shifted) split, and of a transfer data set.
SHIFTED_METRICS: tuple[str, ...] = ("avg_acc", "worst_group_acc")
TRANSFER_METRICS: tuple[str, ...] = ("worst_group_acc", "avg_acc")
#: Exact column order of ``frontier.csv``.
FRONTIER_COLUMNS: tuple[str, ...] = (
    "kind",
    "method",
    "alpha",
    "id_split",
    "id_acc",
    "ood_split",
    "ood_metric",
    "ood_value",
    "curve_value",
    "gain_over_curve",
    "outside_curve",
)


@dataclass(frozen=True)
class Axis:
    """One OOD axis of the frontier: ``metric`` on ``split`` (``<dataset>/<split>``)."""

    split: str
    metric: str

    @property
    def label(self) -> str:
        return f"{self.split} {self.metric}"


def frontier_axes(splits: Sequence[str], finetune_dataset: str, split: str = "test") -> list[Axis]:
    """The OOD axes on ``split``: the fine-tuned data set's shifted metrics first, then each transfer data set's."""
    chosen = [s for s in dict.fromkeys(splits) if s.rpartition("/")[2] == split]
    own = f"{finetune_dataset}/{split}"
    if own not in chosen:
        raise ValueError(
            f"frontier: no {own!r} rows (the fine-tuned data set's {split} split gives the ID accuracy); "
            f"splits present: {sorted(set(splits))}. Evaluate that split (evaluation.splits) or set frontier.split."
        )
    axes = [Axis(own, metric) for metric in SHIFTED_METRICS]
    return axes + [Axis(s, metric) for s in chosen if s != own for metric in TRANSFER_METRICS]


def curve_value(curve_id: Sequence[float], curve_ood: Sequence[float], id_acc: float) -> tuple[float, str]:
    """The curve's OOD value at ``id_acc``, linear between its points sorted by ID accuracy, and where
    ``id_acc`` lies: ``""`` inside the curve's ID range; ``"above"`` beyond its most accurate point,
    whose value is returned (the fine-tuned end: the reference itself); ``"below"`` under its least
    accurate point (value NaN).

    Points sharing an ID accuracy are averaged; points with a missing coordinate are dropped.
    """
    points = pd.DataFrame({"x": np.asarray(curve_id, dtype=float), "y": np.asarray(curve_ood, dtype=float)}).dropna()
    if points.empty or math.isnan(id_acc):
        return math.nan, "no curve" if points.empty else "no ID accuracy"
    merged = points.groupby("x", sort=True)["y"].mean()
    x, y = merged.index.to_numpy(), merged.to_numpy()
    if id_acc < x[0]:
        return math.nan, "below"
    if id_acc > x[-1]:
        return float(y[-1]), "above"
    return float(np.interp(id_acc, x, y)), ""


def _curve_rows(curve: pd.DataFrame, reference: str, split: str) -> pd.DataFrame:
    """The reference's sweep on ``split`` with a ``<dataset>/<split>`` label per row."""
    require_columns(curve, ["method", "alpha", "dataset", "split", ID_METRIC], "wise_ft_curve")
    part = curve[(curve["method"] == reference) & (curve["split"] == split)]
    if part.empty:
        swept = sorted(set(curve["method"]))
        raise ValueError(
            f"frontier: the WiSE-FT sweep has no {reference!r} rows on {split!r} (swept: {swept}); add "
            f"{reference} to evaluation.wise_ft.methods and {split} to evaluation.wise_ft.splits"
        )
    return part.assign(split=part["dataset"] + "/" + part["split"])


def _wide(rows: pd.DataFrame, key: str, id_split: str, axis: Axis) -> pd.DataFrame:
    """Per ``key`` value: its ID accuracy (``id_split``) and its ``axis`` value."""
    id_acc = rows[rows["split"] == id_split].set_index(key)[ID_METRIC].rename("id_acc")
    ood = rows[rows["split"] == axis.split].set_index(key)[axis.metric].rename("ood_value")
    return pd.concat([id_acc, ood], axis=1, join="inner").reset_index()


def frontier_table(
    results: pd.DataFrame,
    curve: pd.DataFrame,
    finetune_dataset: str,
    reference: str = "flyp",
    split: str = "test",
) -> pd.DataFrame:
    """``frontier.csv``: per OOD axis, the reference's curve points (``kind`` curve, one per α), then
    zero-shot and every method of ``results`` (``kind`` zero_shot / method) with its gain over the curve.

    ``results`` is ``results.csv`` (``method``, ``split`` as ``<dataset>/<split>``, metrics);
    ``curve`` is ``wise_ft_curve.csv`` (``method``, ``alpha``, ``dataset``, ``split``, metrics).
    A curve point's gain is 0 by construction and left NaN.
    """
    require_columns(results, ["method", "split", ID_METRIC, *SHIFTED_METRICS], "results")
    sweep = _curve_rows(curve, reference, split)
    id_split = f"{finetune_dataset}/{split}"
    rows = []
    for axis in frontier_axes(results["split"].tolist(), finetune_dataset, split):
        points = _wide(sweep, "alpha", id_split, axis).sort_values("alpha")
        for point in points.itertuples(index=False):
            rows.append(_row("curve", reference, point.alpha, id_split, point.id_acc, axis, point.ood_value))
        for entry in _wide(results, "method", id_split, axis).itertuples(index=False):
            value, where = curve_value(points["id_acc"], points["ood_value"], entry.id_acc)
            kind = ZERO_SHOT if entry.method == ZERO_SHOT else "method"
            row = _row(kind, entry.method, math.nan, id_split, entry.id_acc, axis, entry.ood_value)
            rows.append(
                row | {"curve_value": value, "gain_over_curve": entry.ood_value - value, "outside_curve": where}
            )
    return pd.DataFrame(rows, columns=list(FRONTIER_COLUMNS))


def _row(kind: str, method: str, alpha: float, id_split: str, id_acc: float, axis: Axis, ood: float) -> dict:
    return {
        "kind": kind,
        "method": method,
        "alpha": alpha,
        "id_split": id_split,
        "id_acc": float(id_acc),
        "ood_split": axis.split,
        "ood_metric": axis.metric,
        "ood_value": float(ood),
        "curve_value": math.nan,
        "gain_over_curve": math.nan,
        "outside_curve": "",
    }
