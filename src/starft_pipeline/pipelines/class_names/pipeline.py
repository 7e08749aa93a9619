"""class_names stage: data sets → metadata table and dataset index.

Every check runs on in-memory results first (``checked_*``); only the last node, after all of them
passed, hands the tables to the catalog. A run that fails (a bad row, an unnamed label) therefore
leaves the previous ``dataset_metadata.csv``, ``skipped_items.csv`` and ``dataset_index.json``
as they were, still consistent with each other, instead of a new table beside an old index.
"""

from kedro.pipeline import Node, Pipeline

from starft_pipeline.pipelines.class_names.nodes import (
    build_dataset_index,
    data_quality_metrics,
    prepare_checked_datasets,
    publish_checked_tables,
)

#: In-memory results of the checks, written out together by ``publish_checked_tables``.
CHECKED_OUTPUTS = ["checked_dataset_metadata", "checked_skipped_items", "checked_dataset_index"]
PUBLISHED_OUTPUTS = ["dataset_metadata", "skipped_items", "dataset_index"]


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                prepare_checked_datasets,
                "params:datasets",
                CHECKED_OUTPUTS[:2],
                name="prepare_datasets",
            ),
            Node(
                build_dataset_index,
                ["checked_dataset_metadata", "prompt_template_sets", "params:class_names"],
                "checked_dataset_index",
                name="build_dataset_index",
            ),
            Node(publish_checked_tables, CHECKED_OUTPUTS, PUBLISHED_OUTPUTS, name="publish_checked_tables"),
            Node(
                data_quality_metrics,
                ["dataset_metadata", "skipped_items"],
                "data_quality_metrics",
                name="log_data_quality",
            ),
        ],
        tags="class_names",
    )
