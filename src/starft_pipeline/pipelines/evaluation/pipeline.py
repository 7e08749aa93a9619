"""evaluation stage: every model → results.csv, group_results.csv and MLflow metrics."""

from kedro.pipeline import Node, Pipeline

from ..finetune.pipeline import METHODS
from .nodes import ZERO_SHOT, collect_results, evaluate_finetuned, evaluate_zero_shot, results_metrics

SHARED = ["dataset_metadata", "dataset_index", "teacher_model", "params:evaluation"]


def method_evaluation(method: str) -> Pipeline:
    template = Pipeline([Node(evaluate_finetuned, ["weights", *SHARED], "evaluation", name="evaluate")])
    return Pipeline(
        template,
        namespace=method,
        inputs={"dataset_metadata", "dataset_index", "teacher_model"},
        parameters={"params:evaluation"},
        tags=["evaluation", method],
    )


def create_pipeline(**kwargs) -> Pipeline:
    zero_shot = Pipeline(
        [Node(evaluate_zero_shot, SHARED, "evaluation", name="evaluate")],
        namespace=ZERO_SHOT,
        inputs={"dataset_metadata", "dataset_index", "teacher_model"},
        parameters={"params:evaluation"},
        tags=["evaluation", ZERO_SHOT],
    )
    report = Pipeline(
        [
            Node(
                collect_results,
                [f"{method}.evaluation" for method in (ZERO_SHOT, *METHODS)],
                ["results", "group_results", "results_markdown"],
                name="collect_results",
            ),
            Node(results_metrics, "results", "evaluation_metrics", name="log_evaluation_metrics"),
        ],
        tags="evaluation",
    )
    return zero_shot + sum((method_evaluation(method) for method in METHODS), Pipeline([])) + report
