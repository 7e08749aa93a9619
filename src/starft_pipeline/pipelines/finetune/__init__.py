"""The finetune stage."""

from starft_pipeline.pipelines.finetune.pipeline import create_pipeline

__all__ = ["create_pipeline"]
