"""Group-robust classification metrics (pure numpy; see docs/evaluation-conventions.md).

Conventions
-----------
* Accuracies are fractions in ``[0, 1]``; percent formatting happens only in reporting.
* A *group* is ``g = y * n_places + place``; for Waterbirds and CelebA ``n_places = 2``,
  so ``g = 2 * y + place`` (Waterbirds: place 1 = water; CelebA: "place" is ``Male``).
* ``avg_acc`` is plain top-1 over every evaluated sample.
* ``worst_group_acc`` is the minimum over groups that have samples in the evaluated split.
* ``adjusted_avg_acc`` is WILDS' ``adj_acc_avg`` (Sagawa et al.): the evaluated split's
  per-group accuracies weighted by the **training** group proportions,
  ``sum_g acc_g * n_train_g / sum_g n_train_g``. This is what papers call "average" on
  Waterbirds.
* ``mean_group_acc`` is the unweighted mean of per-group accuracies. It is *not* the
  adjusted average and must never be labelled so.
* CelebA's reported "average" is the plain test average, ``avg_acc`` (see
  :func:`headline_average`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import ArrayLike, NDArray

from starft_pipeline.data.tasks import CONVENTIONS, Convention

__all__ = [
    "CELEBA_GROUP_NAMES",
    "HEADLINE_METRIC",
    "WATERBIRDS_GROUP_NAMES",
    "WATERBIRDS_TRAIN_GROUP_COUNTS",
    "GroupMetrics",
    "bootstrap_ci",
    "check_convention",
    "check_waterbirds_group_counts",
    "convention_warning",
    "count_groups",
    "group_ids",
    "group_robust_metrics",
    "headline_average",
    "per_class_accuracy",
]

#: Training-split group counts of the Waterbirds release ``waterbird_complete95_forest2water2``,
#: indexed by ``g = 2 * y + place``.
WATERBIRDS_TRAIN_GROUP_COUNTS: tuple[int, int, int, int] = (3498, 184, 56, 1057)

#: Human-readable Waterbirds group names, indexed by ``g = 2 * y + place`` (y 1 = waterbird, place 1 = water).
WATERBIRDS_GROUP_NAMES: tuple[str, str, str, str] = (
    "landbird on land",
    "landbird on water",
    "waterbird on land",
    "waterbird on water",
)

#: CelebA (Blond_Hair x Male) group names, indexed by ``g = 2 * blond + male``.
CELEBA_GROUP_NAMES: tuple[str, str, str, str] = (
    "non-blond female",
    "non-blond male",
    "blond female",
    "blond male",
)


# --------------------------------------------------------------------------- validation


def _int_array(name: str, values: ArrayLike) -> NDArray[np.int64]:
    """Return ``values`` as a 1-D int64 array, or raise ``ValueError`` naming ``name``."""
    arr = np.asarray(values)
    if arr.ndim != 1:
        hint = " (pass predicted labels, e.g. logits.argmax(axis=1), not logits)" if arr.ndim == 2 else ""
        raise ValueError(f"`{name}` must be 1-D, got shape {arr.shape}{hint}.")
    if arr.dtype == bool:
        return arr.astype(np.int64)
    if np.issubdtype(arr.dtype, np.integer):
        return arr.astype(np.int64, copy=False)
    if np.issubdtype(arr.dtype, np.floating):
        if arr.size and not (np.all(np.isfinite(arr)) and np.all(arr == np.round(arr))):
            raise ValueError(f"`{name}` must hold integer labels; got non-integral or non-finite floats.")
        return arr.astype(np.int64)
    raise ValueError(f"`{name}` must hold integer labels; got dtype {arr.dtype}.")


def _check_range(name: str, arr: NDArray[np.int64], upper: int, what: str) -> None:
    if arr.size == 0:
        return
    lo, hi = int(arr.min()), int(arr.max())
    if lo < 0 or hi >= upper:
        bad = lo if lo < 0 else hi
        raise ValueError(f"`{name}` has value {bad} outside [0, {upper}) ({what}).")


def _check_positive_int(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"`{name}` must be a positive integer, got {value!r}.")


def _train_counts(train_group_counts: ArrayLike, n_groups: int) -> NDArray[np.float64]:
    counts = np.asarray(train_group_counts, dtype=np.float64)
    if counts.ndim != 1 or counts.shape[0] != n_groups:
        raise ValueError(
            f"`train_group_counts` must have one entry per group (n_groups={n_groups}), got shape {counts.shape}."
        )
    if not np.all(np.isfinite(counts)) or np.any(counts < 0):
        raise ValueError("`train_group_counts` must be finite and non-negative.")
    if counts.sum() == 0:
        raise ValueError("`train_group_counts` are all zero; the adjusted average needs training group sizes.")
    return counts


# --------------------------------------------------------------------------- groups


def group_ids(y: ArrayLike, place: ArrayLike, n_places: int) -> NDArray[np.int64]:
    """Group index ``g = y * n_places + place`` (Waterbirds/CelebA: ``n_places = 2`` so ``g = 2y + place``)."""
    _check_positive_int("n_places", n_places)
    y_arr = _int_array("y", y)
    place_arr = _int_array("place", place)
    if y_arr.shape != place_arr.shape:
        raise ValueError(f"`y` and `place` lengths differ: {y_arr.shape[0]} vs {place_arr.shape[0]}.")
    if y_arr.size and y_arr.min() < 0:
        raise ValueError(f"`y` has negative value {int(y_arr.min())}.")
    _check_range("place", place_arr, n_places, f"n_places={n_places}")
    return y_arr * n_places + place_arr


def count_groups(groups: ArrayLike, n_groups: int) -> NDArray[np.int64]:
    """Number of samples per group, length ``n_groups`` (use on the train split for ``train_group_counts``)."""
    _check_positive_int("n_groups", n_groups)
    g = _int_array("groups", groups)
    _check_range("groups", g, n_groups, f"n_groups={n_groups}")
    return np.bincount(g, minlength=n_groups).astype(np.int64)


# --------------------------------------------------------------------------- metrics


@dataclass(frozen=True)
class GroupMetrics:
    """Group-robust metrics of one evaluated split. Accuracies are fractions in ``[0, 1]``.

    ``group_acc``/``group_n`` hold every group ``0..n_groups-1``; a group absent from the
    split (only possible with ``allow_empty_groups=True``) has ``n = 0`` and ``acc = nan``.
    """

    n: int
    avg_acc: float
    worst_group_acc: float
    adjusted_avg_acc: float
    mean_group_acc: float
    group_acc: dict[int, float] = field(default_factory=dict)
    group_n: dict[int, int] = field(default_factory=dict)
    worst_group: int = -1

    def as_dict(self) -> dict[str, float | int]:
        """Scalar metrics only (handy for logging to MLflow)."""
        return {
            "n": self.n,
            "avg_acc": self.avg_acc,
            "worst_group_acc": self.worst_group_acc,
            "adjusted_avg_acc": self.adjusted_avg_acc,
            "mean_group_acc": self.mean_group_acc,
            "worst_group": self.worst_group,
        }


def _prepare(
    y_true: ArrayLike,
    y_pred: ArrayLike,
    groups: ArrayLike,
    n_groups: int,
    train_group_counts: ArrayLike,
    allow_empty_groups: bool,
    n_classes: int | None,
) -> tuple[NDArray[np.bool_], NDArray[np.int64], NDArray[np.int64], NDArray[np.float64]]:
    """Validate inputs; return (correct, groups, group_n, train weights over present groups)."""
    _check_positive_int("n_groups", n_groups)
    yt = _int_array("y_true", y_true)
    yp = _int_array("y_pred", y_pred)
    g = _int_array("groups", groups)
    if not (yt.shape[0] == yp.shape[0] == g.shape[0]):
        raise ValueError(f"lengths differ: `y_true` {yt.shape[0]}, `y_pred` {yp.shape[0]}, `groups` {g.shape[0]}.")
    if yt.shape[0] == 0:
        raise ValueError("`y_true` is empty: nothing to evaluate.")
    if n_classes is not None:
        _check_positive_int("n_classes", n_classes)
        _check_range("y_true", yt, n_classes, f"n_classes={n_classes}")
        _check_range("y_pred", yp, n_classes, f"n_classes={n_classes}")
    else:
        if yt.min() < 0:
            raise ValueError(f"`y_true` has negative label {int(yt.min())}.")
        if yp.min() < 0:
            raise ValueError(f"`y_pred` has negative label {int(yp.min())}.")
    _check_range("groups", g, n_groups, f"n_groups={n_groups}")
    train = _train_counts(train_group_counts, n_groups)

    group_n = np.bincount(g, minlength=n_groups).astype(np.int64)
    empty = np.flatnonzero(group_n == 0)
    if empty.size and not allow_empty_groups:
        ids = ", ".join(str(int(e)) for e in empty)
        raise ValueError(
            f"group(s) {ids} have no samples in the evaluated split, so worst-group and adjusted "
            f"accuracy are undefined. Check the split/metadata (group = y * n_places + place) "
            f"and n_groups={n_groups}, or pass allow_empty_groups=True to skip empty groups "
            f"(train weights are then renormalised over the groups present)."
        )
    present = group_n > 0
    weights = np.where(present, train, 0.0)
    if weights.sum() == 0:
        raise ValueError(
            "`train_group_counts` are zero for every group present in the evaluated split; "
            "the adjusted average is undefined."
        )
    weights = weights / weights.sum()
    return yt == yp, g, group_n, weights


def group_robust_metrics(
    y_true: ArrayLike,
    y_pred: ArrayLike,
    groups: ArrayLike,
    n_groups: int,
    train_group_counts: ArrayLike,
    *,
    allow_empty_groups: bool = False,
    n_classes: int | None = None,
) -> GroupMetrics:
    """Average, worst-group, train-weighted (WILDS ``adj_acc_avg``) and mean-over-groups accuracy.

    Args:
        y_true: true class labels, shape ``(N,)``.
        y_pred: predicted class labels, shape ``(N,)`` (argmax of logits, not logits).
        groups: group index per sample in ``[0, n_groups)``, e.g. from :func:`group_ids`.
        n_groups: number of groups (Waterbirds/CelebA: 4).
        train_group_counts: training-split samples per group, length ``n_groups``
            (Waterbirds: :data:`WATERBIRDS_TRAIN_GROUP_COUNTS`).
        allow_empty_groups: by default a group with no samples raises ``ValueError``. If
            ``True`` such a group is reported with ``n = 0`` and ``acc = nan``, excluded
            from ``worst_group_acc`` and ``mean_group_acc``, and the training weights of the
            adjusted average are renormalised over the groups that are present.
        n_classes: if given, ``y_true`` and ``y_pred`` must lie in ``[0, n_classes)``.

    Raises:
        ValueError: on length mismatches, out-of-range labels/groups, a wrong-length or
            all-zero ``train_group_counts``, or an empty group (unless allowed).
    """
    correct, g, group_n, weights = _prepare(
        y_true, y_pred, groups, n_groups, train_group_counts, allow_empty_groups, n_classes
    )
    n_correct = np.bincount(g, weights=correct.astype(np.float64), minlength=n_groups)
    present = group_n > 0
    acc = np.full(n_groups, np.nan)
    acc[present] = n_correct[present] / group_n[present]
    worst = int(np.flatnonzero(present)[np.argmin(acc[present])])
    return GroupMetrics(
        n=int(correct.shape[0]),
        avg_acc=float(correct.mean()),
        worst_group_acc=float(acc[worst]),
        adjusted_avg_acc=float(np.sum(np.where(present, acc, 0.0) * weights)),
        mean_group_acc=float(acc[present].mean()),
        group_acc={k: float(acc[k]) for k in range(n_groups)},
        group_n={k: int(group_n[k]) for k in range(n_groups)},
        worst_group=worst,
    )


def per_class_accuracy(y_true: ArrayLike, y_pred: ArrayLike, n_classes: int) -> dict[int, float]:
    """Top-1 accuracy per true class ``0..n_classes-1``; ``nan`` for a class with no samples."""
    _check_positive_int("n_classes", n_classes)
    yt = _int_array("y_true", y_true)
    yp = _int_array("y_pred", y_pred)
    if yt.shape != yp.shape:
        raise ValueError(f"lengths differ: `y_true` {yt.shape[0]}, `y_pred` {yp.shape[0]}.")
    _check_range("y_true", yt, n_classes, f"n_classes={n_classes}")
    _check_range("y_pred", yp, n_classes, f"n_classes={n_classes}")
    n = np.bincount(yt, minlength=n_classes)
    hits = np.bincount(yt, weights=(yt == yp).astype(np.float64), minlength=n_classes)
    with np.errstate(invalid="ignore", divide="ignore"):
        acc = np.where(n > 0, hits / np.maximum(n, 1), np.nan)
    return {k: float(acc[k]) for k in range(n_classes)}


def bootstrap_ci(
    y_true: ArrayLike,
    y_pred: ArrayLike,
    groups: ArrayLike,
    n_groups: int,
    train_group_counts: ArrayLike,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    *,
    allow_empty_groups: bool = False,
) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap intervals for ``avg_acc``, ``worst_group_acc`` and ``adjusted_avg_acc``.

    The bootstrap is stratified by group: each resample draws ``n_g`` samples with
    replacement from group ``g``'s own samples, so every group stays present and group sizes
    are fixed. Every metric here depends on a resample only through each group's number of
    correct predictions, and that number is exactly ``Binomial(n_g, acc_g)`` under
    resampling with replacement, so it is drawn directly: identical in distribution to
    resampling indices, O(n_resamples * n_groups) time and memory.

    Deterministic for a given ``seed``. Empty groups follow ``allow_empty_groups`` as in
    :func:`group_robust_metrics`.
    """
    _check_positive_int("n_resamples", n_resamples)
    if not (0.0 < confidence < 1.0):
        raise ValueError(f"`confidence` must be in (0, 1), got {confidence!r}.")
    correct, g, group_n, weights = _prepare(
        y_true, y_pred, groups, n_groups, train_group_counts, allow_empty_groups, None
    )
    present = np.flatnonzero(group_n > 0)
    n_g = group_n[present]
    k_g = np.bincount(g, weights=correct.astype(np.float64), minlength=n_groups)[present]
    rng = np.random.default_rng(seed)
    hits = rng.binomial(n_g[None, :], (k_g / n_g)[None, :], size=(n_resamples, present.size))
    acc = hits / n_g[None, :]
    samples = {
        "avg_acc": hits.sum(axis=1) / n_g.sum(),
        "worst_group_acc": acc.min(axis=1),
        "adjusted_avg_acc": acc @ weights[present],
    }
    tail = (1.0 - confidence) / 2.0
    out: dict[str, tuple[float, float]] = {}
    for name, values in samples.items():
        lo, hi = np.quantile(values, [tail, 1.0 - tail])
        out[name] = (float(lo), float(hi))
    return out


# --------------------------------------------------------------------------- conventions


def check_waterbirds_group_counts(train_group_counts: Sequence[int] | ArrayLike) -> str | None:
    """Return a warning message if ``train_group_counts`` differ from the Waterbirds release, else ``None``.

    The release (``waterbird_complete95_forest2water2``) has 3498/184/56/1057 training images
    in groups 0..3. Different counts usually mean a different metadata file or a wrong group
    formula; the adjusted average would then not be comparable with published numbers.
    The caller decides whether to log the message.
    """
    counts = np.asarray(train_group_counts)
    expected = np.asarray(WATERBIRDS_TRAIN_GROUP_COUNTS)
    if counts.shape == expected.shape and np.array_equal(counts, expected):
        return None
    shown = [int(c) if float(c).is_integer() else float(c) for c in np.ravel(counts)]
    return (
        f"Waterbirds training group counts {shown} differ from the release "
        f"{list(WATERBIRDS_TRAIN_GROUP_COUNTS)} (groups g = 2*y + place). The adjusted average "
        f"uses these counts as weights, so it will not match published Waterbirds numbers; "
        f"check metadata.csv (split 0 = train) and the group formula."
    )


#: Benchmark conventions a data set can be declared under (``class_names.datasets.<name>.convention``).

#: The metric each convention reports as its headline "average accuracy".
HEADLINE_METRIC: dict[str, str] = {
    "waterbirds": "adjusted_avg_acc",  # WILDS adj_acc_avg: weighted by training group proportions
    "celeba": "avg_acc",  # plain test average
    "generic": "avg_acc",  # no benchmark convention: plain average
}


def check_convention(convention: str) -> Convention:
    """Return ``convention`` if it is one of :data:`CONVENTIONS`, else raise ``ValueError``."""
    if convention not in CONVENTIONS:
        raise ValueError(f"`convention` must be one of {list(CONVENTIONS)}, got {convention!r}.")
    return convention  # type: ignore[return-value]


def convention_warning(convention: str, train_group_counts: Sequence[int] | ArrayLike) -> str | None:
    """The warning a data set's declared convention raises about its training split, or ``None``.

    Only ``"waterbirds"`` is checked (against the release's group counts, see
    :func:`check_waterbirds_group_counts`); the other conventions carry no fixed counts.
    """
    if check_convention(convention) == "waterbirds":
        return check_waterbirds_group_counts(train_group_counts)
    return None


def headline_average(metrics: GroupMetrics, convention: Convention) -> float:
    """The number a paper calls "average accuracy" under each benchmark's convention.

    * ``"waterbirds"``: the train-weighted adjusted average (WILDS ``adj_acc_avg``),
      ``metrics.adjusted_avg_acc``.
    * ``"celeba"``: the plain test average, ``metrics.avg_acc``.
    * ``"generic"`` (no benchmark convention): the plain average, ``metrics.avg_acc``.

    ``mean_group_acc`` is never a headline average.
    """
    return float(getattr(metrics, HEADLINE_METRIC[check_convention(convention)]))
