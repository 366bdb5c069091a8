"""Where inference runs: the GPU when there is one (training placement is Accelerate's)."""

from __future__ import annotations

import os

import torch


def inference_device() -> torch.device:
    """``cuda`` when there is a GPU, else ``cpu``. Under ``accelerate launch`` with several
    processes each rank gets its own GPU, ``cuda:<LOCAL_RANK>`` (as Accelerate places them)."""
    if not torch.cuda.is_available():
        return torch.device("cpu")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cuda")
