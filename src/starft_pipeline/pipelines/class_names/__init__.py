"""The class_names stage."""

from starft_pipeline.pipelines.class_names.pipeline import create_pipeline

__all__ = ["create_pipeline"]
