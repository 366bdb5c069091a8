"""Shared by the CPU benchmarks: seconds per optimiser step of an objective."""

from __future__ import annotations

import time

import torch


def time_steps(objective, batches, steps: int) -> float:
    """Mean seconds per AdamW step over ``steps`` steps, after two warm-up steps."""
    optimizer = torch.optim.AdamW([p for p in objective.parameters() if p.requires_grad], lr=1e-4)
    for i in range(steps + 2):
        if i == 2:
            start = time.perf_counter()
        loss = objective(batches[i % len(batches)])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return (time.perf_counter() - start) / steps
