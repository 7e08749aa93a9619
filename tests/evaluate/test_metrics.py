"""Metric tests with hand-built predictions and expected values worked out by hand."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest

from starft_pipeline.evaluate.metrics import (
    WATERBIRDS_GROUP_NAMES,
    WATERBIRDS_TRAIN_GROUP_COUNTS,
    GroupMetrics,
    bootstrap_ci,
    check_waterbirds_group_counts,
    count_groups,
    group_ids,
    group_robust_metrics,
    headline_average,
    per_class_accuracy,
)

WB = WATERBIRDS_TRAIN_GROUP_COUNTS


def make_split(sizes: list[int], n_correct: list[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Binary labels, groups g = 2y + place; in group g the first n_correct[g] predictions are right."""
    y_true, y_pred, groups = [], [], []
    for g, (size, k) in enumerate(zip(sizes, n_correct, strict=True)):
        y = g // 2
        y_true += [y] * size
        y_pred += [y] * k + [1 - y] * (size - k)
        groups += [g] * size
    return np.array(y_true), np.array(y_pred), np.array(groups)


# Toy split (test group sizes / correct predictions):
#   g0 landbird on land   : 10 samples, 9 right -> 0.90
#   g1 landbird on water  :  5 samples, 3 right -> 0.60
#   g2 waterbird on land  :  4 samples, 1 right -> 0.25
#   g3 waterbird on water :  8 samples, 6 right -> 0.75
TOY_SIZES = [10, 5, 4, 8]
TOY_CORRECT = [9, 3, 1, 6]


def test_group_ids_waterbirds_formula() -> None:
    y = [0, 0, 1, 1]
    place = [0, 1, 0, 1]
    assert group_ids(y, place, 2).tolist() == [0, 1, 2, 3]  # g = 2y + place
    assert group_ids([2], [1], 3).tolist() == [7]  # g = 2*3 + 1


def test_group_ids_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="place"):
        group_ids([0, 1], [0, 2], 2)
    with pytest.raises(ValueError, match="lengths"):
        group_ids([0, 1], [0], 2)


def test_count_groups() -> None:
    assert count_groups([0, 0, 3, 1, 3, 3], 4).tolist() == [2, 1, 0, 3]


def test_toy_split_by_hand() -> None:
    y_true, y_pred, groups = make_split(TOY_SIZES, TOY_CORRECT)
    m = group_robust_metrics(y_true, y_pred, groups, 4, WB)

    assert m.n == 27
    # plain average: (9 + 3 + 1 + 6) / 27 = 19 / 27
    assert m.avg_acc == pytest.approx(19 / 27)
    assert m.group_acc == pytest.approx({0: 0.90, 1: 0.60, 2: 0.25, 3: 0.75})
    assert m.group_n == {0: 10, 1: 5, 2: 4, 3: 8}
    # worst = min(0.90, 0.60, 0.25, 0.75) = 0.25, group 2
    assert m.worst_group_acc == pytest.approx(0.25)
    assert m.worst_group == 2
    # WILDS adj_acc_avg, weights = train counts 3498/184/56/1057 over 4795:
    #   0.90*3498 = 3148.20
    #   0.60* 184 =  110.40
    #   0.25*  56 =   14.00
    #   0.75*1057 =  792.75
    #   sum       = 4065.35  -> 4065.35 / 4795 = 0.84783...
    assert 3498 + 184 + 56 + 1057 == 4795
    assert m.adjusted_avg_acc == pytest.approx(4065.35 / 4795)
    assert m.adjusted_avg_acc == pytest.approx(0.847831, abs=1e-6)
    # unweighted mean over groups: (0.90 + 0.60 + 0.25 + 0.75) / 4 = 2.5 / 4
    assert m.mean_group_acc == pytest.approx(0.625)


def test_accepts_lists_bools_and_integral_floats() -> None:
    y_true, y_pred, groups = make_split(TOY_SIZES, TOY_CORRECT)
    a = group_robust_metrics(y_true, y_pred, groups, 4, WB)
    b = group_robust_metrics(y_true.astype(float).tolist(), y_pred.astype(bool), groups.tolist(), 4, list(WB))
    assert a == b


def test_perfect_predictions() -> None:
    y_true, y_pred, groups = make_split([3, 2, 2, 3], [3, 2, 2, 3])
    m = group_robust_metrics(y_true, y_pred, groups, 4, WB)
    assert (m.avg_acc, m.worst_group_acc, m.adjusted_avg_acc, m.mean_group_acc) == (1.0, 1.0, 1.0, 1.0)


def test_all_wrong_predictions() -> None:
    y_true, y_pred, groups = make_split([3, 2, 2, 3], [0, 0, 0, 0])
    m = group_robust_metrics(y_true, y_pred, groups, 4, WB)
    assert (m.avg_acc, m.worst_group_acc, m.adjusted_avg_acc, m.mean_group_acc) == (0.0, 0.0, 0.0, 0.0)


def test_adjusted_differs_from_mean_and_plain_average() -> None:
    # Only the big training group g0 is right: 1 sample per group, g0 correct.
    y_true, y_pred, groups = make_split([1, 1, 1, 1], [1, 0, 0, 0])
    m = group_robust_metrics(y_true, y_pred, groups, 4, WB)
    assert m.avg_acc == 0.25  # 1 / 4
    assert m.mean_group_acc == 0.25  # (1 + 0 + 0 + 0) / 4
    assert m.adjusted_avg_acc == pytest.approx(3498 / 4795)  # 1.0 * 3498 / 4795 = 0.7295...
    assert m.worst_group_acc == 0.0


def test_empty_group_raises_naming_group() -> None:
    y_true, y_pred, groups = make_split([10, 5, 0, 8], [9, 3, 0, 6])
    with pytest.raises(ValueError, match=r"group\(s\) 2 have no samples") as err:
        group_robust_metrics(y_true, y_pred, groups, 4, WB)
    assert "allow_empty_groups=True" in str(err.value)


def test_empty_group_allowed() -> None:
    y_true, y_pred, groups = make_split([10, 5, 0, 8], [9, 3, 0, 6])
    m = group_robust_metrics(y_true, y_pred, groups, 4, WB, allow_empty_groups=True)
    assert m.group_n[2] == 0 and math.isnan(m.group_acc[2])
    assert m.n == 23
    assert m.avg_acc == pytest.approx(18 / 23)  # (9 + 3 + 6) / 23
    assert m.worst_group_acc == pytest.approx(0.6) and m.worst_group == 1  # min(0.9, 0.6, 0.75)
    assert m.mean_group_acc == pytest.approx(0.75)  # (0.9 + 0.6 + 0.75) / 3 = 2.25 / 3
    # weights renormalised over present groups: 3498 + 184 + 1057 = 4739
    #   0.90*3498 + 0.60*184 + 0.75*1057 = 3148.2 + 110.4 + 792.75 = 4051.35
    assert m.adjusted_avg_acc == pytest.approx(4051.35 / 4739)


def test_mismatched_lengths() -> None:
    y_true, y_pred, groups = make_split(TOY_SIZES, TOY_CORRECT)
    with pytest.raises(ValueError, match="lengths differ.*`y_pred` 26"):
        group_robust_metrics(y_true, y_pred[:-1], groups, 4, WB)
    with pytest.raises(ValueError, match="lengths differ.*`groups` 26"):
        group_robust_metrics(y_true, y_pred, groups[:-1], 4, WB)


def test_out_of_range_labels_and_groups() -> None:
    y_true, y_pred, groups = make_split(TOY_SIZES, TOY_CORRECT)
    bad = groups.copy()
    bad[0] = 4
    with pytest.raises(ValueError, match="`groups` has value 4"):
        group_robust_metrics(y_true, y_pred, bad, 4, WB)
    bad_pred = y_pred.copy()
    bad_pred[0] = 2
    with pytest.raises(ValueError, match="`y_pred` has value 2"):
        group_robust_metrics(y_true, bad_pred, groups, 4, WB, n_classes=2)
    bad_true = y_true.copy()
    bad_true[0] = -1
    with pytest.raises(ValueError, match="y_true"):
        group_robust_metrics(bad_true, y_pred, groups, 4, WB)
    with pytest.raises(ValueError, match="y_pred.*logits"):
        group_robust_metrics(y_true, np.zeros((27, 2)), groups, 4, WB)
    with pytest.raises(ValueError, match="y_pred"):
        group_robust_metrics(y_true, y_pred + 0.5, groups, 4, WB)


def test_bad_train_group_counts() -> None:
    y_true, y_pred, groups = make_split(TOY_SIZES, TOY_CORRECT)
    with pytest.raises(ValueError, match="train_group_counts.*n_groups=4"):
        group_robust_metrics(y_true, y_pred, groups, 4, (3498, 184, 56))
    with pytest.raises(ValueError, match="train_group_counts.*all zero"):
        group_robust_metrics(y_true, y_pred, groups, 4, (0, 0, 0, 0))
    with pytest.raises(ValueError, match="train_group_counts"):
        group_robust_metrics(y_true, y_pred, groups, 4, (1, -1, 0, 0))


def test_per_class_accuracy() -> None:
    # class 0: 3 samples, 2 right; class 1: 2 samples, 2 right; class 2: none
    y_true = [0, 0, 0, 1, 1]
    y_pred = [0, 1, 0, 1, 1]
    acc = per_class_accuracy(y_true, y_pred, 3)
    assert acc[0] == pytest.approx(2 / 3) and acc[1] == 1.0 and math.isnan(acc[2])
    with pytest.raises(ValueError, match="y_pred"):
        per_class_accuracy([0, 1], [0, 3], 3)


def test_headline_average_conventions() -> None:
    m = GroupMetrics(n=4, avg_acc=0.5, worst_group_acc=0.1, adjusted_avg_acc=0.8, mean_group_acc=0.4)
    assert headline_average(m, "waterbirds") == 0.8
    assert headline_average(m, "celeba") == 0.5
    with pytest.raises(ValueError):
        headline_average(m, "imagenet")  # type: ignore[arg-type]


def test_waterbirds_count_check() -> None:
    assert WB == (3498, 184, 56, 1057)
    assert len(WATERBIRDS_GROUP_NAMES) == 4
    assert check_waterbirds_group_counts((3498, 184, 56, 1057)) is None
    assert check_waterbirds_group_counts(np.array([3498, 184, 56, 1057])) is None
    msg = check_waterbirds_group_counts([3498, 184, 1057, 56])
    assert msg is not None and "[3498, 184, 1057, 56]" in msg and "[3498, 184, 56, 1057]" in msg
    assert check_waterbirds_group_counts([4795]) is not None


# --------------------------------------------------------------------------- bootstrap


def test_bootstrap_contains_point_and_is_deterministic() -> None:
    y_true, y_pred, groups = make_split([200, 100, 80, 150], [180, 60, 40, 120])
    point = group_robust_metrics(y_true, y_pred, groups, 4, WB)
    ci = bootstrap_ci(y_true, y_pred, groups, 4, WB, n_resamples=1000, seed=3)
    assert set(ci) == {"avg_acc", "worst_group_acc", "adjusted_avg_acc"}
    for name, (lo, hi) in ci.items():
        estimate = getattr(point, name)
        assert 0.0 <= lo <= estimate <= hi <= 1.0, name
        assert hi - lo < 0.25, name
    assert bootstrap_ci(y_true, y_pred, groups, 4, WB, n_resamples=1000, seed=3) == ci
    assert bootstrap_ci(y_true, y_pred, groups, 4, WB, n_resamples=1000, seed=4) != ci
    narrow = bootstrap_ci(y_true, y_pred, groups, 4, WB, n_resamples=1000, confidence=0.5, seed=3)
    for name in ci:
        assert ci[name][0] <= narrow[name][0] <= narrow[name][1] <= ci[name][1]


def test_bootstrap_stratified_keeps_perfect_groups() -> None:
    y_true, y_pred, groups = make_split([5, 5, 5, 5], [5, 5, 5, 5])
    ci = bootstrap_ci(y_true, y_pred, groups, 4, WB, n_resamples=200)
    assert ci == {k: (1.0, 1.0) for k in ("avg_acc", "worst_group_acc", "adjusted_avg_acc")}


def test_bootstrap_matches_explicit_index_resampling() -> None:
    """The binomial shortcut must agree with resampling sample indices within each group."""
    y_true, y_pred, groups = make_split([300, 60, 40, 200], [270, 36, 20, 150])
    ci = bootstrap_ci(y_true, y_pred, groups, 4, WB, n_resamples=4000, seed=0)

    rng = np.random.default_rng(1)
    correct = y_true == y_pred
    weights = np.array(WB) / 4795
    avg, worst, adj = [], [], []
    index = [np.flatnonzero(groups == g) for g in range(4)]
    for _ in range(4000):
        accs, hits = [], 0
        for idx in index:
            sample = correct[rng.choice(idx, size=idx.size, replace=True)]
            accs.append(sample.mean())
            hits += sample.sum()
        avg.append(hits / correct.size)
        worst.append(min(accs))
        adj.append(float(np.dot(accs, weights)))
    explicit = {"avg_acc": avg, "worst_group_acc": worst, "adjusted_avg_acc": adj}
    for name, values in explicit.items():
        lo, hi = np.quantile(values, [0.025, 0.975])
        assert ci[name][0] == pytest.approx(lo, abs=0.015), name
        assert ci[name][1] == pytest.approx(hi, abs=0.015), name


def test_bootstrap_is_fast() -> None:
    rng = np.random.default_rng(0)
    groups = rng.integers(0, 4, size=10_000)
    y_true = groups // 2
    y_pred = np.where(rng.random(10_000) < 0.8, y_true, 1 - y_true)
    start = time.perf_counter()
    bootstrap_ci(y_true, y_pred, groups, 4, WB, n_resamples=1000)
    assert time.perf_counter() - start < 1.0


def test_bootstrap_validates() -> None:
    y_true, y_pred, groups = make_split([10, 5, 0, 8], [9, 3, 0, 6])
    with pytest.raises(ValueError, match="group"):
        bootstrap_ci(y_true, y_pred, groups, 4, WB)
    ci = bootstrap_ci(y_true, y_pred, groups, 4, WB, allow_empty_groups=True)
    assert all(lo <= hi for lo, hi in ci.values())
    with pytest.raises(ValueError, match="confidence"):
        bootstrap_ci(y_true, y_pred, groups, 4, WB, confidence=95, allow_empty_groups=True)
