"""teacher stage: frozen zero-shot model → cached embeddings."""

from kedro.pipeline import Node, Pipeline

from .nodes import build_teacher_cache


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                build_teacher_cache,
                ["dataset_metadata", "dataset_index", "descriptions", "params:teacher"],
                ["teacher_model", "teacher_cache"],
                name="build_teacher_cache",
            )
        ],
        tags="teacher",
    )
