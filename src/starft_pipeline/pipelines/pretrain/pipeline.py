"""pretrain stage: synthetic world → zero-shot model weights (the embedded default teacher).

Not part of `full`: its output is committed, and `full` only reads it (teacher.model.pretrained).
"""

from kedro.pipeline import Node, Pipeline

from starft_pipeline.pipelines.pretrain.nodes import pretrain_metrics, pretrain_world_model


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                pretrain_world_model,
                "params:pretrain",
                ["pretrained_weights", "pretrain_history", "pretrain_report"],
                name="pretrain_world_model",
            ),
            Node(
                pretrain_metrics,
                ["pretrain_history", "pretrain_report"],
                "pretrain_mlflow_metrics",
                name="log_pretrain_metrics",
            ),
        ],
        tags="pretrain",
    )
