"""The frozen text-to-image model (``params:t2i``), named once for every stage.

The cache's VAE (unless ``cache.vae`` names another), stage 1's decoder, stage 2's text
encoder, evaluate's and reconstruct's renders of the embeddings all take this one block, so
no two stages can name different models. ``kedro run --params t2i=<dir or hub id>`` sets
``t2i.model`` (``config.StudyConfigLoader``); ``--params t2i.dtype=bfloat16`` the dtype.
"""

from __future__ import annotations

import os
from typing import Any, Literal

from pydantic import Field, field_validator

from vlv_pipeline.params import StrictModel
from vlv_pipeline.params.components import ComponentSpec
from vlv_pipeline.params.needs import ModelNeed

__all__ = ["T2IParams"]


class T2IParams(StrictModel):
    model: str = Field(
        description="hub id or local save_pretrained directory of a diffusers pipeline"
    )
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"

    @field_validator("model", mode="before")
    @classmethod
    def _path_to_str(cls, value: Any) -> Any:
        return os.fspath(value) if isinstance(value, os.PathLike) else value

    def vae(self) -> ComponentSpec:
        """Its VAE as the cache loads it (float32, as ``cache.vae`` always was)."""
        return ComponentSpec(pretrained=self.model, subfolder="vae", dtype="float32")

    def needs(self, block: str) -> list:
        """The T2I model itself."""
        return [ModelNeed(f"{block}.model", self.model)]
