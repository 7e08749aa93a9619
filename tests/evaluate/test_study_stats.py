"""The study's grid file and its paired statistics, against hand-computed values."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest
import yaml

from starft_pipeline.evaluate.study_stats import (
    Selection,
    default_selection_split,
    frontier_intervals,
    frontier_markdown,
    load_grid,
    paired_table,
    parse_grid,
    recovered_fraction,
    seed_frontiers,
    select_cell,
    select_on_frontier,
    study_markdown,
    t_interval,
    t_quantile,
)

ROOT = Path(__file__).resolve().parents[2]


def _runs() -> pd.DataFrame:
    """FLYP at 0.80 on every seed, zero-shot 0.90; cell `a` +1, +2, +3 points, cell `b` −1 point on toy/val."""
    rows = [{"cell": "zero_shot", "seed": 0, "split": "toy/val", "worst_group_acc": 0.90, "avg_acc": 0.95}]
    for seed, (a, b) in enumerate([(0.81, 0.79), (0.82, 0.79), (0.83, 0.79)]):
        rows += [
            {"cell": "flyp", "seed": seed, "split": "toy/val", "worst_group_acc": 0.80, "avg_acc": 0.90},
            {"cell": "a", "seed": seed, "split": "toy/val", "worst_group_acc": a, "avg_acc": 0.90},
            {"cell": "b", "seed": seed, "split": "toy/val", "worst_group_acc": b, "avg_acc": 0.91},
        ]
    return pd.DataFrame(rows)


def test_t_quantile_matches_the_table():
    assert t_quantile(2) == pytest.approx(4.303, abs=5e-4)
    assert t_quantile(4) == pytest.approx(2.776, abs=5e-4)


def test_t_interval_of_three_paired_differences():
    mean, low, high = t_interval([0.01, 0.02, 0.03])
    half = 4.3027 * 0.01 / math.sqrt(3)  # sd 0.01, n 3
    assert mean == pytest.approx(0.02)
    assert (low, high) == (pytest.approx(0.02 - half, abs=1e-5), pytest.approx(0.02 + half, abs=1e-5))
    assert math.isnan(t_interval([0.5])[1])  # one seed: no interval


def test_paired_table_by_hand():
    table = paired_table(_runs(), ["a", "b"], "flyp", metrics=["worst_group_acc"])
    a = table.set_index("cell").loc["a"]
    half = 4.3027 * 0.01 / math.sqrt(3)
    assert a["n_seeds"] == 3 and a["reference_mean"] == pytest.approx(0.80) and a["cell_mean"] == pytest.approx(0.82)
    assert a["diff_mean"] == pytest.approx(0.02)
    assert a["diff_ci_low"] == pytest.approx(0.02 - half, abs=1e-5)
    # erosion 0.90 − 0.80 = 0.10 in every seed: per-seed ratios 0.1, 0.2, 0.3 → mean 0.2, half-width half / 0.10
    assert a["recovered"] == pytest.approx(0.2)
    assert a["recovered_ci_high"] == pytest.approx((0.02 + half) / 0.10, abs=1e-4)
    b = table.set_index("cell").loc["b"]
    assert b["diff_mean"] == pytest.approx(-0.01) and b["diff_ci_low"] == pytest.approx(-0.01)  # no spread


def test_pairs_only_seeds_both_have():
    runs = _runs()
    runs = runs[~((runs["cell"] == "a") & (runs["seed"] == 2))]
    a = paired_table(runs, ["a"], metrics=["worst_group_acc"]).iloc[0]
    assert a["n_seeds"] == 2 and a["diff_mean"] == pytest.approx(0.015)


def test_recovered_fraction_is_the_mean_of_per_seed_ratios():
    # seed 0: (0.85 − 0.80) / (0.90 − 0.80) = 0.5; seed 1: (0.80 − 0.70) / (0.90 − 0.70) = 0.5; seed 2:
    # (0.78 − 0.75) / 0.15 = 0.2 → mean 0.4, sd 0.173205, half-width 4.3027 · 0.173205 / √3 = 0.430270
    reference = pd.Series([0.80, 0.70, 0.75])
    mean, low, high, note = recovered_fraction(pd.Series([0.85, 0.80, 0.78]), reference, zero_shot=0.90)
    assert note == "" and mean == pytest.approx(0.4)
    assert (low, high) == (pytest.approx(0.4 - 0.43027, abs=1e-4), pytest.approx(0.4 + 0.43027, abs=1e-4))


def test_recovered_fraction_is_nan_with_a_note_without_erosion():
    cell, reference = pd.Series([0.86, 0.90]), pd.Series([0.85, 0.78])
    *values, note = recovered_fraction(cell, reference, zero_shot=0.80)
    assert all(math.isnan(v) for v in values) and "no erosion" in note and "-5.0" in note


def test_selection_uses_validation_and_breaks_ties_by_average():
    table = paired_table(_runs(), ["a", "b"], "flyp")
    assert select_cell(table, "toy/val") == "a"
    tied = _runs().assign(worst_group_acc=0.80)  # every worst-group difference 0: b's +1 average point wins
    assert select_cell(paired_table(tied, ["a", "b"], "flyp"), "toy/val") == "b"
    with pytest.raises(ValueError, match="never on test"):
        select_cell(table, "toy/test")


def _val_intervals(gains: dict[tuple[str, str], float]) -> pd.DataFrame:
    rows = [
        {"method": method, "ood_split": "toy/val", "ood_metric": metric, "gain_mean": gain}
        for (method, metric), gain in gains.items()
    ]
    return pd.DataFrame(rows)


def test_selection_on_the_frontier_ranks_cells_by_their_gain_over_the_curve():
    gains = {
        ("a", "worst_group_acc"): 0.01,
        ("b", "worst_group_acc"): 0.03,
        ("zero_shot", "worst_group_acc"): 0.05,  # not a cell: never chosen
        ("a", "avg_acc"): 0.02,
        ("b", "avg_acc"): -0.01,
    }
    assert select_on_frontier(_val_intervals(gains), ["a", "b"], "toy/val") == "b"
    tied = gains | {("a", "worst_group_acc"): 0.03}  # tie on worst group: a's average gain wins
    assert select_on_frontier(_val_intervals(tied), ["a", "b"], "toy/val") == "a"
    no_gain = gains | {("b", "worst_group_acc"): math.nan}  # b outside every curve: a
    assert select_on_frontier(_val_intervals(no_gain), ["a", "b"], "toy/val") == "a"
    with pytest.raises(ValueError, match="never on test"):
        select_on_frontier(_val_intervals(gains), ["a", "b"], "toy/test")
    with pytest.raises(ValueError, match="selection.by"):
        Selection(by="test_accuracy")
    grid = parse_grid({"study": {"selection": {"by": "frontier"}, "cells": {"a": {"method": "star"}}}})
    assert grid.selection.by == "frontier"


def test_default_selection_split_is_the_transfer_tasks_val():
    splits = ["synthetic/val", "synthetic/test", "waterbirds_like/val", "waterbirds_like/test"]
    assert default_selection_split(splits, "synthetic") == "waterbirds_like/val"
    assert default_selection_split(splits[:2], "synthetic") == "synthetic/val"


def test_markdown_names_the_selected_cell_and_its_test_rows():
    runs = _runs()
    runs = pd.concat([runs, runs.assign(split="toy/test")], ignore_index=True)
    table = paired_table(runs, ["a", "b"], "flyp")
    grid = parse_grid({"study": {"cells": {"a": {"method": "star"}, "b": {"method": "kl"}}}})
    header = {"name": "s", "command": "python -m starft_pipeline.study", "seeds": [0, 1, 2], "runs": 9, "wall_s": 60}
    text = study_markdown(table, grid, "toy/val", "a", header)
    assert "Selected: `a`" in text and "### toy/test" in text
    assert "+2.0 [-0.5, +4.5]" in text and "+0.20 [-0.05, +0.45]" in text


def test_the_committed_grid_is_the_pre_registered_one():
    grid = load_grid(ROOT / "conf" / "base" / "study.yml")
    assert grid.reference == "flyp" and grid.seeds == (0, 1, 2, 3, 4)
    cells = {cell.name: cell for cell in grid.cells}
    assert len(cells) == 12
    lambdas = {(c.overrides["diminishing"], c.overrides["reg_weight"]) for c in cells.values() if "online_bg" in c.name}
    assert lambdas == {(d, w) for d in (True, False) for w in (0.5, 1.0, 2.0, 5.0)}
    assert cells["star_online_all_dim_0.5"].finetune_params(["x", "y"])["confounder_types"] == ["x", "y"]
    assert cells["kl_online_bg_dim_0.5"].method == "kl"
    assert grid.subset(["kl_online_bg_dim_0.5"]).cells == (cells["kl_online_bg_dim_0.5"],)
    with pytest.raises(ValueError, match="nope"):
        grid.subset(["nope"])


@pytest.mark.parametrize(
    ("cell", "message"),
    [
        ({"method": "flyp"}, "unknown method namespace 'flyp'"),
        ({"method": "star", "reg_wieght": 2}, r"unknown key\(s\) \['reg_wieght'\]"),
        ({"method": "star", "seed": 3}, "runner sets the seed"),
        ({"method": "star", "confounder_types": "some"}, "non-empty list or `all`"),
        ({"reg_weight": 2}, "expected a mapping with `method`"),
    ],
)
def test_a_bad_cell_is_named_with_the_file(tmp_path, cell, message):
    path = tmp_path / "study.yml"
    path.write_text(yaml.safe_dump({"study": {"cells": {"bad_cell": cell}}}))
    with pytest.raises(ValueError, match=message) as error:
        load_grid(path)
    assert str(path) in str(error.value) and "'bad_cell'" in str(error.value)


def test_unknown_grid_keys_are_named(tmp_path):
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['seed'\] under `study`"):
        parse_grid({"study": {"seed": [0], "cells": {"a": {"method": "star"}}}}, "g.yml")
    with pytest.raises(ValueError, match="`seeds` has duplicates"):
        parse_grid({"study": {"seeds": [0, 0], "cells": {"a": {"method": "star"}}}}, "g.yml")
    with pytest.raises(FileNotFoundError, match="missing.yml"):
        load_grid(tmp_path / "missing.yml")


# --------------------------------------------------------------------------------------------
# The runner's pure parts: jobs, runtime parameters, the resumable rows file
# --------------------------------------------------------------------------------------------


def _grid():
    return parse_grid(
        {"study": {"cells": {"c": {"method": "kl", "reg_weight": 2.0, "confounder_types": "all"}}}}, "g.yml"
    )


def test_jobs_run_the_reference_then_each_cell_seed_by_seed():
    from starft_pipeline.study import study_jobs

    jobs = study_jobs(_grid(), [3, 4], ["bg", "texture"], {})
    assert [(job.cell, job.seed) for job in jobs] == [("flyp", 3), ("c", 3), ("flyp", 4), ("c", 4)]
    params = jobs[1].runtime_params({"kl": {"finetune": {"epochs": 1}}})
    assert params["kl"]["finetune"] == {
        "epochs": 1,
        "reg_weight": 2.0,
        "confounder_types": ["bg", "texture"],
        "seed": 3,
    }
    assert params["evaluation"] == {"models": ["kl"], "zero_shot": True, "wise_ft": {"methods": []}}
    # the reference's run sweeps its own WiSE-FT curve (the frontier); a cell's does not
    assert jobs[0].sweep and not jobs[1].sweep
    assert jobs[0].runtime_params({})["evaluation"]["wise_ft"] == {"methods": ["flyp"]}
    assert jobs[1].runtime_params({}, zero_shot=False)["evaluation"]["zero_shot"] is False
    assert jobs[1].node_names() == ["kl.finetune", "evaluation.evaluate_models"]
    assert jobs[0].key != study_jobs(_grid(), [3], ["bg"], {"flyp": {"finetune": {"lr": 1.0}}})[0].key
    assert jobs[0].key != study_jobs(_grid(), [3], ["bg"], {}, upstream="another teacher or data")[0].key


def test_the_rows_file_resumes_and_refuses_rows_of_other_settings(tmp_path):
    from starft_pipeline.study import append_runs, done_keys, read_runs, study_jobs

    path = tmp_path / "s_runs.csv"
    jobs = study_jobs(_grid(), [0, 1], ["bg"], {})
    assert done_keys(read_runs(path), jobs, path) == set()
    row = {"split": "toy/val", "worst_group_acc": 0.5}
    append_runs(path, pd.DataFrame([{**row, "cell": "flyp", "seed": 0, "settings_key": jobs[0].key}]))
    append_runs(path, pd.DataFrame([{**row, "cell": "c", "seed": 0, "settings_key": jobs[1].key}]))
    assert done_keys(read_runs(path), jobs, path) == {("flyp", 0), ("c", 0)}
    assert len(read_runs(path)) == 2 and not list(tmp_path.glob(".*.tmp"))  # no temporary file left
    changed = study_jobs(_grid(), [0, 1], ["bg", "texture"], {})  # `all` now means another pool list
    with pytest.raises(ValueError, match="cell 'c' seed 0 was run with other settings"):
        done_keys(read_runs(path), changed, path)


def test_the_grid_file_follows_the_environment(tmp_path):
    from starft_pipeline.study import grid_path

    (tmp_path / "conf" / "base").mkdir(parents=True)
    (tmp_path / "conf" / "mini").mkdir()
    assert grid_path(tmp_path, "mini") == tmp_path / "conf" / "base" / "study.yml"
    (tmp_path / "conf" / "mini" / "study.yml").write_text("study: {}")
    assert grid_path(tmp_path, "mini") == tmp_path / "conf" / "mini" / "study.yml"
    assert grid_path(tmp_path, None) == tmp_path / "conf" / "base" / "study.yml"


def test_a_runs_metrics_hold_its_loss_curves_and_accuracies():
    from starft_pipeline.study import run_metrics, study_jobs

    job = study_jobs(_grid(), [0], ["bg"], {})[1]
    history = pd.DataFrame(
        {"method": "kl", "step": [1, 2], "epoch": [0, 0], "loss": [3.5, 3.4], "contrastive": [3.4, 3.3]}
    )
    rows = pd.DataFrame([{"split": "toy/val", "worst_group_acc": 0.5, "avg_acc": 0.75}])
    metrics = run_metrics(job, rows, history, 12.5)
    assert ("kl.train.loss", 3.4, 2) in metrics and ("kl.train.contrastive", 3.5 - 0.1, 1) in metrics
    assert ("c.toy.val.worst_group_acc", 0.5, 0) in metrics and ("study.wall_s", 12.5, 0) in metrics


def _frontier_rows():
    """Three seeds; FLYP's curve per seed: ID 0.6 → 0.8, transfer worst group 0.5 → 0.3 (α 0, 1), shifted
    seed by seed by 0.01·seed; the cell sits at ID 0.7 with worst group 0.41 + 0.02·seed + 0.01·seed."""
    curves, runs = [], []
    for seed in (0, 1, 2):
        for alpha, id_acc, wg in [(0.0, 0.6, 0.5), (1.0, 0.8, 0.3)]:
            curves.append(("flyp", alpha, "synthetic", "test", id_acc, 0.6, 0.3, seed))
            curves.append(("flyp", alpha, "waterbirds_like", "test", 0.9, 0.8, wg + 0.01 * seed, seed))
        runs.append(("cell_a", seed, "synthetic/test", 0.7, 0.6, 0.3))
        runs.append(("cell_a", seed, "waterbirds_like/test", 0.9, 0.8, 0.41 + 0.03 * seed))
        runs.append(("cell_b", seed, "synthetic/test", 0.9, 0.6, 0.3))  # ID above the curve
        runs.append(("cell_b", seed, "waterbirds_like/test", 0.9, 0.8, 0.1))
    runs.append(("zero_shot", 0, "synthetic/test", 0.6, 0.6, 0.3))
    runs.append(("zero_shot", 0, "waterbirds_like/test", 0.9, 0.8, 0.5))
    curve_columns = ["method", "alpha", "dataset", "split", "adjusted_avg_acc", "avg_acc", "worst_group_acc", "seed"]
    run_columns = ["cell", "seed", "split", "adjusted_avg_acc", "avg_acc", "worst_group_acc"]
    return pd.DataFrame(runs, columns=run_columns), pd.DataFrame(curves, columns=curve_columns)


def test_the_frontier_gain_is_paired_by_seed_with_a_t_interval():
    runs, curves = _frontier_rows()
    frontiers = seed_frontiers(runs, curves, "synthetic", method_column="cell")
    intervals = frontier_intervals(frontiers).set_index(["method", "ood_split", "ood_metric"])
    # Seed s: curve at ID 0.7 = 0.40 + 0.01·s, the cell 0.41 + 0.03·s → gains 0.01, 0.03, 0.05:
    # mean 0.03, sd 0.02, half-width t(2)·0.02/√3 = 4.303·0.011547 = 0.049686.
    a = intervals.loc[("cell_a", "waterbirds_like/test", "worst_group_acc")]
    assert a["n_seeds"] == 3 and a["n_outside"] == 0 and a["gain_mean"] == pytest.approx(0.03)
    assert a["gain_ci_low"] == pytest.approx(0.03 - 0.049686, abs=1e-5)
    assert a["gain_ci_high"] == pytest.approx(0.03 + 0.049686, abs=1e-5)
    # cell_b's ID 0.9 lies beyond every seed's curve: compared with its end (FLYP, 0.30 + 0.01·s),
    # gains 0.1 − 0.30 − 0.01·s = −0.20, −0.21, −0.22; three seeds flagged outside.
    b = intervals.loc[("cell_b", "waterbirds_like/test", "worst_group_acc")]
    assert b["n_seeds"] == 3 and b["n_outside"] == 3 and b["gain_mean"] == pytest.approx(-0.21)
    # zero-shot is the α = 0 end of every seed's curve at ID 0.6: gains 0, −0.01, −0.02
    z = intervals.loc[("zero_shot", "waterbirds_like/test", "worst_group_acc")]
    assert z["n_seeds"] == 3 and z["gain_mean"] == pytest.approx(-0.01)
    text = frontier_markdown(intervals.reset_index())
    assert "+3.0 [-2.0, +8.0]" in text and "gain over flyp WiSE-FT (points) [95% CI]" in text


def test_the_study_writes_its_frontier_from_the_reference_curves(tmp_path):
    from starft_pipeline.study import curves_path, study_frontier

    runs, curves = _frontier_rows()
    runs = runs.assign(method=runs["cell"].map({"cell_a": "star", "cell_b": "star"}).fillna("zero_shot"))
    grid = parse_grid({"study": {"reference": "flyp", "cells": {"cell_a": {"method": "star"}}}}, "g.yml")
    path = curves_path(tmp_path / "s_runs.csv")
    assert path.name == "s_curves.csv" and study_frontier(runs, path, grid, "synthetic") is None
    curves.to_csv(path, index=False)
    frontiers, intervals = study_frontier(runs, path, grid, "synthetic")
    a = intervals.set_index(["method", "ood_split", "ood_metric"]).loc[
        ("cell_a", "waterbirds_like/test", "worst_group_acc")
    ]
    assert a["gain_mean"] == pytest.approx(0.03) and set(frontiers["seed"]) == {0, 1, 2}


def test_rows_of_a_copy_are_imported_once_with_their_curves(tmp_path):
    from starft_pipeline.study import curves_path, import_rows, read_runs

    mine, theirs = tmp_path / "mine", tmp_path / "theirs"
    mine.mkdir(), theirs.mkdir()
    path = mine / "s_runs.csv"

    def rows(cells_seeds):
        return pd.DataFrame(
            [
                {"cell": c, "seed": k, "split": "toy/val", "avg_acc": 0.5, "settings_key": f"{c}{k}"}
                for c, k in cells_seeds
            ]
        )

    rows([("zero_shot", 0), ("flyp", 0), ("a", 0)]).to_csv(path, index=False)
    pd.DataFrame({"method": ["flyp"], "alpha": [1.0], "seed": [0]}).to_csv(curves_path(path), index=False)
    rows([("zero_shot", 3), ("flyp", 3), ("a", 3), ("a", 0)]).to_csv(theirs / "s_runs.csv", index=False)
    pd.DataFrame({"method": ["flyp", "flyp"], "alpha": [1.0, 1.0], "seed": [3, 0]}).to_csv(
        theirs / "s_curves.csv", index=False
    )
    assert import_rows(path, theirs) == 2  # flyp and a of seed 3; a seed 0 is already here, zero-shot too
    merged = read_runs(path)
    assert sorted(zip(merged["cell"], merged["seed"])) == [
        ("a", 0),
        ("a", 3),
        ("flyp", 0),
        ("flyp", 3),
        ("zero_shot", 0),
    ]
    assert sorted(read_runs(curves_path(path))["seed"]) == [0, 3]
    assert import_rows(path, theirs) == 0 and len(read_runs(path)) == 5  # a second import adds nothing
    with pytest.raises(FileNotFoundError, match="--rows-from"):
        import_rows(path, tmp_path)
