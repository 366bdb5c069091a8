"""The training loop under `accelerate launch` with 2 processes (gloo on CPU)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from vlv_pipeline.params.training import TrainParams
from vlv_pipeline.training.optimization import lr_multiplier

WORKER = Path(__file__).with_name("dist_worker.py")
ACCELERATE = str(Path(sys.executable).with_name("accelerate"))
ROOT = Path(__file__).resolve().parents[2]
# the documented example config: 2 processes, gloo on a machine without CUDA
LAUNCH = [ACCELERATE, "launch", "--config_file", str(ROOT / "conf/accelerate/cpu_2proc.yaml")]


@pytest.mark.slow
def test_two_ranks_train_their_shards_and_end_identical(tmp_path):
    run = subprocess.run(
        [*LAUNCH, str(WORKER), str(tmp_path), str(tmp_path / "ckpt")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{i}.json").read_text()) for i in (0, 1)]
    assert [r["world"] for r in ranks] == [2, 2]
    assert ranks[0]["weight"] == ranks[1]["weight"]  # gradients were averaged
    first_epoch = [set(r["rows"][:32]) for r in ranks]  # 4 steps x 8 rows x 2 ranks = 64
    assert not first_epoch[0] & first_epoch[1] and len(first_epoch[0] | first_epoch[1]) == 64
    mean = [(a + b) / 2 for a, b in zip(ranks[0]["losses"], ranks[1]["losses"], strict=True)]
    assert ranks[0]["history"] == pytest.approx(mean, rel=1e-5)  # logged loss: mean over ranks
    assert ranks[1]["history"] == ranks[0]["history"]
    # the schedule counts optimiser steps, not per-process batches: as on one process
    params = TrainParams(steps=6, batch_size=8, learning_rate=0.05)
    expected = [0.05 * lr_multiplier(params)(step) for step in range(1, 7)]
    assert ranks[0]["lrs"] == pytest.approx(expected) and ranks[1]["lrs"] == ranks[0]["lrs"]
    checkpoints = sorted(p.name for p in (tmp_path / "ckpt").iterdir())
    assert checkpoints == ["checkpoint-3", "checkpoint-6", "logs"]  # nothing half-done
    # the trainable weights only (the worker's objective names no models), one file
    assert (tmp_path / "ckpt/checkpoint-6/trainable.safetensors").is_file()
    assert not (tmp_path / "ckpt/checkpoint-6/model.safetensors").exists()
    events = list((tmp_path / "ckpt/logs").rglob("events.out.tfevents.*"))
    assert events and len({e.name.split(".")[-2] for e in events}) == 1  # one process logs
    for rank in (0, 1):  # each rank's RNG state made it into the checkpoint before the rename
        assert (tmp_path / "ckpt/checkpoint-6" / f"random_states_{rank}.pkl").is_file()
