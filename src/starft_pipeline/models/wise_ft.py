"""WiSE-FT (Wortsman et al.): interpolate the zero-shot and the fine-tuned weights.

``θ_α = (1 − α) · θ_zs + α · θ_ft`` over whole state dicts, learned heads included: a fine-tuned
head (LP, FT, LP-FT) is interpolated with the zero-shot head of its data set (τ₀ · class text
features, zero bias). α = 0 gives the zero-shot weights exactly, α = 1 the fine-tuned ones. No Kedro.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch

from starft_pipeline.core.tensor_bundle import TensorBundle
from starft_pipeline.models.heads import ClassifierHead, head_tensors, split_heads


def interpolate_weights(
    zero_shot: Mapping[str, torch.Tensor], finetuned: Mapping[str, torch.Tensor], alpha: float
) -> dict[str, torch.Tensor]:
    """``(1 − α) · zero_shot + α · finetuned`` per tensor; both must hold the same keys and shapes.

    Floating tensors are mixed in float32 and cast back to the fine-tuned dtype (``torch.lerp`` is
    exact at both ends); other tensors (integer buffers) must be equal and are copied.
    """
    if not (isinstance(alpha, (int, float)) and math.isfinite(alpha) and 0.0 <= alpha <= 1.0):
        raise ValueError(f"WiSE-FT alpha must be a number in [0, 1], got {alpha!r}")
    if set(zero_shot) != set(finetuned):
        only_zs, only_ft = sorted(set(zero_shot) - set(finetuned)), sorted(set(finetuned) - set(zero_shot))
        raise ValueError(
            f"zero-shot and fine-tuned weights differ in keys: only zero-shot {only_zs[:5]}, only fine-tuned {only_ft[:5]}"
        )
    mixed = {}
    for key, ft in finetuned.items():
        zs = zero_shot[key]
        if zs.shape != ft.shape:
            raise ValueError(f"{key}: zero-shot shape {tuple(zs.shape)} != fine-tuned shape {tuple(ft.shape)}")
        if ft.is_floating_point():
            mixed[key] = torch.lerp(zs.float(), ft.float(), float(alpha)).to(ft.dtype)
        elif torch.equal(zs, ft):
            mixed[key] = ft.clone()
        else:
            raise ValueError(f"{key}: non-floating tensors differ between zero-shot and fine-tuned weights")
    return mixed


def zero_shot_counterpart(
    zero_shot_state: Mapping[str, torch.Tensor],
    zero_shot_heads: Mapping[str, ClassifierHead],
    finetuned: TensorBundle,
) -> dict[str, torch.Tensor]:
    """θ_zs laid out like the fine-tuned bundle: the zero-shot towers, plus the zero-shot head of
    every data set the bundle has a learned head for (rows in the learned head's class order)."""
    _, heads = split_heads(finetuned.tensors, finetuned.metadata)
    missing = sorted(set(heads) - set(zero_shot_heads))
    if missing:
        raise KeyError(
            f"no zero-shot head for the learned head(s) of {missing}; the teacher cache lacks those data sets"
        )
    matched = {dataset: zero_shot_heads[dataset].restrict(head.class_names) for dataset, head in heads.items()}
    return dict(zero_shot_state) | head_tensors(matched)


def wise_ft_bundle(zero_shot: Mapping[str, torch.Tensor], finetuned: TensorBundle, alpha: float) -> TensorBundle:
    """The interpolated weights as a bundle, carrying the fine-tuned bundle's metadata plus α."""
    metadata = {**finetuned.metadata, "wise_ft_alpha": float(alpha)}
    return TensorBundle(interpolate_weights(zero_shot, finetuned.tensors, alpha), metadata)


def alpha_grid(alphas: Sequence[float]) -> list[float]:
    """Validated, de-duplicated, sorted α values."""
    values = sorted({round(float(alpha), 10) for alpha in alphas})
    if not values or values[0] < 0 or values[-1] > 1:
        raise ValueError(f"evaluation.wise_ft.alphas must be non-empty values in [0, 1], got {list(alphas)}")
    return values
