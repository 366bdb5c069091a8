"""The rehearsal environment's models: the paper's T2I classes, tiny and untrained."""

from vlv_pipeline.pipelines.rehearsal.pipeline import create_pipeline

__all__ = ["create_pipeline"]
