"""Linear probing (LP): logistic regression on the frozen model's image features, C chosen on val.

The features are the teacher cache's normalised image embeddings of the un-augmented images, so LP
costs seconds and leaves both towers unchanged; the regression is scikit-learn's objective solved by
torch's full-batch L-BFGS, so it runs on the GPU and on every torchrun rank at once; its head (class weights and biases) is what LP adds
to the model, and what LP-FT starts fine-tuning from. No Kedro here.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import pandas as pd
import torch

from starft_pipeline.core.configs import config_from_params
from starft_pipeline.models.heads import ClassifierHead

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LinearProbeConfig:
    """The inverse regularisation strengths C to try (the best on val wins) and the solver budget."""

    c_grid: tuple[float, ...] = (0.01, 0.1, 1.0, 10.0, 100.0)
    max_iter: int = 1000

    def __post_init__(self) -> None:
        if not self.c_grid or any(
            not (isinstance(c, (int, float)) and math.isfinite(c) and c > 0) for c in self.c_grid
        ):
            raise ValueError(
                f"linear_probe.c_grid must be a non-empty list of positive numbers, got {list(self.c_grid)}"
            )
        if self.max_iter < 1:
            raise ValueError(f"linear_probe.max_iter must be >= 1, got {self.max_iter}")

    @classmethod
    def from_params(cls, params: Mapping | None) -> LinearProbeConfig:
        config = config_from_params(cls, params, "linear_probe")
        return dataclasses.replace(config, c_grid=tuple(float(c) for c in config.c_grid))

    def as_dict(self) -> dict:
        return asdict(self)


#: L-BFGS stops when the objective's largest gradient entry is below this (scikit-learn's ``tol``).
GRADIENT_TOLERANCE = 1e-4


@dataclass(frozen=True)
class SoftmaxFit:
    """A fitted probe: its head and the penalised objective it reached (see :func:`fit_softmax_regression`)."""

    head: ClassifierHead
    objective: float
    iterations: int


def l2_strength(c: float, n_samples: int, n_classes: int) -> float:
    """λ of the objective ``mean CE + λ/2 · ‖W‖²`` that scikit-learn's ``LogisticRegression(C=c)`` minimises.

    scikit-learn's is ``1 / (C · n)``. For two classes it fits one row ``w`` while the head has the
    rows ``[−w/2, w/2]``, whose squared norm is ``‖w‖²/2``: the same penalty on it needs twice λ.
    """
    return (2.0 if n_classes == 2 else 1.0) / (c * n_samples)


def penalised_objective(
    weight: torch.Tensor, bias: torch.Tensor, features: torch.Tensor, labels: torch.Tensor, strength: float
) -> torch.Tensor:
    """``mean cross-entropy + strength/2 · ‖W‖²`` (the intercept is not penalised, as in scikit-learn)."""
    logits = torch.addmm(bias, features, weight.T)
    return torch.nn.functional.cross_entropy(logits, labels) + 0.5 * strength * weight.square().sum()


def _check_labels(labels: torch.Tensor, class_names: Sequence[str]) -> None:
    seen = torch.unique(labels).tolist()
    if seen != list(range(len(class_names))):
        raise ValueError(
            f"the linear probe saw labels {seen} in the train split but the data set has "
            f"{len(class_names)} classes; every class needs training images"
        )


def fit_softmax_regression(
    features: torch.Tensor,
    labels: torch.Tensor,
    class_names: Sequence[str],
    c: float,
    max_iter: int = 1000,
    device: torch.device | str = "cpu",
    start: ClassifierHead | None = None,
) -> SoftmaxFit:
    """Multinomial logistic regression with L2 penalty 1/C and an intercept, by full-batch L-BFGS in torch.

    The objective is scikit-learn's ``LogisticRegression(C=c)`` (:func:`l2_strength`), so the head
    is its solution up to the solvers' tolerances; it runs on ``device`` (a GPU fits ImageNet's
    1.28 M features in minutes; the logits, n × classes floats, must fit there). ``start``: a head
    to start from (a neighbouring C's solution), else zeros.
    """
    _check_labels(labels, class_names)
    x = features.to(device=device, dtype=torch.float32)
    y = labels.to(device=device, dtype=torch.long)
    n_classes = len(class_names)
    strength = l2_strength(c, len(y), n_classes)
    weight = torch.zeros(n_classes, x.shape[1], device=device) if start is None else start.weight.to(device).clone()
    bias = torch.zeros(n_classes, device=device) if start is None else start.bias.to(device).clone()
    weight.requires_grad_(True)
    bias.requires_grad_(True)
    optimizer = torch.optim.LBFGS(
        [weight, bias],
        lr=1.0,
        max_iter=max_iter,
        max_eval=25 * max_iter,  # iterations are the budget, as scikit-learn's max_iter (line searches: ≤ 25 calls)
        tolerance_grad=GRADIENT_TOLERANCE,
        tolerance_change=1e-12,
        history_size=10,
        line_search_fn="strong_wolfe",
    )

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        objective = penalised_objective(weight, bias, x, y, strength)
        objective.backward()
        return objective

    optimizer.step(closure)
    with torch.no_grad():
        objective = float(penalised_objective(weight, bias, x, y, strength))
        # Softmax ignores a constant added to every bias, which the unpenalised intercept leaves free.
        centred = bias - bias.mean()
    iterations = int(optimizer.state[weight].get("n_iter", 0))
    head = ClassifierHead(weight.detach().cpu(), centred.cpu(), tuple(class_names))
    return SoftmaxFit(head, objective, iterations)


def mean_log_loss(head: ClassifierHead, features: torch.Tensor, labels: torch.Tensor) -> float:
    return float(torch.nn.functional.cross_entropy(head.logits(features.float()), labels))


def accuracy(head: ClassifierHead, features: torch.Tensor, labels: torch.Tensor) -> float:
    return float((head.logits(features.float()).argmax(dim=1) == labels).float().mean())


def select_linear_probe(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    val_features: torch.Tensor | None,
    val_labels: torch.Tensor | None,
    class_names: Sequence[str],
    config: LinearProbeConfig,
    device: torch.device | str = "cpu",
) -> tuple[ClassifierHead, pd.DataFrame]:
    """Fit one probe per C (on ``device``); keep the best val accuracy (ties: the smaller C). Returns it and the sweep."""
    has_val = val_features is not None and len(val_features) > 0
    if len(config.c_grid) > 1 and not has_val:
        raise ValueError(
            "the linear probe chooses C on the val split, which is empty; add val rows or give one linear_probe.c_grid value"
        )
    rows, best, best_acc, previous = [], None, -1.0, None
    for step, c in enumerate(sorted(config.c_grid), start=1):
        fit = fit_softmax_regression(
            train_features, train_labels, class_names, c, config.max_iter, device, start=previous
        )
        head, previous = fit.head, fit.head  # the next, larger C starts from this solution
        val_acc = (
            accuracy(head, val_features, val_labels)
            if val_features is not None and val_labels is not None and has_val
            else float("nan")
        )
        train_loss = mean_log_loss(head, train_features, train_labels)
        rows.append(
            {
                "epoch": 0,
                "step": step,
                "C": c,
                "loss": train_loss,
                "objective": fit.objective,
                "iterations": fit.iterations,
                "train_acc": accuracy(head, train_features, train_labels),
                "val_acc": val_acc,
            }
        )
        if best is None or val_acc > best_acc:
            best, best_acc = head, val_acc
        logger.info("linear probe C=%g: train loss %.4f, val acc %.4f", c, train_loss, val_acc)
    assert best is not None  # LinearProbeConfig: c_grid is never empty
    return best, pd.DataFrame(rows)
