"""The accuracy frontier against values computed by hand."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from starft_pipeline.evaluate.frontier import FRONTIER_COLUMNS, Axis, curve_value, frontier_axes, frontier_table


def test_curve_value_interpolates_between_the_points_sorted_by_id_accuracy():
    # Points given out of order: (0.6, 0.30), (0.8, 0.50), (0.7, 0.45). At 0.75: halfway between
    # (0.7, 0.45) and (0.8, 0.50) → 0.475; at 0.65: halfway between (0.6, 0.30) and (0.7, 0.45) → 0.375.
    ids, oods = [0.6, 0.8, 0.7], [0.30, 0.50, 0.45]
    assert curve_value(ids, oods, 0.75) == (pytest.approx(0.475), "")
    assert curve_value(ids, oods, 0.65) == (pytest.approx(0.375), "")
    assert curve_value(ids, oods, 0.8) == (pytest.approx(0.50), "")  # an end point is inside


def test_curve_value_outside_the_range_says_where_and_is_the_fine_tuned_end_above():
    # above the most accurate point (0.8, 0.5): compared with that point, not extrapolated
    assert curve_value([0.6, 0.8], [0.3, 0.5], 0.85) == (pytest.approx(0.5), "above")
    value, where = curve_value([0.6, 0.8], [0.3, 0.5], 0.55)
    assert math.isnan(value) and where == "below"


def test_curve_points_of_equal_id_accuracy_are_averaged_and_missing_ones_dropped():
    # Two points at ID 0.7 (OOD 0.4 and 0.6 → 0.5); at 0.75, halfway to (0.8, 0.7) → 0.6.
    value, where = curve_value([0.6, 0.7, 0.7, 0.8, float("nan")], [0.3, 0.4, 0.6, 0.7, 0.9], 0.75)
    assert value == pytest.approx(0.6) and where == ""


def test_axes_put_the_shifted_split_first_then_each_transfer_data_set():
    splits = ["synthetic/val", "synthetic/test", "waterbirds_like/val", "waterbirds_like/test"]
    assert frontier_axes(splits, "synthetic") == [
        Axis("synthetic/test", "avg_acc"),
        Axis("synthetic/test", "worst_group_acc"),
        Axis("waterbirds_like/test", "worst_group_acc"),
        Axis("waterbirds_like/test", "avg_acc"),
    ]
    with pytest.raises(ValueError, match="no 'other/test' rows.*frontier.split"):
        frontier_axes(splits, "other")


def _results(rows: list[tuple[str, str, float, float, float]]) -> pd.DataFrame:
    columns = ["method", "split", "adjusted_avg_acc", "avg_acc", "worst_group_acc"]
    return pd.DataFrame(rows, columns=columns)


def _curve() -> pd.DataFrame:
    # FLYP's sweep at α = 0, 0.5, 1: ID (synthetic/test adjusted) 0.60, 0.70, 0.80;
    # transfer worst-group 0.50, 0.46, 0.30.
    rows = []
    for alpha, id_acc, shifted, wg in [(0.0, 0.60, 0.55, 0.50), (0.5, 0.70, 0.62, 0.46), (1.0, 0.80, 0.66, 0.30)]:
        rows.append(("flyp", alpha, "synthetic", "test", id_acc, shifted, 0.40))
        rows.append(("flyp", alpha, "waterbirds_like", "test", 0.9, 0.8, wg))
        rows.append(("ft", alpha, "synthetic", "test", 0.0, 0.0, 0.0))  # another method's sweep: ignored
    columns = ["method", "alpha", "dataset", "split", "adjusted_avg_acc", "avg_acc", "worst_group_acc"]
    return pd.DataFrame(rows, columns=columns)


def test_frontier_table_by_hand():
    results = _results(
        [
            ("zero_shot", "synthetic/test", 0.60, 0.55, 0.40),
            ("zero_shot", "waterbirds_like/test", 0.90, 0.80, 0.50),
            ("star", "synthetic/test", 0.75, 0.65, 0.41),
            ("star", "waterbirds_like/test", 0.90, 0.81, 0.42),
            ("ft", "synthetic/test", 0.85, 0.70, 0.20),
            ("ft", "waterbirds_like/test", 0.90, 0.70, 0.10),
        ]
    )
    table = frontier_table(results, _curve(), "synthetic")
    assert list(table.columns) == list(FRONTIER_COLUMNS)
    transfer = table[(table["ood_split"] == "waterbirds_like/test") & (table["ood_metric"] == "worst_group_acc")]
    curve = transfer[transfer["kind"] == "curve"]
    assert curve["alpha"].tolist() == [0.0, 0.5, 1.0] and curve["ood_value"].tolist() == [0.50, 0.46, 0.30]
    star = transfer[transfer["method"] == "star"].iloc[0]
    # star's ID 0.75 is halfway between α = 0.5 (0.70, 0.46) and α = 1 (0.80, 0.30): the curve gives 0.38,
    # star's 0.42 lies 0.04 above it.
    assert star["curve_value"] == pytest.approx(0.38) and star["gain_over_curve"] == pytest.approx(0.04)
    assert star["kind"] == "method" and star["outside_curve"] == ""
    zero_shot = transfer[transfer["method"] == "zero_shot"].iloc[0]
    assert zero_shot["kind"] == "zero_shot" and zero_shot["gain_over_curve"] == pytest.approx(0.0)
    ft = transfer[transfer["method"] == "ft"].iloc[0]  # ID 0.85 beyond FLYP's 0.80: compared with FLYP (α = 1)
    assert ft["outside_curve"] == "above" and ft["curve_value"] == pytest.approx(0.30)
    assert ft["gain_over_curve"] == pytest.approx(ft["ood_value"] - 0.30)
    # the shifted axis: star's ID 0.75 → curve avg 0.64 (between 0.62 and 0.66); star's 0.65 is +0.01
    shifted = table[(table["ood_split"] == "synthetic/test") & (table["ood_metric"] == "avg_acc")]
    assert shifted[shifted["method"] == "star"]["gain_over_curve"].item() == pytest.approx(0.01)
    assert set(table["ood_metric"]) == {"avg_acc", "worst_group_acc"} and len(table) == 4 * (3 + 3)


def test_a_sweep_without_the_reference_is_named():
    results = _results([("zero_shot", "synthetic/test", 0.6, 0.55, 0.4)])
    with pytest.raises(ValueError, match=r"no 'flyp' rows on 'test' \(swept: \['ft'\]\).*evaluation.wise_ft.methods"):
        frontier_table(results, _curve()[lambda c: c["method"] == "ft"], "synthetic")


def test_the_frontier_figure_has_a_panel_per_axis_and_saves(tmp_path):
    from starft_pipeline.evaluate.figures import plot_frontier

    results = _results(
        [
            ("zero_shot", "synthetic/test", 0.60, 0.55, 0.40),
            ("zero_shot", "waterbirds_like/test", 0.90, 0.80, 0.50),
            ("star", "synthetic/test", 0.75, 0.65, 0.41),
            ("star", "waterbirds_like/test", 0.90, 0.81, 0.42),
        ]
    )
    fig = plot_frontier(frontier_table(results, _curve(), "synthetic"))
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titles == [
        "synthetic/test avg_acc",
        "synthetic/test worst_group_acc",
        "waterbirds_like/test worst_group_acc",
        "waterbirds_like/test avg_acc",
    ]
    labels = [text.get_text() for text in fig.axes[2].texts]
    assert "star +4.0" in labels and "α=0" in labels and "α=1" in labels
    fig.savefig(tmp_path / "frontier.png")
    assert (tmp_path / "frontier.png").stat().st_size > 0
