"""teacher stage: frozen zero-shot model → cached embeddings."""

from kedro.pipeline import Node, Pipeline

from starft_pipeline.pipelines.teacher.nodes import build_teacher_cache, release_teacher_parts, teacher_fingerprint


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                build_teacher_cache,
                ["dataset_metadata", "dataset_index", "descriptions", "params:teacher", "image_shards"],
                ["teacher_model", "teacher_cache"],
                name="build_teacher_cache",
            ),
            Node(teacher_fingerprint, "teacher_model", "teacher_fingerprint", name="log_teacher_fingerprint"),
            # teacher_cache is saved with teacher_model, before this node runs
            Node(
                release_teacher_parts,
                ["teacher_model", "dataset_index", "params:teacher"],
                None,
                name="release_teacher_parts",
            ),
        ],
        tags="teacher",
    )
