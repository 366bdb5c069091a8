"""Run by test_crash.py in a subprocess: a small training that can be SIGKILLed mid-run.

usage: python crash_worker.py CHECKPOINT_DIR RESULT_JSON SLEEP_SECONDS
"""

import json
import sys
import time

import torch
from torch import nn
from torch.utils.data import TensorDataset

from vlv_pipeline.params.training import TrainParams
from vlv_pipeline.training.loop import train


class Slow(nn.Module):
    def __init__(self, sleep: float):
        super().__init__()
        self.linear = nn.Linear(4, 1)
        self.sleep = sleep

    def forward(self, batch):
        time.sleep(self.sleep)
        x, y = batch
        return ((self.linear(x) - y) ** 2).mean()


def main(directory: str, result: str, sleep: float) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 4, generator=g)
    data = TensorDataset(x, x @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]]))
    torch.manual_seed(0)
    model = Slow(sleep)
    params = TrainParams(
        steps=40, batch_size=8, learning_rate=0.05, checkpoint_every=5, log_every=1
    )
    out = train(model, data, params, checkpoint_dir=directory)
    with open(result, "w") as f:
        json.dump(
            {
                "resumed_from": out.resumed_from,
                "steps": [e["step"] for e in out.history],
                "weight": model.linear.weight.detach().flatten().tolist(),
            },
            f,
        )


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], float(sys.argv[3]))
