"""Run by test_distributed.py under `accelerate launch --num_processes 2` (gloo on CPU)."""

import json
import sys

import torch
from accelerate import PartialState
from torch import nn
from torch.utils.data import TensorDataset

from vlv_pipeline.params.training import TrainParams
from vlv_pipeline.training.loop import train


class Recording(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(4, 1)
        self.losses, self.rows = [], []

    def forward(self, batch):
        x, y, index = batch
        loss = ((self.linear(x) - y) ** 2).mean()
        self.losses.append(loss.item())
        self.rows.extend(index.tolist())
        return loss


def main(out: str, checkpoints: str) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 4, generator=g)
    data = TensorDataset(x, x @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]]), torch.arange(64))
    torch.manual_seed(0)
    model = Recording()
    params = TrainParams(steps=6, batch_size=8, learning_rate=0.05, log_every=1, checkpoint_every=3)
    result = train(model, data, params, checkpoint_dir=checkpoints)
    state = PartialState()
    with open(f"{out}/rank{state.process_index}.json", "w") as f:
        json.dump(
            {
                "world": state.num_processes,
                "weight": model.linear.weight.detach().flatten().tolist(),
                "losses": model.losses,
                "rows": model.rows,
                "history": [e["loss"] for e in result.history],
                "lrs": [e["lr"] for e in result.history],
            },
            f,
        )


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
