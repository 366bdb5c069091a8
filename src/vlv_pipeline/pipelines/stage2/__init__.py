"""Stage 2: teach an LLM to read the caption embeddings."""

from vlv_pipeline.pipelines.stage2.pipeline import create_pipeline

__all__ = ["create_pipeline"]
