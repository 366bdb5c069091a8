"""Parameters of the `cache` pipeline (``params:cache``)."""

from __future__ import annotations

from pydantic import Field

from vlv_pipeline.params import StrictModel
from vlv_pipeline.params.components import ComponentSpec
from vlv_pipeline.params.needs import component_needs


class CacheParams(StrictModel):
    """Which VAE encodes the images, at what resolution, in what batches and shards."""

    vae: ComponentSpec
    resolution: int | None = Field(None, gt=0, description="None keeps the images' native size")
    batch_size: int = Field(64, ge=1)
    shard_size: int = Field(1024, ge=1)

    def needs(self, block: str) -> list:
        return component_needs(f"{block}.vae", self.vae)
