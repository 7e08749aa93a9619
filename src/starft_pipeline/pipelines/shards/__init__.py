"""The shards stage."""

from starft_pipeline.pipelines.shards.pipeline import create_pipeline

__all__ = ["create_pipeline"]
