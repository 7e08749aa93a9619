"""pretrain stage: contrastive pretraining of the default model on the synthetic world."""

from starft_pipeline.pipelines.pretrain.pipeline import create_pipeline

__all__ = ["create_pipeline"]
