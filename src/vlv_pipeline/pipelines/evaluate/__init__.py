"""Evaluation: captions, reconstructions from embeddings and from captions, baselines, report."""

from vlv_pipeline.pipelines.evaluate.pipeline import create_pipeline

__all__ = ["create_pipeline"]
