"""Inference: caption a user's own images with the trained VLV captioner."""

from vlv_pipeline.pipelines.caption.pipeline import create_pipeline

__all__ = ["create_pipeline"]
