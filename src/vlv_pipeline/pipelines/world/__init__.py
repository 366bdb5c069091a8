"""The shapes world: procedurally generated captioned images (the default data)."""

from vlv_pipeline.pipelines.world.pipeline import create_pipeline

__all__ = ["create_pipeline"]
