"""Where inference runs: the GPU when there is one (training placement is Accelerate's)."""

from __future__ import annotations

import torch


def inference_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def module_device(module: torch.nn.Module) -> torch.device:
    return next(module.parameters()).device
