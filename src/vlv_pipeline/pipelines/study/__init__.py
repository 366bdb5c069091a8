"""The `study` pipeline: the paper's comparisons, measured in the shapes world."""

from vlv_pipeline.pipelines.study.pipeline import create_pipeline

__all__ = ["create_pipeline"]
