"""The teacher stage."""

from starft_pipeline.pipelines.teacher.pipeline import create_pipeline

__all__ = ["create_pipeline"]
