"""Parameters of the `rehearsal` pipeline: the paper's T2I classes, built tiny from configs."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from vlv_pipeline.params import StrictModel


class RehearsalParams(StrictModel):
    """An SD-2.1-shaped text-to-image model (VAE, UNet, CLIP text encoder, scheduler) with
    tiny widths, randomly initialised, so that every stage runs the paper's classes at the
    paper's resolution offline. The text encoder's vocabulary is the world tokenizer's."""

    seed: int = 0
    vae: dict[str, Any] = Field(description="diffusers AutoencoderKL config")
    unet: dict[str, Any] = Field(description="diffusers UNet2DConditionModel config")
    text_encoder: dict[str, Any] = Field(description="transformers CLIPTextConfig values")
    scheduler: dict[str, Any] = Field(default_factory=dict, description="DDPMScheduler config")
