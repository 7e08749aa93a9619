"""Project pipelines: the six stages, each runnable alone, and `full` chaining them.

Registered explicitly rather than through ``find_pipelines``: Kedro loads only the requested
pipelines through that, and `full` is built from all six stages. `pretrain` (the default
teacher's weights, committed) stands apart: `full` reads its output but never reruns it.
"""

from __future__ import annotations

from kedro.pipeline import Pipeline

from starft_pipeline.pipelines import (
    class_names,
    descriptions,
    evaluation,
    export,
    finetune,
    predict,
    pretrain,
    shards,
    teacher,
)

STAGES = {
    "class_names": class_names,
    "descriptions": descriptions,
    "shards": shards,  # pre-resized JPEG shards of every split (a no-op when shards.folder is null)
    "teacher": teacher,
    "finetune": finetune,
    "evaluation": evaluation,
    "export": export,  # open_clip checkpoints and MLflow models of the fine-tuned methods
}


def register_pipelines() -> dict[str, Pipeline]:
    pipelines = {name: module.create_pipeline() for name, module in STAGES.items()}
    pipelines["full"] = sum(pipelines.values(), Pipeline([]))
    pipelines["__default__"] = pipelines["full"]
    pipelines["pretrain"] = pretrain.create_pipeline()
    pipelines["predict"] = predict.create_pipeline()  # a folder of images → predictions.csv; not in `full`
    return pipelines
