"""Figures: per-group accuracy bars, WiSE-FT curves, training curves (matplotlib, Agg backend).

Figures are returned as :class:`matplotlib.figure.Figure` objects attached to an Agg canvas
and built without pyplot (so nothing is shown, no global backend is switched, and nothing
leaks between calls or needs ``plt.close``); save them with ``fig.savefig`` (the app's
``kedro_io.FigureDataset`` does). Axes are in percent. No Kedro here.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import pandas as pd

from starft_pipeline.evaluate.results import require_columns, split_parts
from starft_pipeline.models.heads import ZERO_SHOT

if TYPE_CHECKING:  # matplotlib is imported by the functions that draw: it costs every kedro command start-up time
    from matplotlib.figure import Figure


class SavableFigure(Protocol):
    """What a figure's consumers use (``kedro_io.FigureDataset`` calls ``savefig``): node functions
    are annotated with it, a name Kedro can resolve at runtime without importing matplotlib."""

    def savefig(self, fname: Any, **kwargs: Any) -> Any: ...


def _listed_colors(name: str) -> list[Any]:
    """The colours of a qualitative (listed) matplotlib colormap such as ``tab10``."""
    import matplotlib
    from matplotlib.colors import ListedColormap

    colormap = matplotlib.colormaps[name]
    if not isinstance(colormap, ListedColormap):
        raise ValueError(f"colormap {name!r} is not a listed (qualitative) colormap")
    return list(colormap.colors)  # type: ignore[arg-type]  # a sequence of colours for the qualitative maps


def method_colors(methods: Sequence[str]) -> dict[str, Any]:
    """A stable colour per method (tab10 in the given order, then tab20)."""
    palette = _listed_colors("tab10") + _listed_colors("tab20")[1::2]
    return {m: palette[i % len(palette)] for i, m in enumerate(methods)}


def _palette(methods: Sequence[str], method_order: Sequence[str] | None) -> dict[str, Any]:
    """:func:`method_colors` over ``method_order`` then any other method, so colours agree across figures."""
    return method_colors(list(dict.fromkeys([*(method_order or ()), *methods])))


def _unique(values: pd.Series) -> list[Any]:
    return list(dict.fromkeys(values.tolist()))


def _new_figure(figsize: tuple[float, float]) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _group_bars(
    ax: Any, df: pd.DataFrame, series: str, colors: Mapping[Any, Any], annotate: bool | None = None
) -> None:
    """Per-group accuracy bars (%) on ``ax``: groups on x, one bar colour per value of ``series``.

    Repeated (series, group) rows are averaged and drawn with a ±1 std error bar; a missing
    accuracy leaves an empty slot. ``annotate=None`` labels bars only when there are at most 24.
    """
    names_in_order = _unique(df[series])
    groups = sorted(_unique(df["group"]))
    names: dict[Any, str] = {}
    if "group_name" in df.columns:
        for g, name in zip(df["group"], df["group_name"], strict=True):
            names.setdefault(g, str(name))
    acc = pd.to_numeric(df["acc"], errors="coerce") * 100.0
    stats = acc.groupby([df[series], df["group"]]).agg(["mean", "std"])
    if annotate is None:
        annotate = len(groups) * len(names_in_order) <= 24
    x = np.arange(len(groups), dtype=float)
    width = 0.8 / len(names_in_order)
    for i, key in enumerate(names_in_order):
        heights = [float(stats["mean"].get((key, g), np.nan)) for g in groups]
        errs = [float(stats["std"].get((key, g), np.nan)) for g in groups]
        has_err = any(not math.isnan(e) for e in errs)
        bars = ax.bar(
            x + (i - (len(names_in_order) - 1) / 2) * width,
            heights,
            width,
            label=str(key),
            color=colors[key],
            yerr=[0.0 if math.isnan(e) else e for e in errs] if has_err else None,
            capsize=3 if has_err else 0,
            edgecolor="white",
            linewidth=0.5,
        )
        if annotate:
            labels = ["" if math.isnan(h) else f"{h:.1f}" for h in heights]
            ax.bar_label(bars, labels=labels, padding=2, fontsize=7)
    many = len(groups) > 8
    ax.set_xticks(x)
    ax.set_xticklabels(
        [textwrap.fill(names.get(g, f"group {g}"), 12 if many else 14) for g in groups],
        fontsize=7 if many else 9,
    )
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 108)
    ax.set_xlim(-0.6, len(groups) - 0.4)
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)


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
    require_columns(group_df, ["method", "group", "acc"], "group_df")
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
    n_groups = len(_unique(df["group"]))
    fig = _new_figure((max(6.0, 1.6 * n_groups + 0.4 * n_groups * len(methods)), 4.5))
    ax = fig.add_subplot(1, 1, 1)
    _group_bars(ax, df, "method", method_colors(methods), annotate)
    ax.set_title(title or f"Per-group accuracy{f' ({split})' if split is not None else ''}")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), ncols=min(len(methods), 4), frameon=False, fontsize=9)
    fig.tight_layout()
    return fig


def _split_colors(splits: Sequence[str]) -> dict[str, Any]:
    """Split colours distinct from the method palette (train grey, val light blue, test dark blue)."""
    fixed = {"train": "#9e9e9e", "val": "#7fb3d5", "test": "#1f4e79"}
    extra = _listed_colors("Set2")
    return {s: fixed.get(s, extra[i % len(extra)]) for i, s in enumerate(splits)}


def _side_legend(fig: Figure, handles: Sequence[Any], labels: Sequence[str]) -> None:
    """One legend for all panels, right of them (it never covers tick labels), then a tight layout."""
    width = fig.get_size_inches()[0]
    legend_inches = 0.45 + 0.075 * max((len(label) for label in labels), default=1)
    fig.legend(handles, labels, loc="center right", frameon=False, fontsize=9)
    fig.tight_layout(rect=(0, 0, 1 - legend_inches / width, 1))


def _group_panels(
    df: pd.DataFrame, series: str, colors: Mapping[Any, Any], title: str, panel_title: Callable[[Any], str]
) -> Figure:
    """One row of per-group bars per data set (``df`` has a ``dataset`` column), one shared legend."""
    datasets = _unique(df["dataset"])
    widest = max(len(_unique(df.loc[df["dataset"] == d, "group"])) for d in datasets)
    n_series = len(_unique(df[series]))
    fig = _new_figure((max(7.0, min(16.0, 0.9 * widest + 0.25 * widest * n_series)), 3.4 * len(datasets) + 0.9))
    axes = fig.subplots(len(datasets), 1, squeeze=False)[:, 0]
    for ax, dataset in zip(axes, datasets, strict=True):
        _group_bars(ax, df[df["dataset"] == dataset], series, colors)
        ax.set_title(panel_title(dataset), fontsize=10)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.suptitle(title)
    _side_legend(fig, handles, labels)
    return fig


def plot_method_group_accuracy(group_df: pd.DataFrame, method: str | None = None) -> Figure:
    """Per-group accuracy (%) of one method: one panel per data set, one bar colour per split.

    ``group_df`` has the ``group_results.csv`` columns with ``"<dataset>/<split>"`` labels in
    ``split``; ``method`` picks one method (required when there are several).
    """
    require_columns(group_df, ["method", "split", "group", "acc"], "group_df")
    methods = _unique(group_df["method"])
    if method is None:
        if len(methods) != 1:
            raise ValueError(f"`group_df` holds methods {methods}; pass method=...")
        method = methods[0]
    df = split_parts(group_df[group_df["method"] == method])
    if df.empty:
        raise ValueError(f"`group_df` has no rows of method {method!r} (has {methods}).")
    return _group_panels(
        df, "subset", _split_colors(_unique(df["subset"])), f"Per-group accuracy: {method}", lambda d: f"{d}"
    )


def plot_group_accuracy_comparison(
    group_df: pd.DataFrame, split: str = "test", *, method_order: Sequence[str] | None = None
) -> Figure:
    """Per-group accuracy (%) of every method on ``split``: one panel per data set, one bar colour per method.

    ``method_order`` fixes the colour of each method (as in the other figures given the same order).
    """
    require_columns(group_df, ["method", "split", "group", "acc"], "group_df")
    df = split_parts(group_df)
    df = df[df["subset"] == split]
    if df.empty:
        raise ValueError(f"`group_df` has no rows of split {split!r}.")
    colors = _palette(_unique(group_df["method"]), method_order)
    return _group_panels(df, "method", colors, f"Per-group accuracy by method ({split})", lambda d: f"{d}/{split}")


def _wise_ft_lines(ax: Any, curve_df: pd.DataFrame, colors: Mapping[Any, Any], wanted: set[float] | None) -> None:
    """One line per method through its (average, worst-group) points in increasing α, points labelled α."""
    written: set[tuple[float, float, str]] = set()
    for method in _unique(curve_df["method"]):
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
            ax.annotate(text, (xv, yv), textcoords="offset points", xytext=(5, 5), fontsize=7, color=colors[method])
    ax.set_xlabel("average accuracy (%)")
    ax.set_ylabel("worst-group accuracy (%)")
    ax.grid(alpha=0.3)
    ax.margins(0.12)
    _min_span(ax, 5.0)


def _min_span(ax: Any, span: float) -> None:
    """Widen both axes (percent) to at least ``span`` around their centre, inside [-1, 101]."""
    for get, set_ in ((ax.get_xlim, ax.set_xlim), (ax.get_ylim, ax.set_ylim)):
        lo, hi = get()
        if hi - lo < span:
            centre = min(max((lo + hi) / 2, span / 2 - 1), 101 - span / 2)
            set_(centre - span / 2, centre + span / 2)


def _wanted_alphas(annotate_alphas: Sequence[float] | None) -> set[float] | None:
    return None if annotate_alphas is None else {round(float(a), 9) for a in annotate_alphas}


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
    require_columns(curve_df, ["method", "alpha", "avg_acc", "worst_group_acc"], "curve_df")
    if curve_df.empty:
        raise ValueError("`curve_df` has no rows to plot.")
    colors = method_colors(_unique(curve_df["method"]))
    fig = _new_figure((6.5, 5.0))
    ax = fig.add_subplot(1, 1, 1)
    _wise_ft_lines(ax, curve_df, colors, _wanted_alphas(annotate_alphas))
    ax.set_title(title or "WiSE-FT interpolation: worst-group vs average accuracy")
    ax.legend(loc="best", fontsize=9)
    fig.tight_layout()
    return fig


def message_figure(message: str, title: str | None = None) -> Figure:
    """A small figure that says why there is nothing to plot (so a report's figure is never missing)."""
    fig = _new_figure((6.0, 2.0))
    ax = fig.add_subplot(1, 1, 1)
    ax.set_axis_off()
    ax.text(0.5, 0.5, textwrap.fill(message, 70), ha="center", va="center", fontsize=10, transform=ax.transAxes)
    if title:
        ax.set_title(title)
    return fig


def plot_wise_ft_curves(
    curve_df: pd.DataFrame,
    splits: Sequence[str] | None = None,
    *,
    title: str | None = None,
    annotate_alphas: Sequence[float] | None = None,
    method_order: Sequence[str] | None = None,
) -> Figure:
    """WiSE-FT curves of every evaluated split: a grid of panels, one row per data set, one column per split.

    ``curve_df`` columns: ``method, alpha, split, avg_acc, worst_group_acc`` and ``dataset``
    (or ``"<dataset>/<split>"`` labels in ``split``). ``splits`` keeps and orders the splits
    (default: all, in order of appearance). Each panel is drawn as :func:`plot_wise_ft_curve`;
    ``method_order`` fixes the method colours.
    """
    require_columns(curve_df, ["method", "alpha", "split", "avg_acc", "worst_group_acc"], "curve_df")
    df = split_parts(curve_df)
    chosen = list(splits) if splits is not None else _unique(df["subset"])
    df = df[df["subset"].isin(chosen)]
    if df.empty:
        raise ValueError(f"`curve_df` has no rows of split(s) {chosen}.")
    chosen = [s for s in chosen if s in set(df["subset"])]
    datasets = _unique(df["dataset"])
    colors = _palette(_unique(curve_df["method"]), method_order)
    fig = _new_figure((4.6 * len(chosen) + 0.4, 4.0 * len(datasets) + 0.9))
    axes = fig.subplots(len(datasets), len(chosen), squeeze=False)
    for (i, dataset), (j, split) in ((d, s) for d in enumerate(datasets) for s in enumerate(chosen)):
        ax = axes[i, j]
        part = df[(df["dataset"] == dataset) & (df["subset"] == split)]
        if part.empty:
            ax.set_axis_off()
            continue
        _wise_ft_lines(ax, part, colors, _wanted_alphas(annotate_alphas))
        ax.set_title(f"{dataset}/{split}" if dataset else split, fontsize=10)
    methods = _unique(curve_df["method"])
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=colors[m], marker="o", label=str(m)) for m in methods]
    fig.suptitle(title or "WiSE-FT interpolation: worst-group vs average accuracy across α")
    _side_legend(fig, handles, [str(m) for m in methods])
    return fig


_TERM_LABELS = {"loss": "training loss", "contrastive": "contrastive loss", "regulariser": "regulariser (KL)"}


def plot_training_curves(
    history_df: pd.DataFrame,
    *,
    title: str | None = None,
    smooth: int | None = None,
    log_y: bool = False,
    terms: Sequence[str] = ("loss",),
    method_order: Sequence[str] | None = None,
) -> Figure:
    """Training curves against optimisation step, one line per method, one panel per loss term.

    ``history_df`` columns: ``method, step``, the ``terms`` (default ``loss``) and optionally
    ``epoch``. A term missing from the frame is skipped unless it is the first; a method with
    no value of a term (e.g. FLYP's regulariser) has no line in that panel. Repeated
    (method, step) rows (e.g. several seeds) are averaged. With ``smooth=k`` the raw curve
    is drawn faintly and a centred rolling mean over ``k`` steps on top. If ``epoch`` is
    present, the first step of each epoch after the first (of the method with the most
    steps) is marked with a dotted vertical line. ``method_order`` fixes the method colours. Missing values leave gaps. Lines drawn for decoration
    carry labels starting with ``_`` so ``[l for l in ax.get_lines() if not
    l.get_label().startswith("_")]`` gives one line per method.
    """
    terms = [t for i, t in enumerate(terms) if i == 0 or t in history_df.columns]
    require_columns(history_df, ["method", "step", terms[0]], "history_df")
    if history_df.empty:
        raise ValueError("`history_df` has no rows to plot.")
    methods = _unique(history_df["method"])
    colors = _palette(methods, method_order)
    longest = history_df["method"].value_counts().reindex(methods).idxmax()
    fig = _new_figure((7.0 if len(terms) == 1 else 4.6 * len(terms), 4.5))
    axes = fig.subplots(1, len(terms), squeeze=False)[0]
    step = pd.to_numeric(history_df["step"], errors="coerce")
    for ax, term in zip(axes, terms, strict=True):
        values = pd.to_numeric(history_df[term], errors="coerce")
        for method in methods:
            mask = (history_df["method"] == method).to_numpy()
            curve = values[mask].groupby(step[mask].to_numpy()).mean().sort_index()
            if curve.isna().all() and term != terms[0]:
                continue
            if smooth and smooth > 1:
                ax.plot(curve.index, curve.to_numpy(), color=colors[method], alpha=0.25, linewidth=0.8, label="_raw")
                curve = curve.rolling(smooth, center=True, min_periods=1).mean()
            ax.plot(curve.index, curve.to_numpy(), color=colors[method], linewidth=1.5, label=str(method))
        _epoch_marks(ax, history_df, longest)
        if log_y:
            ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_ylabel(_TERM_LABELS.get(term, term))
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize=8)
    if len(terms) == 1:
        axes[0].set_title(title or "Training loss")
    else:
        fig.suptitle(title or "Training curves")
    fig.tight_layout()
    return fig


def _epoch_marks(ax: Any, history_df: pd.DataFrame, method: Any) -> None:
    """Dotted vertical lines at the first step of each epoch after the first (of ``method``)."""
    if "epoch" not in history_df.columns:
        return
    first = history_df[history_df["method"] == method]
    starts = (
        pd.DataFrame({"epoch": first["epoch"], "step": pd.to_numeric(first["step"], errors="coerce")})
        .dropna()
        .groupby("epoch")["step"]
        .min()
        .sort_values()
    )
    for s in starts.to_numpy()[1:]:
        ax.axvline(float(s), color="grey", linestyle=":", linewidth=0.8, label="_epoch")


def _frontier_panel(ax: Any, part: pd.DataFrame, colors: Mapping[Any, Any], reference_color: Any) -> None:
    """The reference's curve (α labelled at its ends), zero-shot as a star, every method as a labelled point."""
    curve = part[part["kind"] == "curve"].sort_values("alpha")
    x, y = curve["id_acc"] * 100.0, curve["ood_value"] * 100.0
    ax.plot(x, y, marker="o", markersize=4, color=reference_color, alpha=0.8)
    for a, xv, yv in zip(curve["alpha"], x, y, strict=True):
        if a in (curve["alpha"].min(), curve["alpha"].max()):
            ax.annotate(f"α={a:g}", (xv, yv), textcoords="offset points", xytext=(4, -10), fontsize=7)
    for row in part[part["kind"] != "curve"].itertuples(index=False):
        zero_shot = row.kind == ZERO_SHOT
        ax.scatter(
            row.id_acc * 100.0,
            row.ood_value * 100.0,
            marker="*" if zero_shot else "o",
            s=120 if zero_shot else 40,
            color="black" if zero_shot else colors[row.method],
            edgecolors="white",
            zorder=3,
        )
        gain = "" if math.isnan(row.gain_over_curve) else f" {100 * row.gain_over_curve:+.1f}"
        ax.annotate(
            f"{row.method}{gain}",
            (row.id_acc * 100.0, row.ood_value * 100.0),
            textcoords="offset points",
            xytext=(5, 4),
            fontsize=7,
        )
    ax.set_xlabel(f"ID: {part['id_split'].iloc[0]} adjusted avg (%)")
    ax.set_ylabel(f"{part['ood_metric'].iloc[0]} (%)")
    ax.grid(alpha=0.3)
    ax.margins(0.12)
    _min_span(ax, 5.0)


def plot_frontier(
    frontier_df: pd.DataFrame, *, title: str | None = None, method_order: Sequence[str] | None = None
) -> Figure:
    """The frontier (``evaluate.frontier.frontier_table``): one panel per OOD axis, the ID accuracy on x.

    The reference's WiSE-FT curve is the line, zero-shot the black star, each method a point labelled
    with its gain over the curve in points (none where its ID accuracy is outside the curve's range).
    """
    require_columns(
        frontier_df,
        ["kind", "method", "alpha", "id_split", "id_acc", "ood_split", "ood_metric", "ood_value", "gain_over_curve"],
        "frontier_df",
    )
    if frontier_df.empty:
        raise ValueError("`frontier_df` has no rows to plot.")
    axes_keys = list(dict.fromkeys(zip(frontier_df["ood_split"], frontier_df["ood_metric"], strict=True)))
    methods = _unique(frontier_df["method"])
    colors = _palette(methods, method_order)
    reference = _unique(frontier_df.loc[frontier_df["kind"] == "curve", "method"])
    columns = min(2, len(axes_keys))
    rows = math.ceil(len(axes_keys) / columns)
    fig = _new_figure((5.2 * columns, 4.2 * rows + 0.6))
    grid = fig.subplots(rows, columns, squeeze=False)
    for ax, (split, metric) in zip(grid.flat, axes_keys, strict=False):
        part = frontier_df[(frontier_df["ood_split"] == split) & (frontier_df["ood_metric"] == metric)]
        _frontier_panel(ax, part, colors, colors[reference[0]] if reference else "grey")
        ax.set_title(f"{split} {metric}", fontsize=10)
    for ax in list(grid.flat)[len(axes_keys) :]:
        ax.set_axis_off()
    curve_name = f"{reference[0]} WiSE-FT" if reference else "WiSE-FT"
    fig.suptitle(title or f"Frontier: OOD against ID accuracy; the line is {curve_name} (α from 0 to 1)")
    fig.tight_layout()
    return fig
