"""The evaluation stage's one pass: every model to evaluate (zero-shot, the selected fine-tuned
methods, every WiSE-FT α) classifies each evaluation image while it is decoded once.

``evaluation.models`` selects the fine-tuned methods (default: all); their weights must exist.
Under torchrun the images are split by rank and the predictions gathered (``evaluate.one_pass_predictions``).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from typing import Any

import pandas as pd

from starft_pipeline.core.distributed import init_from_env
from starft_pipeline.core.tensor_bundle import TensorBundle
from starft_pipeline.evaluate.predictions import ModelUnderTest, PassSettings, one_pass_predictions
from starft_pipeline.kedro_io import UNCHANGED
from starft_pipeline.models.clip import ModelSpec, create_model, load_state_dict, resolve_device, state_dict_copy
from starft_pipeline.models.heads import ZERO_SHOT, split_heads
from starft_pipeline.models.teacher import check_trained_from
from starft_pipeline.pipelines.evaluation.nodes import evaluation_targets, report_rows
from starft_pipeline.pipelines.evaluation.wise_ft import (
    WISE_FT,
    wise_models,
    wise_outputs,
    wise_settings,
    zero_shot_heads,
)
from starft_pipeline.train.methods import check_methods, method_names

logger = logging.getLogger(__name__)


def _weights_path(bundle: Any) -> str:
    return str(getattr(bundle, "path", "the catalog's <method>.weights"))


def _exists(bundle: Any) -> bool:
    """A weights input is there unless it is a lazily read file that does not exist (kedro_io.LazyTensorBundle)."""
    return bundle is not None and (not hasattr(bundle, "exists") or bundle.exists())


def selected_weights(evaluation: dict[str, Any], weights: Sequence[Any]) -> dict[str, TensorBundle]:
    """The fine-tuned methods to evaluate (``evaluation.models``, default every method) and their weights.

    ``weights`` holds one entry per method of the table (``methods.method_names``), in that order. A selected method whose
    weights file is missing is an error naming the file(s) and the command that makes them.
    """
    methods = method_names()
    models = evaluation.get("models")
    selected = check_methods(methods if models is None else models, "evaluation.models")
    by_method = dict(zip(methods, weights, strict=True))
    missing = [method for method in selected if not _exists(by_method[method])]
    if missing:
        files = ", ".join(_weights_path(by_method[method]) for method in missing)
        present = [method for method in methods if _exists(by_method[method])]
        raise FileNotFoundError(
            f"evaluation.models selects {missing} but their weights do not exist: {files}. Train them with "
            f"`kedro run --pipelines=finetune --namespaces={','.join(missing)}`, or evaluate only the models that "
            f'exist ({present or "none"}): `kedro run --pipelines=evaluation --params "evaluation.models=[{",".join(present)}]"`'
        )
    return {method: by_method[method] for method in methods if method in selected}


def _model_from(base: Any, bundle: TensorBundle, key: str, splits: tuple[str, ...]) -> ModelUnderTest:
    model = copy.deepcopy(base.model)
    state_dict, heads = split_heads(bundle.tensors, bundle.metadata)
    load_state_dict(model, state_dict, source=key)
    return ModelUnderTest(key, model, heads, splits)


def evaluate_models(
    dataset_metadata: pd.DataFrame,
    dataset_index: dict[str, Any],
    teacher_model: dict[str, Any],
    teacher_cache: TensorBundle,
    evaluation: dict[str, Any],
    *weights: Any,
) -> tuple[Any, ...]:
    """Every model's evaluation in one pass over each split.

    Returns the evaluations of ``zero_shot`` and of each method of the table, the WiSE-FT evaluation
    at the chosen α and the WiSE-FT curve; ``kedro_io.UNCHANGED`` for each one this run does not
    evaluate (a method not in ``evaluation.models``, WiSE-FT without a method to sweep).
    """
    selected = selected_weights(evaluation, weights)
    for method, bundle in selected.items():
        check_trained_from(method, bundle.metadata.get("teacher_fingerprint"), teacher_model, dataset_index)
    splits = list(evaluation["splits"])
    settings = wise_settings(evaluation, list(selected))

    context, device = init_from_env(resolve_device(evaluation.get("device", "auto")))
    base = create_model(ModelSpec(**teacher_model["spec"]), device=device)
    # evaluation.zero_shot: false leaves the zero-shot model out (a study evaluates it once, not every run)
    entries = [ModelUnderTest(ZERO_SHOT, base.model, {}, tuple(splits))] if evaluation.get("zero_shot", True) else []
    entries += [_model_from(base, bundle, method, tuple(splits)) for method, bundle in selected.items()]
    labels = {entry.key: entry.key for entry in entries}  # the name each model's rows carry
    if settings["methods"]:
        zero_shot_state, heads = state_dict_copy(base.model), zero_shot_heads(teacher_cache, dataset_index)
        for method in settings["methods"]:
            for wise, bundle, model_splits in wise_models(
                method, selected[method], zero_shot_state, heads, settings, splits
            ):
                entries.append(_model_from(base, bundle, wise.key, model_splits))
                labels[wise.key] = wise.label

    all_splits = list(dict.fromkeys([*splits, *settings["splits"]]))
    targets = evaluation_targets(dataset_metadata, dataset_index, evaluation, all_splits)
    shards = teacher_model.get("shards")  # the shards stage's folder, passed on by the teacher
    pass_settings = PassSettings(
        device,
        int(evaluation.get("batch_size", 256)),
        int(evaluation.get("num_workers", 0)),
        context,
        shards=shards["folder"] if shards else None,
        decode=shards["decode"] if shards else "cpu",
    )
    logger.info(
        "evaluation: %d models in one pass over %d splits (rank %d of %d)",
        len(entries),
        len(targets),
        context.rank,
        context.world_size,
    )
    predictions = one_pass_predictions(base, entries, targets, pass_settings)

    def rows_of(entry: ModelUnderTest) -> dict[str, list[dict[str, Any]]]:
        own = {(dataset, split): values for (key, dataset, split), values in predictions.items() if key == entry.key}
        return report_rows(labels[entry.key], targets, own, dataset_index, evaluation)

    rows = {entry.key: rows_of(entry) for entry in entries}
    curve, chosen = wise_outputs(settings, rows, splits)
    # A model not evaluated in this run, and WiSE-FT without a sweep, leave their files as they were.
    per_method = [rows.get(method, UNCHANGED) for method in method_names()]
    swept = bool(settings["methods"])
    return (rows.get(ZERO_SHOT, UNCHANGED), *per_method, chosen if swept else UNCHANGED, curve if swept else UNCHANGED)


def evaluation_outputs() -> list[str]:
    """The one-pass node's outputs, in :func:`evaluate_models`' order."""
    return [f"{model}.evaluation" for model in (ZERO_SHOT, *method_names(), WISE_FT)] + ["wise_ft_curve"]
