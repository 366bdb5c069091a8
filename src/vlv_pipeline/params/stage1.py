"""Parameters of the `stage1` pipeline (``params:stage1``)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from vlv_pipeline.params import StrictModel
from vlv_pipeline.params.teacher import SamplingParams
from vlv_pipeline.params.training import TrainParams


class EncoderParams(StrictModel):
    """The VLV encoder: ``small`` (from scratch) or ``florence2`` (the paper's)."""

    backbone: Literal["small", "florence2"]
    num_queries: int = Field(ge=1, le=77)
    init: dict[str, Any] = {}  # small: SmallVLVEncoder kwargs; florence2: a Florence2Config (tests)
    pretrained: str | None = None  # florence2: hub id or local dir of Florence-2
    tokenizer: str | None = None  # florence2: where the prompt's tokenizer comes from
    prompt: str = "Describe in detail what is shown in the image."  # <MORE_DETAILED_CAPTION>

    @model_validator(mode="after")
    def _backbone_fits(self) -> EncoderParams:
        if self.backbone == "small" and (self.pretrained or self.tokenizer):
            raise ValueError(
                "the small backbone is trained from scratch: drop pretrained/tokenizer"
            )
        if self.backbone == "florence2" and not (self.pretrained or self.init):
            raise ValueError("florence2 needs `pretrained` (hub id or dir) or an `init` config")
        if self.backbone == "florence2" and self.tokenizer is None and self.pretrained is None:
            raise ValueError("florence2 built from `init` needs a `tokenizer` for its prompt")
        return self


class ValidationParams(StrictModel):
    images: int = Field(256, ge=1, description="test images reconstructed from their embeddings")
    grid_images: int = Field(12, ge=1)
    sampling: SamplingParams = SamplingParams()
    probe: str | None = None  # the shapes world's attribute probe (a model dir); null elsewhere


class Stage1Params(StrictModel):
    t2i: str = Field(description="Stable Diffusion directory or hub id of the frozen decoder")
    t2i_dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    encoder: EncoderParams
    resolution: int | None = Field(None, gt=0, description="encoder input side; None = native")
    timestep_range: tuple[int, int] | None = None
    noise_draws: int = Field(1, ge=1)
    training: TrainParams
    validation: ValidationParams = ValidationParams()
    checkpoint_dir: str = "data/06_models/checkpoints/stage1"

    @model_validator(mode="after")
    def _timesteps_ordered(self) -> Stage1Params:
        if (
            self.timestep_range is not None
            and not 0 <= self.timestep_range[0] < self.timestep_range[1]
        ):
            raise ValueError(
                f"timestep_range must be [low, high) with 0 <= low < high, got {self.timestep_range}"
            )
        return self
