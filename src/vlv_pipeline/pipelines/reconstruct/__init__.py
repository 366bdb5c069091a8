"""Inference: your own images rendered back from their stage-1 caption embeddings, and from
their captions, through the frozen T2I model (the official code's Image_inference.sh)."""

from vlv_pipeline.pipelines.reconstruct.pipeline import create_pipeline

__all__ = ["create_pipeline"]
