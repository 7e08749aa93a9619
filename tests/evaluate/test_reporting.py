"""Reporting tests: exact CSV columns, literal markdown, and figure structure."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from starft_pipeline.evaluate.figures import plot_group_accuracy, plot_training_curves, plot_wise_ft_curve
from starft_pipeline.evaluate.markdown import markdown_table
from starft_pipeline.evaluate.metrics import (
    WATERBIRDS_GROUP_NAMES,
    WATERBIRDS_TRAIN_GROUP_COUNTS,
    group_robust_metrics,
)
from starft_pipeline.evaluate.results import GROUP_COLUMNS, RESULTS_COLUMNS, group_rows, mean_std_table, results_rows


@pytest.fixture
def toy_metrics():
    # groups g = 2y + place with 4/2/2/4 samples; 3/1/2/4 right
    groups = np.array([0] * 4 + [1] * 2 + [2] * 2 + [3] * 4)
    y_true = groups // 2
    correct = np.array([1, 1, 1, 0] + [1, 0] + [1, 1] + [1, 1, 1, 1], dtype=bool)
    y_pred = np.where(correct, y_true, 1 - y_true)
    return group_robust_metrics(y_true, y_pred, groups, 4, WATERBIRDS_TRAIN_GROUP_COUNTS)


def visible_lines(ax) -> list:
    return [line for line in ax.get_lines() if not line.get_label().startswith("_")]


def assert_png_not_blank(fig: Figure, path: Path) -> None:
    fig.savefig(path)
    pixels = mpimg.imread(path)
    assert pixels.ndim == 3 and pixels.shape[0] > 100 and pixels.shape[1] > 100
    assert float(np.std(pixels[..., :3])) > 0.0


# --------------------------------------------------------------------------- rows


def test_results_rows_columns(toy_metrics) -> None:
    row = results_rows("FLYP", "test", toy_metrics)
    assert list(row) == [
        "method",
        "split",
        "n",
        "avg_acc",
        "worst_group_acc",
        "adjusted_avg_acc",
        "mean_group_acc",
    ]
    assert list(row) == list(RESULTS_COLUMNS)
    assert row["n"] == 12
    assert row["avg_acc"] == pytest.approx(10 / 12)
    assert row["worst_group_acc"] == pytest.approx(0.5)
    frame = pd.DataFrame([row])
    assert list(frame.columns) == list(RESULTS_COLUMNS)


def test_group_rows_columns(toy_metrics) -> None:
    rows = group_rows("FLYP", "test", toy_metrics, WATERBIRDS_GROUP_NAMES)
    assert [list(r) for r in rows] == [["method", "split", "group", "group_name", "n", "acc"]] * 4
    assert tuple(rows[0]) == GROUP_COLUMNS
    assert [r["group"] for r in rows] == [0, 1, 2, 3]
    assert [r["group_name"] for r in rows] == list(WATERBIRDS_GROUP_NAMES)
    assert [r["n"] for r in rows] == [4, 2, 2, 4]
    assert [r["acc"] for r in rows] == pytest.approx([0.75, 0.5, 1.0, 1.0])
    with pytest.raises(ValueError, match="group 3"):
        group_rows("FLYP", "test", toy_metrics, WATERBIRDS_GROUP_NAMES[:3])
    by_dict = group_rows("FLYP", "test", toy_metrics, dict(enumerate(WATERBIRDS_GROUP_NAMES)))
    assert by_dict == rows


# --------------------------------------------------------------------------- tables


def test_markdown_table_literal() -> None:
    df = pd.DataFrame({"method": ["FLYP", "Star|FT"], "n": [10, 200], "acc": [0.5, float("nan")], "x": [0.8, 1.0]})
    expected = (
        "| method   |   n |  acc |    x |\n"
        "| -------- | --: | ---: | ---: |\n"
        "| FLYP     |  10 | 0.50 | 0.80 |\n"
        "| Star\\|FT | 200 |  n/a | 1.00 |\n"
    )
    assert markdown_table(df, "{:.2f}") == expected


def test_markdown_table_callable_format_and_index() -> None:
    df = pd.DataFrame({"acc": [0.873]}, index=pd.Index(["StarFT"], name="method"))
    expected = "| method |   acc |\n| ------ | ----: |\n| StarFT | 87.3% |\n"
    assert markdown_table(df, lambda v: f"{100 * v:.1f}%", index=True) == expected


def test_mean_std_table() -> None:
    df = pd.DataFrame(
        {
            "method": ["FLYP", "FLYP", "FLYP", "StarFT"],
            "split": ["test"] * 4,
            "seed": [0, 1, 2, 0],
            "avg_acc": [0.80, 0.82, 0.84, 0.90],
            "worst_group_acc": [0.50, 0.60, float("nan"), 0.70],
        }
    )
    out = mean_std_table(df, metrics=["avg_acc", "worst_group_acc"])
    assert list(out.columns) == [
        "method",
        "split",
        "n_seeds",
        "avg_acc",
        "avg_acc_mean",
        "avg_acc_std",
        "worst_group_acc",
        "worst_group_acc_mean",
        "worst_group_acc_std",
    ]
    assert out["method"].tolist() == ["FLYP", "StarFT"]
    assert out["n_seeds"].tolist() == [3, 1]
    # FLYP avg: 80, 82, 84 -> mean 82.0, sample std 2.0
    assert out["avg_acc"].tolist() == ["82.0 ± 2.0", "90.0"]
    assert out["avg_acc_mean"].tolist() == pytest.approx([82.0, 90.0])
    assert out["avg_acc_std"].iloc[0] == pytest.approx(2.0) and math.isnan(out["avg_acc_std"].iloc[1])
    # FLYP worst: NaN skipped -> 50, 60 -> mean 55.0, std sqrt(50) = 7.07
    assert out["worst_group_acc"].tolist() == ["55.0 ± 7.1", "70.0"]
    with pytest.raises(ValueError, match="adjusted_avg_acc"):
        mean_std_table(df)  # default metrics include columns this frame lacks
    raw = mean_std_table(df, metrics=["avg_acc"], percent=False, decimals=3)
    assert raw["avg_acc"].tolist() == ["0.820 ± 0.020", "0.900"]


# --------------------------------------------------------------------------- figures


def group_frame(methods: list[str], split: str = "test") -> pd.DataFrame:
    rows = []
    for i, method in enumerate(methods):
        for g, name in enumerate(WATERBIRDS_GROUP_NAMES):
            rows.append(
                {
                    "method": method,
                    "split": split,
                    "group": g,
                    "group_name": name,
                    "n": 10,
                    "acc": 0.5 + 0.1 * g - 0.05 * i,
                }
            )
    return pd.DataFrame(rows, columns=list(GROUP_COLUMNS))


def test_plot_group_accuracy(tmp_path: Path) -> None:
    fig = plot_group_accuracy(group_frame(["zero-shot", "FLYP", "StarFT"]))
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    assert len(ax.patches) == 3 * 4
    assert [t.get_text().replace("\n", " ") for t in ax.get_xticklabels()] == list(WATERBIRDS_GROUP_NAMES)
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["zero-shot", "FLYP", "StarFT"]
    assert "%" in ax.get_ylabel() and ax.get_title()
    # heights are in percent
    assert max(p.get_height() for p in ax.patches) == pytest.approx(80.0)
    assert_png_not_blank(fig, tmp_path / "groups.png")


def test_plot_group_accuracy_single_method_nan_and_split(tmp_path: Path) -> None:
    df = group_frame(["StarFT"])
    df.loc[2, "acc"] = float("nan")
    both = pd.concat([df, group_frame(["StarFT"], split="val")], ignore_index=True)
    with pytest.raises(ValueError, match="split"):
        plot_group_accuracy(both)
    fig = plot_group_accuracy(both, split="test")
    ax = fig.axes[0]
    assert len(ax.patches) == 4
    assert math.isnan(ax.patches[2].get_height())
    assert "test" in ax.get_title()
    assert_png_not_blank(fig, tmp_path / "single.png")


def test_plot_group_accuracy_averages_seeds() -> None:
    df = pd.concat([group_frame(["A"]), group_frame(["A"])], ignore_index=True)
    df.loc[4:, "acc"] += 0.1  # second seed 10 points higher
    ax = plot_group_accuracy(df).axes[0]
    assert len(ax.patches) == 4
    assert ax.patches[0].get_height() == pytest.approx(55.0)  # mean of 50 and 60


def curve_frame(methods: list[str]) -> pd.DataFrame:
    rows = []
    for i, method in enumerate(methods):
        for a in (0.0, 0.5, 1.0):
            rows.append(
                {"method": method, "alpha": a, "avg_acc": 0.8 + 0.05 * a, "worst_group_acc": 0.4 + (0.2 - 0.1 * i) * a}
            )
    return pd.DataFrame(rows)


def test_plot_wise_ft_curve(tmp_path: Path) -> None:
    fig = plot_wise_ft_curve(curve_frame(["FLYP", "StarFT"]))
    ax = fig.axes[0]
    lines = visible_lines(ax)
    assert [line.get_label() for line in lines] == ["FLYP", "StarFT"]
    assert all(len(line.get_xdata()) == 3 for line in lines)
    assert list(lines[0].get_xdata()) == pytest.approx([80.0, 82.5, 85.0])
    labels = [t.get_text() for t in ax.texts]
    # alpha=0 is the shared zero-shot point: labelled once
    assert sorted(labels) == sorted(["α=0", "α=0.5", "α=1", "α=0.5", "α=1"])
    assert "worst" in ax.get_ylabel() and "average" in ax.get_xlabel()
    assert ax.get_legend() is not None
    assert_png_not_blank(fig, tmp_path / "wise.png")


def test_plot_wise_ft_curve_single_method_with_nan(tmp_path: Path) -> None:
    df = curve_frame(["StarFT"])
    df.loc[1, "worst_group_acc"] = float("nan")
    fig = plot_wise_ft_curve(df, annotate_alphas=[1.0])
    ax = fig.axes[0]
    lines = visible_lines(ax)
    assert len(lines) == 1 and len(lines[0].get_xdata()) == 2
    assert [t.get_text() for t in ax.texts] == ["α=1"]
    assert_png_not_blank(fig, tmp_path / "wise1.png")


def history_frame(methods: list[str], epochs: bool = True) -> pd.DataFrame:
    rows = []
    for i, method in enumerate(methods):
        for step in range(30):
            row = {"method": method, "step": step, "loss": 2.0 / (1 + step) + 0.1 * i}
            if epochs:
                row["epoch"] = step // 10
            rows.append(row)
    return pd.DataFrame(rows)


def test_plot_training_curves(tmp_path: Path) -> None:
    fig = plot_training_curves(history_frame(["FLYP", "StarFT"]))
    ax = fig.axes[0]
    lines = visible_lines(ax)
    assert [line.get_label() for line in lines] == ["FLYP", "StarFT"]
    assert all(len(line.get_xdata()) == 30 for line in lines)
    epoch_marks = [line for line in ax.get_lines() if line.get_label() == "_epoch"]
    assert len(epoch_marks) == 2  # epochs 1 and 2 start at steps 10 and 20
    assert ax.get_xlabel() == "step" and "loss" in ax.get_ylabel()
    assert_png_not_blank(fig, tmp_path / "train.png")


def test_plot_training_curves_single_method_nan_smooth(tmp_path: Path) -> None:
    df = history_frame(["StarFT"], epochs=False)
    df.loc[5, "loss"] = float("nan")
    fig = plot_training_curves(df, smooth=5)
    ax = fig.axes[0]
    assert len(visible_lines(ax)) == 1
    assert [line.get_label() for line in ax.get_lines()] == ["_raw", "StarFT"]
    assert_png_not_blank(fig, tmp_path / "train1.png")


def test_plots_reject_missing_columns() -> None:
    with pytest.raises(ValueError, match="alpha"):
        plot_wise_ft_curve(pd.DataFrame({"method": ["a"], "avg_acc": [0.1], "worst_group_acc": [0.1]}))
    with pytest.raises(ValueError, match="loss"):
        plot_training_curves(pd.DataFrame({"method": ["a"], "step": [0]}))
    with pytest.raises(ValueError, match="acc"):
        plot_group_accuracy(pd.DataFrame({"method": ["a"], "group": [0]}))
