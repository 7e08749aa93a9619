"""export stage: one namespaced pipeline per fine-tuned method, after finetune (part of `full`).

Writes ``data/06_models/open_clip/<method>.safetensors`` (loads with open_clip as is) and
``<method>_classifier.safetensors``, and logs ``<method>`` as an MLflow pyfunc model to the run.
"""

from kedro.pipeline import Node, Pipeline

from starft_pipeline.pipelines.export.nodes import export_open_clip, mlflow_input_example
from starft_pipeline.train.methods import method_names

SHARED_INPUTS = {"dataset_metadata", "dataset_index", "teacher_model"}


def method_export(method: str) -> Pipeline:
    template = Pipeline(
        [
            Node(
                export_open_clip,
                ["weights", "dataset_index", "teacher_model", "params:export"],
                ["open_clip_checkpoint", "open_clip_classifier"],
                name="export_open_clip",
            ),
            Node(
                mlflow_input_example,
                ["open_clip_classifier", "dataset_metadata", "dataset_index", "params:export"],
                "mlflow_model",
                name="log_mlflow_model",
            ),
        ]
    )
    return Pipeline(
        template, namespace=method, inputs=SHARED_INPUTS, parameters={"params:export"}, tags=["export", method]
    )


def create_pipeline(**kwargs) -> Pipeline:
    return sum((method_export(method) for method in method_names()), Pipeline([]))
