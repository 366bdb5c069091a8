"""Import the authors' published stage-2 captioner into this project's modules."""

from vlv_pipeline.pipelines.import_published.pipeline import create_pipeline

__all__ = ["create_pipeline"]
