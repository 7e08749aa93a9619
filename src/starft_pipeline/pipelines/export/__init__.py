"""The export stage."""

from starft_pipeline.pipelines.export.pipeline import create_pipeline

__all__ = ["create_pipeline"]
