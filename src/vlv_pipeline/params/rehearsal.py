"""Parameters of the `rehearsal` pipeline: the paper's T2I classes, built tiny from configs."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from vlv_pipeline.params import StrictModel

Family = Literal["stable-diffusion", "stable-diffusion-xl", "stable-diffusion-3", "flux"]


class FamilyParts(StrictModel):
    """What one family changes: keys merged over the shared blocks (``vae``, ``unet``,
    ``text_encoder``), its other text encoders, its transformer and its scheduler. The widths
    one part reads from another (cross-attention, pooled and joint widths) are derived."""

    vae: dict[str, Any] = Field(default_factory=dict, description="merged over `vae`")
    unet: dict[str, Any] = Field(default_factory=dict, description="merged over `unet` (SDXL)")
    transformer: dict[str, Any] = Field(
        default_factory=dict, description="SD3Transformer2DModel / FluxTransformer2DModel config"
    )
    text_encoder: dict[str, Any] = Field(
        default_factory=dict, description="merged over `text_encoder`"
    )
    text_encoder_2: dict[str, Any] | None = Field(
        None, description="CLIPTextConfig (SDXL, SD 3) or T5Config (FLUX) values"
    )
    text_encoder_3: dict[str, Any] | None = Field(None, description="T5Config values (SD 3)")
    scheduler: dict[str, Any] = Field(
        default_factory=dict,
        description="merged over `scheduler` (SDXL); the whole FlowMatchEulerDiscreteScheduler "
        "config for SD 3 and FLUX",
    )


class RehearsalParams(StrictModel):
    """A text-to-image model of one teacher family with tiny widths, randomly initialised,
    so that every stage runs the paper's classes at the paper's resolution offline. The text
    encoders' vocabulary is the world tokenizer's. ``family`` is the one switch:
    ``stable-diffusion`` (SD 2.1's layout, the default), ``stable-diffusion-xl``,
    ``stable-diffusion-3`` or ``flux``; each but the first reads its block (``sdxl``,
    ``sd3``, ``flux``)."""

    family: Family = "stable-diffusion"
    seed: int = 0
    vae: dict[str, Any] = Field(description="diffusers AutoencoderKL config")
    unet: dict[str, Any] = Field(description="diffusers UNet2DConditionModel config")
    text_encoder: dict[str, Any] = Field(description="transformers CLIPTextConfig values")
    scheduler: dict[str, Any] = Field(default_factory=dict, description="DDPMScheduler config")
    sdxl: FamilyParts | None = None
    sd3: FamilyParts | None = None
    flux: FamilyParts | None = None
