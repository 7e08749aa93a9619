"""Markdown: GitHub tables of data frames and ``results.md`` (accuracies in percent). No Kedro here."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from numbers import Integral, Real
from typing import Any

import numpy as np
import pandas as pd

from starft_pipeline.evaluate.results import NAN_TEXT, RESULTS_COLUMNS, require_columns


def _is_nan(value: Any) -> bool:
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):  # arrays, lists: not a scalar missing value
        return False


def _format_cell(value: Any, float_format: str | Callable[[float], str]) -> str:
    if _is_nan(value):
        text = NAN_TEXT
    elif isinstance(value, (bool, np.bool_)):
        text = str(bool(value))
    elif isinstance(value, Integral):
        text = str(int(value))
    elif isinstance(value, Real):
        text = float_format(float(value)) if callable(float_format) else float_format.format(float(value))
    else:
        text = str(value)
    return text.replace("|", r"\|").replace("\n", " ")


def markdown_table(
    df: pd.DataFrame,
    float_format: str | Callable[[float], str] = "{:.3f}",
    *,
    index: bool = False,
) -> str:
    """Render ``df`` as a GitHub-flavoured markdown table (no ``tabulate`` needed).

    Floats use ``float_format`` (a ``str.format`` pattern such as ``"{:.1f}"`` or a callable),
    integers are printed as-is, missing values as ``n/a``, and ``|`` in cells is escaped.
    Numeric columns are right-aligned (``---:``), others left-aligned (``---``). Cells are
    padded so the source reads as a table too. Set ``index=True`` to include the index.
    """
    frame = df.reset_index() if index else df
    headers = [str(c) for c in frame.columns]
    columns = [[_format_cell(v, float_format) for v in frame[c].tolist()] for c in frame.columns]
    numeric = [
        pd.api.types.is_numeric_dtype(frame[c]) and not pd.api.types.is_bool_dtype(frame[c]) for c in frame.columns
    ]
    widths = [max([len(h), 3, *(len(v) for v in col)]) for h, col in zip(headers, columns, strict=True)]

    def line(cells: Sequence[str]) -> str:
        padded = [cell.rjust(w) if num else cell.ljust(w) for cell, w, num in zip(cells, widths, numeric, strict=True)]
        return "| " + " | ".join(padded) + " |"

    rules = [("-" * (w - 1) + ":") if num else "-" * w for w, num in zip(widths, numeric, strict=True)]
    rule = "| " + " | ".join(rules) + " |"
    lines = [line(headers), rule]
    lines += [line([col[i] for col in columns]) for i in range(len(frame))]
    return "\n".join(lines) + "\n"


_METRIC_LEGEND = (
    "- `avg_acc`: plain accuracy over the split.",
    "- `worst_group_acc`: the lowest per-group accuracy (group g = y · n_places + place).",
    "- `adjusted_avg_acc`: per-group accuracy weighted by the **training** split's group proportions "
    '(WILDS `adj_acc_avg`; what Waterbirds papers call "average").',
    "- `mean_group_acc`: the unweighted mean over groups (a different number, not the adjusted average).",
    "- `headline_avg_acc`: the average the data set's convention reports "
    "(waterbirds: `adjusted_avg_acc`; celeba and generic: `avg_acc`).",
)


def _percent(value: Any) -> str:
    return NAN_TEXT if _is_nan(value) else f"{100.0 * float(value):.1f}"


def _with_ci(results: pd.DataFrame, metric: str) -> list[str]:
    low, high = f"{metric}_ci_low", f"{metric}_ci_high"
    if low not in results.columns or high not in results.columns:
        return [_percent(v) for v in results[metric]]
    return [
        f"{_percent(v)} [{_percent(lo)}, {_percent(hi)}]"
        for v, lo, hi in zip(results[metric], results[low], results[high], strict=True)
    ]


def comparison_markdown(results: pd.DataFrame, confidence: float | None = None, notes: Sequence[str] = ()) -> str:
    """``results.md``: the comparison table in percent (with bootstrap intervals), a legend and notes.

    ``results`` has the ``results.csv`` columns (at least :data:`RESULTS_COLUMNS`); intervals,
    convention and headline average are shown when present. ``notes`` (e.g. data-set warnings)
    are listed under the table.
    """
    require_columns(results, RESULTS_COLUMNS, "results")
    level = f"{100 * confidence:g}% CI" if confidence is not None else "CI"
    table = pd.DataFrame(
        {
            "method": results["method"],
            "split": results["split"],
            "n": results["n"],
            f"avg_acc [{level}]": _with_ci(results, "avg_acc"),
            f"worst_group_acc [{level}]": _with_ci(results, "worst_group_acc"),
            f"adjusted_avg_acc [{level}]": _with_ci(results, "adjusted_avg_acc"),
            "mean_group_acc": [_percent(v) for v in results["mean_group_acc"]],
        }
    )
    if {"convention", "headline_avg_acc"} <= set(results.columns):
        table["headline_avg_acc (convention)"] = [
            f"{_percent(v)} ({c})" for v, c in zip(results["headline_avg_acc"], results["convention"], strict=True)
        ]
    lines = [
        "# Results",
        "",
        f"Accuracy in percent; brackets: percentile bootstrap interval ({level}, stratified by group).",
        "",
        markdown_table(table).rstrip("\n"),
        "",
        *_METRIC_LEGEND,
    ]
    if notes:
        lines += ["", "## Notes", "", *(f"- {note}" for note in notes)]
    return "\n".join(lines) + "\n"
