"""Parameters of the `cache` pipeline (``params:cache``)."""

from __future__ import annotations

from pydantic import Field

from vlv_pipeline.params import StrictModel
from vlv_pipeline.params.components import ComponentSpec
from vlv_pipeline.params.needs import component_needs
from vlv_pipeline.params.t2i import T2IParams


class CacheParams(StrictModel):
    """Which VAE encodes the images, at what resolution, in what batches and shards.

    ``vae``: null (the default) is the T2I model's own (``params:t2i``: ``<model>/vae``,
    float32); give a spec only to cache with another VAE."""

    vae: ComponentSpec | None = None
    resolution: int | None = Field(None, gt=0, description="None keeps the images' native size")
    batch_size: int = Field(64, ge=1)
    shard_size: int = Field(1024, ge=1)

    def needs(self, block: str) -> list:
        return [] if self.vae is None else component_needs(f"{block}.vae", self.vae)

    def vae_spec(self, t2i: T2IParams) -> ComponentSpec:
        """The VAE the cache encodes with: ``vae``, else the T2I model's."""
        return self.vae if self.vae is not None else t2i.vae()
