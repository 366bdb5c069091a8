"""A tiny training run the loop tests share: a linear regression that can be told to blow up
or to crash, its data and its parameters."""

import torch
from torch import nn
from torch.utils.data import TensorDataset

from vlv_pipeline.params.training import TrainParams


class Regression(nn.Module):
    """y = w x: a loss the loop must drive down; can be told to blow up or crash."""

    def __init__(self, nan_at: int | None = None, crash_at: int | None = None):
        super().__init__()
        self.linear = nn.Linear(4, 1)
        self.frozen = nn.Linear(4, 4).requires_grad_(False)
        self.calls, self.nan_at, self.crash_at = 0, nan_at, crash_at

    def forward(self, batch):
        self.calls += 1
        if self.crash_at is not None and self.calls > self.crash_at:
            raise KeyboardInterrupt("simulated kill")
        x, y = batch
        loss = ((self.linear(x) - y) ** 2).mean() + 0 * self.frozen(x).sum()
        if self.nan_at is not None and self.calls > self.nan_at:
            loss = loss * float("nan")
        return loss


def regression_data(n=64):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 4, generator=g)
    return TensorDataset(x, x @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]]) + 0.1)


def regression_params(**overrides):
    base = dict(
        steps=12,
        batch_size=8,
        learning_rate=0.05,
        checkpoint_every=4,
        keep_checkpoints=2,
        log_every=2,
    )
    return TrainParams(**{**base, **overrides})


def regression_model(seed=0, **kw):
    torch.manual_seed(seed)
    return Regression(**kw)
