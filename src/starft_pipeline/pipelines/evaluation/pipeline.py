"""evaluation stage: every model → results and group/class tables, figures, and MLflow metrics.

One node (``evaluation.evaluate_models``) evaluates every model in one pass over the images and
emits each model's ``<model>.evaluation``; each model's chart stays in the model's namespace.
"""

from kedro.pipeline import Node, Pipeline

from starft_pipeline.evaluate.wise_sweep import WISE_FT
from starft_pipeline.models.heads import ZERO_SHOT
from starft_pipeline.pipelines.evaluation.nodes import (
    check_dataset_conventions,
    collect_results,
    evaluate_models,
    evaluation_outputs,
    frontier_report,
    plot_group_comparison,
    plot_method_groups,
    plot_training,
    plot_wise_ft,
    results_metrics,
    results_report,
)
from starft_pipeline.train.methods import method_names

SHARED = ["dataset_metadata", "dataset_index", "teacher_model", "teacher_cache", "params:evaluation"]
#: The WiSE-FT sweep's output (columns method, alpha, dataset, split, avg_acc, worst_group_acc, …).
WISE_FT_CURVE = "wise_ft_curve"
#: The one-pass node's namespace: `kedro run --namespaces=star,evaluation` trains and evaluates `star`.
ONE_PASS_NAMESPACE = "evaluation"


def one_pass_evaluation() -> Pipeline:
    """Every model in one pass: every method's weights are inputs (a missing file is only an error
    for a method in ``evaluation.models``)."""
    node = Node(
        evaluate_models,
        [*SHARED, *(f"{method}.weights" for method in method_names())],
        evaluation_outputs(),
        name="evaluate_models",
        namespace=ONE_PASS_NAMESPACE,
    )
    return Pipeline([node], tags=["evaluation", *method_names(), WISE_FT])


def model_chart(model: str) -> Pipeline:
    """One model's per-group chart. Its node sits in the one-pass node's namespace: in the model's
    own, it would follow a node outside it (Kedro calls such a namespace interrupted)."""
    node = Node(
        plot_method_groups,
        f"{model}.evaluation",
        f"{model}.group_accuracy_plot",
        name=f"plot_group_accuracy_{model}",
        namespace=ONE_PASS_NAMESPACE,
    )
    return Pipeline([node], tags=["evaluation", model])


def report_pipeline() -> Pipeline:
    """Tables, Markdown report, MLflow metrics and the cross-method figures."""
    return Pipeline(
        [
            Node(check_dataset_conventions, "dataset_index", "dataset_checks", name="check_dataset_conventions"),
            Node(
                collect_results,
                [f"{method}.evaluation" for method in (ZERO_SHOT, *method_names(), WISE_FT)],
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
                ["params:reporting", *(f"{method}.history" for method in method_names())],
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
    plot = Node(plot_wise_ft, [WISE_FT_CURVE, "params:reporting"], "wise_ft_curve_plot", name="plot_wise_ft_curve")
    return pipeline + Pipeline([plot], tags="evaluation")


def with_frontier(pipeline: Pipeline) -> Pipeline:
    """``pipeline`` plus the frontier (every model against the reference's WiSE-FT curve at equal ID
    accuracy) when ``pipeline`` produces both the results and the sweep."""
    if not {"results", WISE_FT_CURVE} <= pipeline.all_outputs():
        return pipeline
    node = Node(
        frontier_report,
        ["results", WISE_FT_CURVE, "dataset_index", "params:reporting"],
        ["frontier", "frontier_plot"],
        name="write_frontier",
    )
    return pipeline + Pipeline([node], tags="evaluation")


def create_pipeline(**kwargs) -> Pipeline:
    charts = sum((model_chart(model) for model in (ZERO_SHOT, *method_names())), Pipeline([]))
    pipeline = one_pass_evaluation() + charts + report_pipeline()
    return with_frontier(with_wise_ft_plot(pipeline))
