"""evaluation stage: every model → results and group/class tables, figures, and MLflow metrics."""

from kedro.pipeline import Node, Pipeline

from ..finetune.pipeline import METHODS
from .wise_ft import WISE_FT, create_wise_ft_pipeline
from .nodes import (
    ZERO_SHOT,
    check_dataset_conventions,
    collect_results,
    evaluate_finetuned,
    evaluate_zero_shot,
    plot_group_comparison,
    plot_method_groups,
    plot_training,
    plot_wise_ft,
    results_metrics,
    results_report,
)

SHARED = ["dataset_metadata", "dataset_index", "teacher_model", "params:evaluation"]
#: The WiSE-FT sweep's output (columns method, alpha, dataset, split, avg_acc, worst_group_acc, …).
WISE_FT_CURVE = "wise_ft_curve"


def _model_evaluation(method: str, evaluate: Node) -> Pipeline:
    """One model's metrics and its per-group chart, in the model's namespace."""
    template = Pipeline(
        [evaluate, Node(plot_method_groups, "evaluation", "group_accuracy_plot", name="plot_group_accuracy")]
    )
    return Pipeline(
        template,
        namespace=method,
        inputs={"dataset_metadata", "dataset_index", "teacher_model"},
        parameters={"params:evaluation"},
        tags=["evaluation", method],
    )


def method_evaluation(method: str) -> Pipeline:
    return _model_evaluation(method, Node(evaluate_finetuned, ["weights", *SHARED], "evaluation", name="evaluate"))


def zero_shot_evaluation() -> Pipeline:
    return _model_evaluation(ZERO_SHOT, Node(evaluate_zero_shot, SHARED, "evaluation", name="evaluate"))


def report_pipeline() -> Pipeline:
    """Tables, Markdown report, MLflow metrics and the cross-method figures."""
    return Pipeline(
        [
            Node(check_dataset_conventions, "dataset_index", "dataset_checks", name="check_dataset_conventions"),
            Node(
                collect_results,
                [f"{method}.evaluation" for method in (ZERO_SHOT, *METHODS, WISE_FT)],
                ["results", "group_results", "class_results"],
                name="collect_results",
            ),
            Node(
                results_report,
                ["results", "dataset_checks", "params:evaluation"],
                "results_markdown",
                name="write_results_markdown",
            ),
            Node(results_metrics, "results", "evaluation_metrics", name="log_evaluation_metrics"),
            Node(
                plot_group_comparison,
                ["group_results", "params:reporting"],
                "group_accuracy_comparison_plot",
                name="plot_group_comparison",
            ),
            Node(
                plot_training,
                ["params:reporting", *(f"{method}.history" for method in METHODS)],
                "training_curves_plot",
                name="plot_training_curves",
            ),
        ],
        tags="evaluation",
    )


def with_wise_ft_plot(pipeline: Pipeline) -> Pipeline:
    """``pipeline`` plus the WiSE-FT figure when ``pipeline`` produces the sweep (``wise_ft_curve``)."""
    if WISE_FT_CURVE not in pipeline.all_outputs():
        return pipeline
    plot = Node(
        plot_wise_ft, [WISE_FT_CURVE, "params:reporting"], "wise_ft_curve_plot", name="plot_wise_ft_curve"
    )
    return pipeline + Pipeline([plot], tags="evaluation")


def create_pipeline(**kwargs) -> Pipeline:
    models = zero_shot_evaluation() + sum((method_evaluation(method) for method in METHODS), Pipeline([]))
    # Stage fragments (e.g. the WiSE-FT sweep) are added to `pipeline` before the figures are wired.
    pipeline = models + create_wise_ft_pipeline() + report_pipeline()
    return with_wise_ft_plot(pipeline)
