"""Pipeline ``ingest``: validate, de-duplicate and split the images of a source."""

from vlv_pipeline.pipelines.ingest.pipeline import create_pipeline

__all__ = ["create_pipeline"]
