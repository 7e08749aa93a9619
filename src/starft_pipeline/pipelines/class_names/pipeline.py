"""class_names stage: data sets → metadata table and dataset index."""

from kedro.pipeline import Node, Pipeline

from starft_pipeline.pipelines.class_names.nodes import (
    build_dataset_index,
    data_quality_metrics,
    prepare_checked_datasets,
)


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                prepare_checked_datasets,
                "params:datasets",
                ["dataset_metadata", "skipped_items"],
                name="prepare_datasets",
            ),
            Node(
                data_quality_metrics,
                ["dataset_metadata", "skipped_items"],
                "data_quality_metrics",
                name="log_data_quality",
            ),
            Node(
                build_dataset_index,
                ["dataset_metadata", "prompt_template_sets", "params:class_names"],
                "dataset_index",
                name="build_dataset_index",
            ),
        ],
        tags="class_names",
    )
