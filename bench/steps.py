"""Shared by the CPU benchmarks: seconds per optimiser step of an objective."""

from __future__ import annotations

import time

import torch


def synchronize(device: torch.device | str | None = None) -> None:
    """Wait for the device's queued work (a no-op on CPU), so a timer reads finished work."""
    if torch.device(device or "cpu").type == "cuda":
        torch.cuda.synchronize(device)


def step_phases(objective, batches, steps: int, warmup: int = 2, optimizer=None) -> dict:
    """Mean seconds per optimiser step over ``steps`` steps after ``warmup`` warm-up steps, in
    all (``step``) and by phase (``forward``, ``backward``, ``optimizer``: step and zero_grad).

    ``optimizer``: the one to step (default: AdamW at 1e-4 over the trainable parameters).
    Batches are used in turn; they must already be on the objective's device.
    """
    if optimizer is None:
        trainable = [p for p in objective.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(trainable, lr=1e-4)
    device = next(objective.parameters()).device
    phases = {"forward": 0.0, "backward": 0.0, "optimizer": 0.0}
    for i in range(steps + warmup):
        if i == warmup:
            synchronize(device)
            start = time.perf_counter()
            phases = dict.fromkeys(phases, 0.0)
        t0 = time.perf_counter()
        loss = objective(batches[i % len(batches)])
        synchronize(device)
        t1 = time.perf_counter()
        loss.backward()
        synchronize(device)
        t2 = time.perf_counter()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        synchronize(device)
        t3 = time.perf_counter()
        phases["forward"] += t1 - t0
        phases["backward"] += t2 - t1
        phases["optimizer"] += t3 - t2
    total = time.perf_counter() - start
    return {"step": total / steps, **{k: v / steps for k, v in phases.items()}}


def time_steps(objective, batches, steps: int) -> float:
    """Mean seconds per AdamW step over ``steps`` steps, after two warm-up steps."""
    return step_phases(objective, batches, steps)["step"]
