"""Linear probing (LP): logistic regression on the frozen model's image features, C chosen on val.

The features are the teacher cache's normalised image embeddings of the un-augmented images, so LP
costs seconds and leaves both towers unchanged; its head (class weights and biases) is what LP adds
to the model, and what LP-FT starts fine-tuning from. No Kedro here.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch

from starft_pipeline.core.configs import config_from_params
from starft_pipeline.models.heads import ClassifierHead

if TYPE_CHECKING:
    from sklearn.linear_model import LogisticRegression

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


def fit_logistic_regression(
    features: np.ndarray, labels: np.ndarray, c: float, max_iter: int = 1000
) -> LogisticRegression:
    """Multinomial (binary: logistic) regression with L2 penalty 1/C and an intercept."""
    # Imported here: scikit-learn costs seconds of start-up to every kedro command.
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(C=c, max_iter=max_iter)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # a C that does not converge is judged on val anyway
        model.fit(features, labels)
    return model


def head_from_logistic_regression(model: LogisticRegression, class_names: Sequence[str]) -> ClassifierHead:
    """The fitted classifier as a head with one row per class.

    scikit-learn keeps one row ``w`` for two classes (p(1) = σ(w·x + b)); it becomes the rows
    ``[−w/2, w/2]`` (and biases ``[−b/2, b/2]``), whose softmax is exactly that sigmoid.
    """
    classes = [int(label) for label in model.classes_]
    if classes != list(range(len(class_names))):
        raise ValueError(
            f"the linear probe saw labels {classes} in the train split but the data set has "
            f"{len(class_names)} classes; every class needs training images"
        )
    weight = torch.as_tensor(model.coef_, dtype=torch.float32)
    bias = torch.as_tensor(model.intercept_, dtype=torch.float32)
    if len(class_names) == 2:
        weight, bias = torch.cat([-weight / 2, weight / 2]), torch.cat([-bias / 2, bias / 2])
    return ClassifierHead(weight, bias, tuple(class_names))


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
) -> tuple[ClassifierHead, pd.DataFrame]:
    """Fit one probe per C; keep the best val accuracy (ties: the smaller C). Returns it and the sweep."""
    has_val = val_features is not None and len(val_features) > 0
    if len(config.c_grid) > 1 and not has_val:
        raise ValueError(
            "the linear probe chooses C on the val split, which is empty; add val rows or give one linear_probe.c_grid value"
        )
    rows, best, best_acc = [], None, -1.0
    for step, c in enumerate(sorted(config.c_grid), start=1):
        head = head_from_logistic_regression(
            fit_logistic_regression(train_features.numpy(), train_labels.numpy(), c, config.max_iter), class_names
        )
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
                "train_acc": accuracy(head, train_features, train_labels),
                "val_acc": val_acc,
            }
        )
        if best is None or val_acc > best_acc:
            best, best_acc = head, val_acc
        logger.info("linear probe C=%g: train loss %.4f, val acc %.4f", c, train_loss, val_acc)
    assert best is not None  # LinearProbeConfig: c_grid is never empty
    return best, pd.DataFrame(rows)
