"""finetune stage: a namespaced pipeline per method, so kedro viz shows them side by side."""

from kedro.pipeline import Node, Pipeline

from .nodes import finetune_method, loss_curve_metrics

METHODS = ("flyp", "star")
SHARED_INPUTS = ("dataset_metadata", "dataset_index", "descriptions", "teacher_model", "teacher_cache")


def method_pipeline(method: str) -> Pipeline:
    template = Pipeline(
        [
            Node(
                finetune_method,
                [*SHARED_INPUTS, "params:finetune"],
                ["weights", "history"],
                name="finetune",
            ),
            Node(loss_curve_metrics, "history", "loss_curve", name="log_loss_curve"),
        ]
    )
    return Pipeline(template, namespace=method, inputs=set(SHARED_INPUTS), tags=["finetune", method])


def create_pipeline(**kwargs) -> Pipeline:
    return sum((method_pipeline(method) for method in METHODS), Pipeline([]))
