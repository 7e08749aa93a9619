"""The torch linear probe solves scikit-learn's logistic regression: same objective, same accuracy."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression

from starft_pipeline.train.linear_probe import fit_softmax_regression, l2_strength, penalised_objective


def _problem(n_classes: int, n: int = 600, dim: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised features around one random centre per class, overlapping (accuracy well below 100 %)."""
    generator = torch.Generator().manual_seed(seed)
    centres = torch.randn(n_classes, dim, generator=generator)
    labels = torch.arange(n) % n_classes
    features = centres[labels] + 1.5 * torch.randn(n, dim, generator=generator)
    return torch.nn.functional.normalize(features, dim=1), labels


def _sklearn_head(features: torch.Tensor, labels: torch.Tensor, c: float) -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's solution as head rows (binary: its one row w as [−w/2, w/2])."""
    model = LogisticRegression(C=c, max_iter=5000, tol=1e-8).fit(features.double().numpy(), labels.numpy())
    weight, bias = torch.tensor(model.coef_, dtype=torch.float32), torch.tensor(model.intercept_, dtype=torch.float32)
    if weight.shape[0] == 1:
        weight, bias = torch.cat([-weight / 2, weight / 2]), torch.cat([-bias / 2, bias / 2])
    return weight, bias


@pytest.mark.parametrize(("n_classes", "c"), [(2, 0.1), (2, 10.0), (5, 1.0), (5, 100.0)])
def test_the_probe_reaches_scikit_learns_objective_and_accuracy(n_classes, c):
    features, labels = _problem(n_classes)
    names = [f"class {k}" for k in range(n_classes)]
    ours = fit_softmax_regression(features, labels, names, c, max_iter=1000)
    weight, bias = _sklearn_head(features, labels, c)
    strength = l2_strength(c, len(labels), n_classes)
    theirs = float(penalised_objective(weight, bias, features, labels, strength))
    assert ours.objective == pytest.approx(theirs, rel=1e-3)
    assert ours.objective <= theirs + 1e-4  # not a worse optimum
    our_acc = float((ours.head.logits(features).argmax(1) == labels).float().mean())
    their_acc = float((torch.addmm(bias, features, weight.T).argmax(1) == labels).float().mean())
    assert 0.5 < their_acc < 1.0  # a problem where the penalty matters, not a separable one
    assert abs(our_acc - their_acc) <= 0.005
    assert ours.head.weight.shape == (n_classes, features.shape[1]) and ours.head.class_names == tuple(names)


def test_the_l2_strength_is_scikit_learns_one_over_c_n():
    assert l2_strength(0.5, 100, 5) == pytest.approx(1 / 50)
    assert l2_strength(0.5, 100, 2) == pytest.approx(2 / 50)  # the two rows ±w/2 carry half of ‖w‖²


def test_the_objective_matches_a_hand_computation():
    features, labels = torch.tensor([[1.0, 0.0]]), torch.tensor([0])
    weight, bias = torch.tensor([[1.0, 0.0], [0.0, 0.0]]), torch.tensor([0.0, 0.0])
    # logits [1, 0]: CE = log(1 + e^-1); penalty 0.5 · 0.2 · 1
    expected = math.log(1 + math.exp(-1)) + 0.1
    assert float(penalised_objective(weight, bias, features, labels, 0.2)) == pytest.approx(expected, abs=1e-6)


def test_the_biases_are_centred_and_a_start_is_used():
    features, labels = _problem(3)
    names = ["a", "b", "c"]
    cold = fit_softmax_regression(features, labels, names, 1.0)
    assert abs(float(cold.head.bias.sum())) < 1e-5
    warm = fit_softmax_regression(features, labels, names, 1.0, start=cold.head)
    assert warm.iterations < cold.iterations
    assert warm.objective == pytest.approx(cold.objective, rel=1e-4)


def test_a_class_missing_from_training_is_an_error():
    with pytest.raises(ValueError, match="every class needs training images"):
        fit_softmax_regression(torch.eye(2), torch.tensor([0, 2]), ["a", "b", "c"], 1.0)


def test_int32_labels_are_accepted():
    features, labels = _problem(2, n=40)
    fit = fit_softmax_regression(features, torch.from_numpy(labels.numpy().astype(np.int32)), ["a", "b"], 1.0)
    assert math.isfinite(fit.objective)
