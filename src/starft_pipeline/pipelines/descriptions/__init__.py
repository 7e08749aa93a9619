"""The descriptions stage."""

from starft_pipeline.pipelines.descriptions.pipeline import create_pipeline

__all__ = ["create_pipeline"]
