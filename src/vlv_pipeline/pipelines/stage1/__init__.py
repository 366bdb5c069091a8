"""Stage 1: distil the frozen T2I decoder into the VLV encoder (images only)."""

from vlv_pipeline.pipelines.stage1.pipeline import create_pipeline

__all__ = ["create_pipeline"]
