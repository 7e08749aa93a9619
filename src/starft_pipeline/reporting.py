"""Result tables and figures (pandas + matplotlib with the Agg backend; no kedro import).

Table conventions
-----------------
* ``results.csv`` has one row per (method, split): :data:`RESULTS_COLUMNS`.
* ``group_results.csv`` has one row per (method, split, group): :data:`GROUP_COLUMNS`.
* Accuracies in both CSVs are fractions in ``[0, 1]`` (as produced by
  :mod:`starft_pipeline.metrics`); only human-facing output (markdown, mean ± std strings,
  figure axes) is in percent.

Figures are returned as :class:`matplotlib.figure.Figure` objects attached to an Agg canvas
and built without pyplot (so nothing is shown, no global backend is switched, and nothing
leaks between calls or needs ``plt.close``); save them with ``fig.savefig`` or a kedro
``matplotlib.MatplotlibDataset``.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Callable, Mapping, Sequence
from numbers import Integral, Real
from typing import Any

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from starft_pipeline.metrics import GroupMetrics

__all__ = [
    "GROUP_COLUMNS",
    "RESULTS_COLUMNS",
    "SUMMARY_METRICS",
    "group_rows",
    "markdown_table",
    "mean_std_table",
    "method_colors",
    "plot_group_accuracy",
    "plot_training_curves",
    "plot_wise_ft_curve",
    "results_rows",
]

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

_NAN_TEXT = "n/a"


# --------------------------------------------------------------------------- rows


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


# --------------------------------------------------------------------------- tables


def _is_nan(value: Any) -> bool:
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):  # arrays, lists: not a scalar missing value
        return False


def _format_cell(value: Any, float_format: str | Callable[[float], str]) -> str:
    if _is_nan(value):
        text = _NAN_TEXT
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
        pd.api.types.is_numeric_dtype(frame[c]) and not pd.api.types.is_bool_dtype(frame[c])
        for c in frame.columns
    ]
    widths = [max([len(h), 3, *(len(v) for v in col)]) for h, col in zip(headers, columns, strict=True)]

    def line(cells: Sequence[str]) -> str:
        padded = [
            cell.rjust(w) if num else cell.ljust(w)
            for cell, w, num in zip(cells, widths, numeric, strict=True)
        ]
        return "| " + " | ".join(padded) + " |"

    rules = [("-" * (w - 1) + ":") if num else "-" * w for w, num in zip(widths, numeric, strict=True)]
    rule = "| " + " | ".join(rules) + " |"
    lines = [line(headers), rule]
    lines += [line([col[i] for col in columns]) for i in range(len(frame))]
    return "\n".join(lines) + "\n"


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
    missing = [c for c in [*by, *metrics] if c not in df.columns]
    if missing:
        raise ValueError(f"`df` lacks column(s) {missing}; it has {list(df.columns)}.")
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
        return _NAN_TEXT
    if math.isnan(std):
        return f"{mean:.{decimals}f}"
    return f"{mean:.{decimals}f} ± {std:.{decimals}f}"


# --------------------------------------------------------------------------- figures


def method_colors(methods: Sequence[str]) -> dict[str, Any]:
    """A stable colour per method (tab10 in the given order, then tab20)."""
    palette = list(matplotlib.colormaps["tab10"].colors) + list(matplotlib.colormaps["tab20"].colors[1::2])
    return {m: palette[i % len(palette)] for i, m in enumerate(methods)}


def _unique(values: pd.Series) -> list[Any]:
    return list(dict.fromkeys(values.tolist()))


def _new_figure(figsize: tuple[float, float]) -> Figure:
    fig = Figure(figsize=figsize, dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _require(df: pd.DataFrame, columns: Sequence[str], name: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"`{name}` lacks column(s) {missing}; it has {list(df.columns)}.")


def plot_group_accuracy(
    group_df: pd.DataFrame,
    split: str | None = None,
    *,
    title: str | None = None,
    annotate: bool = True,
) -> Figure:
    """Grouped bar chart of per-group accuracy (%) for one split: one bar colour per method.

    ``group_df`` has the ``group_results.csv`` columns (``acc`` as a fraction). If it holds
    several splits, ``split`` picks one (required then). Repeated (method, group) rows, e.g.
    several seeds, are averaged and drawn with a ±1 std error bar. A missing accuracy gives
    an empty bar slot. Bars are labelled with their value when ``annotate``.
    """
    _require(group_df, ["method", "group", "acc"], "group_df")
    df = group_df
    if "split" in df.columns:
        splits = _unique(df["split"])
        if split is None:
            if len(splits) > 1:
                raise ValueError(f"`group_df` holds several splits {splits}; pass split=...")
            split = splits[0] if splits else None
        else:
            if split not in splits:
                raise ValueError(f"split {split!r} not in `group_df` (has {splits}).")
            df = df[df["split"] == split]
    if df.empty:
        raise ValueError("`group_df` has no rows to plot.")

    methods = _unique(df["method"])
    groups = sorted(_unique(df["group"]))
    names: dict[Any, str] = {}
    if "group_name" in df.columns:
        for g, name in zip(df["group"], df["group_name"], strict=True):
            names.setdefault(g, str(name))
    acc = pd.to_numeric(df["acc"], errors="coerce") * 100.0
    stats = acc.groupby([df["method"], df["group"]]).agg(["mean", "std"])

    colors = method_colors(methods)
    fig = _new_figure((max(6.0, 1.6 * len(groups) + 0.4 * len(groups) * len(methods)), 4.5))
    ax = fig.add_subplot(1, 1, 1)
    x = np.arange(len(groups), dtype=float)
    width = 0.8 / len(methods)
    for i, method in enumerate(methods):
        heights = [float(stats["mean"].get((method, g), np.nan)) for g in groups]
        errs = [float(stats["std"].get((method, g), np.nan)) for g in groups]
        has_err = any(not math.isnan(e) for e in errs)
        bars = ax.bar(
            x + (i - (len(methods) - 1) / 2) * width,
            heights,
            width,
            label=str(method),
            color=colors[method],
            yerr=[0.0 if math.isnan(e) else e for e in errs] if has_err else None,
            capsize=3 if has_err else 0,
            edgecolor="white",
            linewidth=0.5,
        )
        if annotate:
            labels = ["" if math.isnan(h) else f"{h:.1f}" for h in heights]
            ax.bar_label(bars, labels=labels, padding=2, fontsize=7)
    ax.set_xticks(x)
    ax.set_xticklabels([textwrap.fill(names.get(g, f"group {g}"), 14) for g in groups])
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 108)
    ax.set_xlim(-0.6, len(groups) - 0.4)
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    ax.set_title(title or f"Per-group accuracy{f' ({split})' if split is not None else ''}")
    ax.legend(
        loc="upper center",
        bbox_to_anchor=(0.5, -0.16),
        ncols=min(len(methods), 4),
        frameon=False,
        fontsize=9,
    )
    fig.tight_layout()
    return fig


def plot_wise_ft_curve(
    curve_df: pd.DataFrame,
    *,
    title: str | None = None,
    annotate_alphas: Sequence[float] | None = None,
) -> Figure:
    """WiSE-FT interpolation curve: worst-group accuracy (y, %) against average accuracy (x, %).

    ``curve_df`` columns: ``method, alpha, avg_acc, worst_group_acc`` (accuracies as
    fractions). One line per method through its points in increasing ``alpha``; each point
    is annotated with its ``α`` (only the values in ``annotate_alphas`` if given; a label
    already written at the same point, e.g. the shared zero-shot ``α=0``, is not repeated).
    Rows with a missing accuracy are skipped (a method whose rows are all missing still gets
    a legend entry).
    """
    _require(curve_df, ["method", "alpha", "avg_acc", "worst_group_acc"], "curve_df")
    if curve_df.empty:
        raise ValueError("`curve_df` has no rows to plot.")
    methods = _unique(curve_df["method"])
    colors = method_colors(methods)
    fig = _new_figure((6.5, 5.0))
    ax = fig.add_subplot(1, 1, 1)
    written: set[tuple[float, float, str]] = set()
    wanted = None if annotate_alphas is None else {round(float(a), 9) for a in annotate_alphas}
    for method in methods:
        part = curve_df[curve_df["method"] == method]
        part = pd.DataFrame(
            {
                "alpha": pd.to_numeric(part["alpha"], errors="coerce"),
                "x": pd.to_numeric(part["avg_acc"], errors="coerce") * 100.0,
                "y": pd.to_numeric(part["worst_group_acc"], errors="coerce") * 100.0,
            }
        )
        part = part.dropna(subset=["x", "y"]).sort_values("alpha", na_position="last")
        ax.plot(part["x"], part["y"], marker="o", markersize=5, color=colors[method], label=str(method))
        for a, xv, yv in zip(part["alpha"], part["x"], part["y"], strict=True):
            if wanted is not None and (math.isnan(a) or round(a, 9) not in wanted):
                continue
            text = "α=?" if math.isnan(a) else f"α={a:g}"
            key = (round(xv, 6), round(yv, 6), text)
            if key in written:
                continue
            written.add(key)
            ax.annotate(
                text,
                (xv, yv),
                textcoords="offset points",
                xytext=(5, 5),
                fontsize=7,
                color=colors[method],
            )
    ax.set_xlabel("average accuracy (%)")
    ax.set_ylabel("worst-group accuracy (%)")
    ax.grid(alpha=0.3)
    ax.margins(0.12)
    ax.set_title(title or "WiSE-FT interpolation: worst-group vs average accuracy")
    ax.legend(loc="best", fontsize=9)
    fig.tight_layout()
    return fig


def plot_training_curves(
    history_df: pd.DataFrame,
    *,
    title: str | None = None,
    smooth: int | None = None,
    log_y: bool = False,
) -> Figure:
    """Training loss against optimisation step, one line per method.

    ``history_df`` columns: ``method, step, loss`` and optionally ``epoch``. Repeated
    (method, step) rows (e.g. several seeds) are averaged. With ``smooth=k`` the raw curve
    is drawn faintly and a centred rolling mean over ``k`` steps on top. If ``epoch`` is
    present, the first step of each epoch after the first (of the first method) is marked
    with a dotted vertical line. Missing losses leave gaps. Lines drawn for decoration
    carry labels starting with ``_`` so ``[l for l in ax.get_lines() if not
    l.get_label().startswith("_")]`` gives one line per method.
    """
    _require(history_df, ["method", "step", "loss"], "history_df")
    if history_df.empty:
        raise ValueError("`history_df` has no rows to plot.")
    methods = _unique(history_df["method"])
    colors = method_colors(methods)
    fig = _new_figure((7.0, 4.5))
    ax = fig.add_subplot(1, 1, 1)
    loss = pd.to_numeric(history_df["loss"], errors="coerce")
    step = pd.to_numeric(history_df["step"], errors="coerce")
    for method in methods:
        mask = (history_df["method"] == method).to_numpy()
        curve = loss[mask].groupby(step[mask].to_numpy()).mean().sort_index()
        if smooth and smooth > 1:
            ax.plot(curve.index, curve.to_numpy(), color=colors[method], alpha=0.25, linewidth=0.8, label="_raw")
            curve = curve.rolling(smooth, center=True, min_periods=1).mean()
        ax.plot(curve.index, curve.to_numpy(), color=colors[method], linewidth=1.5, label=str(method))
    if "epoch" in history_df.columns:
        first = history_df[history_df["method"] == methods[0]]
        starts = (
            pd.DataFrame({"epoch": first["epoch"], "step": pd.to_numeric(first["step"], errors="coerce")})
            .dropna()
            .groupby("epoch")["step"]
            .min()
            .sort_values()
        )
        for s in starts.to_numpy()[1:]:
            ax.axvline(float(s), color="grey", linestyle=":", linewidth=0.8, label="_epoch")
    if log_y:
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.grid(alpha=0.3)
    ax.set_title(title or "Training loss")
    ax.legend(loc="upper right", fontsize=9)
    fig.tight_layout()
    return fig
