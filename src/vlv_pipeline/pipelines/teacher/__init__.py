"""The shapes world's pretrained teacher: a miniature Stable Diffusion and the attribute probe."""

from vlv_pipeline.pipelines.teacher.pipeline import create_pipeline

__all__ = ["create_pipeline"]
