"""The evaluation's one pass: every model to evaluate (zero-shot, the selected fine-tuned methods,
every WiSE-FT α) classifies each evaluation image while it is decoded once.

``EvaluationConfig.models`` selects the fine-tuned methods (None: all); their weights must exist.
Under torchrun the images are split by rank and the predictions gathered (:func:`one_pass_predictions`).
:func:`evaluate_weights` evaluates one model on its own: the reference the one pass is tested against.
No Kedro here: a model this run does not evaluate is simply absent from :class:`PassOutputs`.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from starft_pipeline.core.distributed import init_from_env
from starft_pipeline.core.tensor_bundle import TensorBundle
from starft_pipeline.data.dataset_index import dataset_info, dataset_split, eval_task
from starft_pipeline.data.splits import check_groups_present, load_split_images
from starft_pipeline.evaluate.config import EvaluationConfig
from starft_pipeline.evaluate.predictions import (
    ModelUnderTest,
    PassSettings,
    SplitToEvaluate,
    one_pass_predictions,
    zero_shot_predictions,
)
from starft_pipeline.evaluate.results import split_report
from starft_pipeline.evaluate.wise_sweep import plan_sweep, wise_models, wise_outputs, zero_shot_heads
from starft_pipeline.models.clip import ModelSpec, create_model, load_state_dict, resolve_device, state_dict_copy
from starft_pipeline.models.heads import ZERO_SHOT, head_for_classes, split_heads
from starft_pipeline.models.teacher import check_trained_from
from starft_pipeline.train.methods import method_names

logger = logging.getLogger(__name__)
#: One model's metrics rows: ``results``, ``groups`` and ``classes`` (results.csv, group_results.csv, class_results.csv).
Rows = dict[str, list[dict[str, Any]]]


@dataclass(frozen=True)
class PassOutputs:
    """What one pass evaluated: ``rows`` of every model it ran by its key (zero_shot, each selected method,
    each WiSE-FT model), the chosen α's rows of every swept method and the WiSE-FT curve (both None
    when nothing was swept)."""

    rows: dict[str, Rows]
    wise_ft: Rows | None
    curve: pd.DataFrame | None


def evaluation_targets(
    dataset_metadata: pd.DataFrame, dataset_index: dict[str, Any], config: EvaluationConfig, split_names: Sequence[str]
) -> list[SplitToEvaluate]:
    """Every configured data set's non-empty ``split_names``, in data-set then split order, checked
    to hold every group (unless ``config.allow_empty_groups``)."""
    targets = []
    for dataset in dataset_index["datasets"]:
        task = eval_task(dataset_index, dataset)
        for split_name in split_names:
            split = dataset_split(dataset_metadata, dataset_index, dataset, split_name)
            if not len(split):
                continue
            check_groups_present(split, task.group_names, f"{dataset}/{split_name}", config.allow_empty_groups)
            targets.append(SplitToEvaluate(dataset, split_name, split, task))
    return targets


def report_rows(
    method: str,
    targets: list[SplitToEvaluate],
    predictions: Mapping[tuple[str, str], np.ndarray],
    dataset_index: dict[str, Any],
    config: EvaluationConfig,
) -> Rows:
    """Metrics rows of one model from its predictions keyed ``(dataset, split name)``; targets without
    predictions are skipped."""
    rows: Rows = {"results": [], "groups": [], "classes": []}
    for target in targets:
        if (target.dataset, target.split_name) not in predictions:
            continue
        label = f"{target.dataset}/{target.split_name}"
        convention = dataset_info(dataset_index, target.dataset).get("convention", "generic")
        report = split_report(
            method,
            label,
            target.split.labels,
            predictions[(target.dataset, target.split_name)],
            target.split.groups,
            target.task,
            convention,
            config.bootstrap,
            config.allow_empty_groups,
        )
        for table, part in report.items():
            rows[table].extend({**row, "dataset": target.dataset} for row in part)
        result = report["results"][0]
        logger.info(
            "%s on %s: avg %.3f, worst-group %.3f, adjusted avg %.3f",
            method,
            label,
            result["avg_acc"],
            result["worst_group_acc"],
            result["adjusted_avg_acc"],
        )
    return rows


def evaluate_weights(
    method: str,
    weights: TensorBundle | None,
    dataset_metadata: pd.DataFrame,
    dataset_index: dict[str, Any],
    teacher_model: dict[str, Any],
    config: EvaluationConfig,
) -> Rows:
    """Metrics rows of one model on every configured data set and evaluation split, one model at a
    time (the reference :func:`evaluate_models` is tested against).

    A learned head in ``weights`` (LP, FT, LP-FT) classifies every data set whose classes it knows;
    the others are classified zero-shot from the model's text tower.
    """
    device = resolve_device(config.device)
    loaded = create_model(ModelSpec(**teacher_model["spec"]), device=device)
    heads: dict[str, Any] = {}
    if weights is not None:
        state_dict, heads = split_heads(weights.tensors, weights.metadata)
        load_state_dict(loaded.model, state_dict)
    targets = evaluation_targets(dataset_metadata, dataset_index, config, config.splits)
    predictions = {
        (target.dataset, target.split_name): zero_shot_predictions(
            loaded,
            load_split_images(target.split, loaded.image_size),
            target.task,
            device,
            head=head_for_classes(heads, target.task.class_names),
        )
        for target in targets
    }
    return report_rows(method, targets, predictions, dataset_index, config)


def _weights_path(bundle: Any) -> str:
    return str(getattr(bundle, "path", "the catalog's <method>.weights"))


def _exists(bundle: Any) -> bool:
    """A weights input is there unless it is a lazily read file that does not exist (``exists()`` False)."""
    return bundle is not None and (not hasattr(bundle, "exists") or bundle.exists())


def selected_weights(config: EvaluationConfig, weights: Sequence[Any]) -> dict[str, TensorBundle]:
    """The fine-tuned methods to evaluate (``config.models``, default every method) and their weights.

    ``weights`` holds one entry per method of the table (``methods.method_names``), in that order. A selected method whose
    weights file is missing is an error naming the file(s) and the command that makes them.
    """
    methods = method_names()
    selected = methods if config.models is None else config.models
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
    config: EvaluationConfig,
    weights: Sequence[Any],
) -> PassOutputs:
    """Every model's evaluation in one pass over each split (``weights``: one entry per method of the table)."""
    selected = selected_weights(config, weights)
    for method, bundle in selected.items():
        check_trained_from(method, bundle.metadata.get("teacher_fingerprint"), teacher_model, dataset_index)
    splits = tuple(config.splits)
    sweep = plan_sweep(config, list(selected))

    context, device = init_from_env(resolve_device(config.device))
    base = create_model(ModelSpec(**teacher_model["spec"]), device=device)
    entries = [ModelUnderTest(ZERO_SHOT, base.model, {}, splits)] if config.zero_shot else []
    entries += [_model_from(base, bundle, method, splits) for method, bundle in selected.items()]
    labels = {entry.key: entry.key for entry in entries}  # the name each model's rows carry
    if sweep.methods:
        zero_shot_state, heads = state_dict_copy(base.model), zero_shot_heads(teacher_cache, dataset_index)
        for method in sweep.methods:
            for wise, bundle, model_splits in wise_models(
                method, selected[method], zero_shot_state, heads, sweep, splits
            ):
                entries.append(_model_from(base, bundle, wise.key, model_splits))
                labels[wise.key] = wise.label

    all_splits = list(dict.fromkeys([*splits, *sweep.splits]))
    targets = evaluation_targets(dataset_metadata, dataset_index, config, all_splits)
    shards = teacher_model.get("shards")  # the shards stage's folder, passed on by the teacher
    pass_settings = PassSettings(
        device,
        config.batch_size,
        config.num_workers,
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

    def rows_of(entry: ModelUnderTest) -> Rows:
        own = {(dataset, split): values for (key, dataset, split), values in predictions.items() if key == entry.key}
        return report_rows(labels[entry.key], targets, own, dataset_index, config)

    rows = {entry.key: rows_of(entry) for entry in entries}
    if not sweep.methods:
        return PassOutputs(rows, None, None)
    curve, chosen = wise_outputs(sweep, rows, splits)
    return PassOutputs(rows, chosen, curve)
