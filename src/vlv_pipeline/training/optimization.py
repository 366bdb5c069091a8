"""The optimiser of every training run: AdamW over the trainable weights, in one or two
groups, and the learning-rate multiplier (warm-up, then a cosine, linear or constant
schedule: transformers' schedule functions) that ``training/loop.py`` steps with it."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from vlv_pipeline.params.training import TrainParams

# transformers' name of each `lr_schedule` (`transformers.get_scheduler`)
_LIBRARY_SCHEDULES = {
    "cosine": "cosine_with_min_lr",
    "linear": "linear",
    "constant": "constant_with_warmup",
}


def lr_multiplier(params: TrainParams) -> Callable[[int], float]:
    """The learning-rate multiplier of optimiser step ``step`` (counted from 0).

    The shape is transformers' own schedule function for ``params.lr_schedule`` (taken from
    ``transformers.get_scheduler``), composed as the loop has always scheduled:

    - the warm-up counts the step being taken: step s < ``warmup_steps`` trains at
      (s + 1) / warmup_steps of the rate (the library's s / warmup_steps spends step 0 at 0);
    - ``cosine`` decays to ``min_learning_rate`` (the library's ``min_lr_rate``), ``linear``
      to it too (the library's line ends at 0: it is rescaled onto [floor, 1]);
      ``constant`` stays at the rate;
    - past ``steps`` it stays where it ended (the library's cosine would rise again).

    The default (``cosine``) gives exactly, step by step, the rates of the hand-written
    schedule it replaced (tests/training/test_schedule.py).
    """
    from transformers import get_scheduler

    warmup, steps = params.warmup_steps, params.steps
    floor = params.min_learning_rate / params.learning_rate
    extra = {"min_lr_rate": floor} if params.lr_schedule == "cosine" else None
    # the library builds a LambdaLR around its schedule function; only the function is kept
    probe = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    library = get_scheduler(
        _LIBRARY_SCHEDULES[params.lr_schedule],
        probe,
        num_warmup_steps=warmup,
        num_training_steps=steps,
        scheduler_specific_kwargs=extra,
    ).lr_lambdas[0]
    rescale = params.lr_schedule == "linear"

    def multiplier(step: int) -> float:
        if step < warmup - 1:
            return float(library(step + 1))
        if step < warmup:
            return 1.0  # the warm-up's last step trains at the full rate
        value = float(library(min(step, steps)))
        return value * (1 - floor) + floor if rescale else value

    return multiplier


def parameter_groups(trainable: list[nn.Parameter], params: TrainParams) -> list[dict]:
    """AdamW groups: one, or (with ``decay_norms_and_biases: false``) 1-d params undecayed."""
    if params.decay_norms_and_biases:
        return [{"params": trainable}]
    groups = [
        {"params": [p for p in trainable if p.ndim >= 2]},
        {"params": [p for p in trainable if p.ndim < 2], "weight_decay": 0.0},
    ]
    return [g for g in groups if g["params"]]


def make_optimizer(trainable: list[nn.Parameter], params: TrainParams, device: torch.device):
    """AdamW; the fused CUDA kernel when the trainable weights are on a GPU."""
    fused = device.type == "cuda" and all(p.is_floating_point() for p in trainable)
    return torch.optim.AdamW(
        parameter_groups(trainable, params),
        lr=params.learning_rate,
        betas=params.betas,
        weight_decay=params.weight_decay,
        **({"fused": True} if fused else {}),
    )
