"""Parameters of the `teacher` pipeline (``params:teacher``): the shapes world's T2I model."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from vlv_pipeline.params import StrictModel
from vlv_pipeline.params.training import TrainParams


class InitConfig(StrictModel):
    """A component built from a config (the registry's ``init`` form)."""

    init: dict[str, Any]


# the samplers a render may use, each built from the T2I model's own scheduler config
# (models/teacher.py, ``_scheduler``): DPMSolverMultistepScheduler is DPM-Solver++ (2nd order),
# UniPCMultistepScheduler is UniPC (bh2, predictor-corrector)
Sampler = Literal[
    "DDIMScheduler", "DPMSolverMultistepScheduler", "UniPCMultistepScheduler", "DDPMScheduler"
]


class SamplingParams(StrictModel):
    """How renders are made for evaluation and grids. ``scheduler: null`` samples with the
    teacher's own scheduler (what a flow-matching teacher, SD 3 or FLUX, needs: the
    noise-prediction samplers above are refused for it)."""

    scheduler: Sampler | None = "DDIMScheduler"
    steps: int = Field(25, ge=1, le=1000)
    guidance: float = Field(1.0, ge=0.0)
    seed: int = 0
    batch_size: int = Field(128, ge=1)


class ProbeParams(StrictModel):
    width: int = Field(32, ge=4)
    hidden: int = Field(256, ge=8)
    noise_std: float = Field(0.05, ge=0)
    extra_scenes: int = Field(
        20000, ge=0, description="freshly generated world scenes added to the train split"
    )
    training: TrainParams


class TeacherParams(StrictModel):
    vae: InitConfig
    text_encoder: InitConfig
    unet: InitConfig
    scheduler: InitConfig
    kl_weight: float = Field(1e-6, ge=0)
    caption_dropout: float = Field(0.1, ge=0, lt=1)
    vae_training: TrainParams
    unet_training: TrainParams
    probe: ProbeParams
    evaluation: SamplingParams = SamplingParams()
    eval_images: int = Field(256, ge=1, description="test images rendered to judge the teacher")
    grid_images: int = Field(24, ge=1)
    save_dtype: Literal["float16", "float32"] = "float16"
    checkpoint_dir: str = "data/06_models/checkpoints/teacher"


class FlowTeacherParams(StrictModel):
    """``params:teacher_flow``: the shapes world's SD 3-shaped teacher (an MMDiT with flow
    matching and two small CLIPs, no T5). It reads the shipped SD-style teacher's autoencoder
    (catalog ``shipped_teacher_vae``), so both teachers share one latent space, and is judged
    by the shipped probe."""

    text_encoder: InitConfig = Field(
        description="CLIPTextModelWithProjection config of each of the two CLIPs (vocab and "
        "special ids come from the world tokenizer)"
    )
    transformer: InitConfig = Field(description="SD3Transformer2DModel config")
    scheduler: InitConfig = Field(description="a FlowMatchEulerDiscreteScheduler config")
    caption_dropout: float = Field(0.1, ge=0, lt=1)
    training: TrainParams
    evaluation: SamplingParams = SamplingParams(scheduler=None)
    eval_images: int = Field(256, ge=1, description="test images rendered to judge the teacher")
    grid_images: int = Field(24, ge=1)
    save_dtype: Literal["float16", "float32"] = "float16"
    checkpoint_dir: str = "data/06_models/checkpoints/teacher_flow"
