"""Encodes every image once into the T2I model's VAE latents (sharded, incremental)."""

from vlv_pipeline.pipelines.cache.pipeline import create_pipeline

__all__ = ["create_pipeline"]
