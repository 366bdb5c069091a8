"""Weights & Biases as a training tracker, through Accelerate's own W&B tracker, offline."""

import sys

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset
from wandb_records import read_finished_run

from vlv_pipeline.errors import SetupError
from vlv_pipeline.params.training import TrainParams
from vlv_pipeline.training.loop import Validation, train


class Squares(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(4, 1)

    def forward(self, batch):
        return (self.linear(batch[0]) ** 2).mean()


def _params(**overrides) -> TrainParams:
    values = dict(steps=4, batch_size=8, learning_rate=0.1, log_every=2, trackers=["wandb"])
    return TrainParams(**{**values, **overrides})


def test_a_training_run_logs_to_an_offline_wandb_run(monkeypatch, tmp_path):
    pytest.importorskip("wandb")
    wandb_dir = tmp_path / "wandb_dir"
    wandb_dir.mkdir()
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(wandb_dir))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("VLV_MLFLOW", raising=False)
    torch.manual_seed(0)

    def validate(step):
        import matplotlib.pyplot as plt

        figure, axis = plt.subplots(figsize=(1, 1))
        axis.plot([0, step])
        return {"score": step / 10}, {"grid": figure}

    result = train(
        Squares(),
        TensorDataset(torch.randn(32, 4)),
        _params(),
        checkpoint_dir=tmp_path / "stage1-abc",
        desc="stage 1",
        validation=Validation(every=4, run=validate),
    )
    runs = sorted((wandb_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, list((wandb_dir / "wandb").iterdir())
    files = list(runs[0].glob("run-*.wandb"))  # what `wandb sync` uploads
    assert len(files) == 1
    run = read_finished_run(files[0])
    assert (run["project"], run["name"]) == ("stage1", "stage1-abc")
    assert run["config"]["learning_rate"] == 0.1 and run["config"]["steps"] == 4
    curves = [row for row in run["history"] if "loss" in row]
    assert [row["step"] for row in curves] == [2, 4]
    assert {"loss", "lr", "grad_norm", "images_per_s"} <= set(curves[0])
    assert [row["loss"] for row in curves] == pytest.approx([h["loss"] for h in result.history])
    validation = [row for row in run["history"] if "validation/score" in row]
    assert [row["validation/score"] for row in validation] == [0.4]
    # rows of one step are merged; an image's fields are nested under its key
    images = [row for row in run["history"] if "validation/grid/_type" in row]
    assert [row["_step"] for row in images] == [4]
    assert images[0]["validation/grid/_type"] == "images/separated"
    for name in images[0]["validation/grid/filenames"]:
        assert (runs[0] / "files" / name).is_file()


def test_wandb_asked_for_but_not_installed_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb fails, find_spec is None
    with pytest.raises(SetupError, match="wandb is not installed"):
        train(Squares(), TensorDataset(torch.randn(32, 4)), _params(), checkpoint_dir=tmp_path)
