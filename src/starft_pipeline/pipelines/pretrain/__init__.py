"""pretrain stage: contrastive pretraining of the default model on the synthetic world."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
