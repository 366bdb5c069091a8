"""Parameters of the shared training loop (one block per stage: teacher, stage1, stage2)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from vlv_pipeline.params import StrictModel


class TrainParams(StrictModel):
    """Optimisation, schedule, precision and checkpointing of one training run.

    The global batch is ``batch_size * gradient_accumulation * number of processes``.
    """

    steps: int = Field(ge=1)
    batch_size: int = Field(ge=1)
    gradient_accumulation: int = Field(1, ge=1)
    learning_rate: float = Field(gt=0)
    min_learning_rate: float = Field(0.0, ge=0)
    warmup_steps: int = Field(0, ge=0)
    # after the warm-up: cosine or linear decay to min_learning_rate, or a constant rate
    # (transformers' schedule functions; training.optimization.lr_multiplier)
    lr_schedule: Literal["cosine", "linear", "constant"] = "cosine"
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = Field(0.0, ge=0)
    # False: norms' weights and biases (1-d parameters) get no weight decay, as in nanoGPT
    decay_norms_and_biases: bool = True
    max_grad_norm: float | None = Field(1.0, gt=0)
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"
    ema_decay: float | None = Field(None, gt=0, lt=1)
    checkpoint_every: int = Field(500, ge=1)
    keep_checkpoints: int = Field(2, ge=1)
    resume: bool = True
    # resume under an engine that unpickles its own checkpoint files (DeepSpeed, Megatron-LM,
    # FSDP with sharded state dicts): code in a file planted there would run, so such a
    # resume is refused unless this is true. Set it only where nobody else can write under
    # the run folder. Not part of a run's checkpoint folder name.
    trust_engine_checkpoints: bool = False
    seed: int = 0
    log_every: int = Field(10, ge=1)
    # where loss, lr, grad norm, images/s (and validation) go while training: Accelerate
    # trackers, written under <run folder>/logs ([] for none; MLflow joins when tracking is on);
    # wandb (Weights & Biases) needs `pip install wandb` and `wandb login` or WANDB_MODE=offline
    trackers: list[Literal["tensorboard", "wandb"]] = ["tensorboard"]
    # recompute activations in the backward pass (less memory, ~30% more compute), in every
    # model of the objective that supports it: the frozen UNet and the trainable models
    gradient_checkpointing: bool = False
    # how batches are read; none of these changes which batches a run sees (so they are
    # not part of a run's checkpoint folder name: see training.run_folders.run_directory)
    num_workers: int = Field(0, ge=0)  # DataLoader worker processes (0: read in the loop)
    prefetch_factor: int | None = Field(None, ge=1)  # batches per worker read ahead
    pin_memory: bool = True  # page-locked batches, for faster copies; only used on CUDA
    # decoded items kept in memory per reading process (the loop, or each worker), for
    # stages that read their training set item by item; least recently used out first
    cache_mb: int = Field(256, ge=0)

    @model_validator(mode="after")
    def _schedule_fits(self) -> TrainParams:
        if self.warmup_steps > self.steps:
            raise ValueError(f"warmup_steps ({self.warmup_steps}) exceeds steps ({self.steps})")
        if self.min_learning_rate > self.learning_rate:
            raise ValueError("min_learning_rate must not exceed learning_rate")
        if self.prefetch_factor is not None and self.num_workers == 0:
            raise ValueError("prefetch_factor needs num_workers >= 1 (workers read ahead)")
        return self
