"""The predict pipeline."""

from starft_pipeline.pipelines.predict.pipeline import create_pipeline

__all__ = ["create_pipeline"]
