"""predict: classify a folder of images with one model (not part of `full`).

`kedro run --pipelines=predict --params predict.model=star,predict.images=<folder>` writes
data/07_model_output/predictions.csv.
"""

from kedro.pipeline import Node, Pipeline

from starft_pipeline.pipelines.predict.nodes import predict_images


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                predict_images,
                ["params:predict", "dataset_index", "teacher_model"],
                "predictions",
                name="predict_images",
            )
        ],
        tags="predict",
    )
