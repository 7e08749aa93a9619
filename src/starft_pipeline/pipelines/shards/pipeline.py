"""shards stage: every split of every data set written once as pre-resized JPEG tar shards (or nothing)."""

from kedro.pipeline import Node, Pipeline

from starft_pipeline.pipelines.shards.nodes import write_image_shards


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                write_image_shards,
                # params:teacher for its model's input size S only: the shards hold exactly what it reads
                ["dataset_metadata", "dataset_index", "params:shards", "params:teacher"],
                "image_shards",
                name="write_image_shards",
            )
        ],
        tags="shards",
    )
