"""Parameters of the `stage1` pipeline (``params:stage1``)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from vlv_pipeline.params import StrictModel
from vlv_pipeline.params.needs import ModelNeed
from vlv_pipeline.params.teacher import SamplingParams
from vlv_pipeline.params.training import TrainParams


class SmallEncoderParams(StrictModel):
    """The shapes world's from-scratch encoder (``SmallVLVEncoder`` keyword arguments)."""

    image_size: int = Field(32, ge=8)
    width: int = Field(128, ge=8)
    stem_channels: tuple[int, ...] = (32, 64, 128)  # the cnn tower's stem
    latent_stem_channels: tuple[int, ...] = ()  # t2i_vae tower: 3x3 convs on the latent grid
    encoder_layers: int = Field(2, ge=0)
    decoder_layers: int = Field(2, ge=1)
    heads: int = Field(4, ge=1)
    query_init_std: float = Field(1.0, gt=0)
    vision_tower: Literal["cnn", "t2i_vae"] = "cnn"  # t2i_vae: the T2I VAE's encoder, frozen
    # free: any vector per position; vocabulary: a softmax mixture of the frozen T2I text
    # encoder's own word embeddings (no captions involved)
    output: Literal["free", "vocabulary"] = "free"


class Florence2Params(StrictModel):
    """The paper's encoder: Florence-2 by hub id / directory (or a config, for tests)."""

    pretrained: str | None = None
    init: dict[str, Any] | None = None
    tokenizer: str | None = None  # default: the pretrained Florence-2's own
    prompt: str = "Describe in detail what is shown in the image."  # <MORE_DETAILED_CAPTION>

    @model_validator(mode="after")
    def _one_source(self) -> Florence2Params:
        if (self.pretrained is None) == (self.init is None):
            raise ValueError(
                "give exactly one of `pretrained` (hub id or dir) or `init` (a Florence2Config)"
            )
        if self.init is not None and self.tokenizer is None:
            raise ValueError("a Florence-2 built from `init` needs a `tokenizer` for its prompt")
        return self


class EncoderParams(StrictModel):
    """The VLV encoder: ``small`` (from scratch) or ``florence2`` (the paper's)."""

    backbone: Literal["small", "florence2"]
    num_queries: int = Field(ge=1, le=77)
    small: SmallEncoderParams = SmallEncoderParams()
    florence2: Florence2Params | None = None

    def needs(self, block: str) -> list:
        """Florence-2 and its tokenizer, for backbone florence2 (small needs nothing)."""
        if self.backbone != "florence2" or self.florence2 is None:
            return []
        found = []
        if self.florence2.pretrained is not None:
            found.append(ModelNeed(f"{block}.florence2.pretrained", self.florence2.pretrained))
        if self.florence2.tokenizer is not None:
            found.append(
                ModelNeed(f"{block}.florence2.tokenizer", self.florence2.tokenizer, weights=False)
            )
        return found

    @model_validator(mode="after")
    def _backbone_configured(self) -> EncoderParams:
        if self.backbone == "florence2" and self.florence2 is None:
            raise ValueError("backbone florence2 needs a `florence2:` block (pretrained or init)")
        return self


class ValidationParams(StrictModel):
    # which split is reconstructed: test for the reported run; sweeps choose on val.
    # None: the first non-empty of test, val, train (for manifests without those splits)
    split: Literal["test", "val", "train"] | None = "test"
    images: int = Field(
        256, ge=1, description="images of `split` reconstructed from their embeddings"
    )
    grid_images: int = Field(12, ge=1)
    sampling: SamplingParams = SamplingParams()
    probe: str | None = None  # the shapes world's attribute probe (a model dir); null elsewhere
    # also validate during training, every `every` steps (metric and grid to the trackers,
    # with EMA weights when EMA is on); null: only once, after training
    every: int | None = Field(None, ge=1)


class Stage1Params(StrictModel):
    """Stage 1 against the frozen T2I model of ``params:t2i`` (its nodes take that block)."""

    encoder: EncoderParams
    resolution: int | None = Field(None, gt=0, description="encoder input side; None = native")
    timestep_range: tuple[int, int] | None = None
    timestep_sampling: Literal["uniform", "stratified"] = "uniform"
    noise_draws: int = Field(1, ge=1)
    diversity_weight: float = Field(0.0, ge=0, description="weight of the anti-collapse term")
    training: TrainParams
    validation: ValidationParams = ValidationParams()
    checkpoint_dir: str = "data/06_models/checkpoints/stage1"

    def needs(self, block: str) -> list:
        """The encoder's models, the validation probe (the T2I model: ``params:t2i``)."""
        found = self.encoder.needs(f"{block}.encoder")
        if self.validation.probe is not None:
            found.append(ModelNeed(f"{block}.validation.probe", self.validation.probe))
        return found

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
