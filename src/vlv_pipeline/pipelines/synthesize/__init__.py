"""Caption-pair synthesis and the stage-2 embedding cache."""

from vlv_pipeline.pipelines.synthesize.pipeline import create_pipeline

__all__ = ["create_pipeline"]
