"""class_names stage: data sets → metadata table and dataset index."""

from kedro.pipeline import Node, Pipeline

from .nodes import build_dataset_index, prepare_datasets


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(prepare_datasets, "params:datasets", "dataset_metadata", name="prepare_datasets"),
            Node(
                build_dataset_index,
                ["dataset_metadata", "prompt_template_sets", "params:class_names"],
                "dataset_index",
                name="build_dataset_index",
            ),
        ],
        tags="class_names",
    )
