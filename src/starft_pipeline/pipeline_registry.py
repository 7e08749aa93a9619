"""Project pipelines: the five stages, each runnable alone, and `full` chaining them.

Registered explicitly rather than through ``find_pipelines``: Kedro loads only the requested
pipelines through that, and `full` is built from all five stages.
"""

from __future__ import annotations

from kedro.pipeline import Pipeline

from .pipelines import class_names, descriptions, evaluation, finetune, teacher

STAGES = {
    "class_names": class_names,
    "descriptions": descriptions,
    "teacher": teacher,
    "finetune": finetune,
    "evaluation": evaluation,
}


def register_pipelines() -> dict[str, Pipeline]:
    pipelines = {name: module.create_pipeline() for name, module in STAGES.items()}
    pipelines["full"] = sum(pipelines.values(), Pipeline([]))
    pipelines["__default__"] = pipelines["full"]
    return pipelines
