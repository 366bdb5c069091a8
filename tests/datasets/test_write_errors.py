"""Disk-full and permission errors while saving name the path and leave nothing half-written."""

import errno

import pytest
import torch
from kedro.io import DatasetError, Version

from vlv_pipeline.datasets.model_directory import ModelDirectoryDataset
from vlv_pipeline.datasets.shard_store import LatentCache
from vlv_pipeline.models.probe import AttributeProbe
from vlv_pipeline.params.training import TrainParams
from vlv_pipeline.training import loop


def _disk_full(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_model_directory_on_a_full_disk(tmp_path, monkeypatch):
    dataset = ModelDirectoryDataset(
        filepath=str(tmp_path / "probe"),
        load_class="vlv_pipeline.models.probe.AttributeProbe",
        version=Version(None, None),
    )
    probe = AttributeProbe(image_size=16, width=4, hidden=8)
    monkeypatch.setattr(AttributeProbe, "save_pretrained", _disk_full)
    with pytest.raises(DatasetError, match=r"could not write .*probe.*disk is full"):
        dataset.save(probe)
    assert not list((tmp_path / "probe").glob("*/probe"))  # no version appeared
    assert not any((tmp_path / "probe").glob(".*"))  # and no hidden leftovers


def test_latent_cache_shard_on_a_read_only_disk(tmp_path, monkeypatch):
    cache = LatentCache(tmp_path / "cache")
    cache.reset({"weights_sha256": "x"})
    from datasets.arrow_writer import ArrowWriter

    monkeypatch.setattr(
        ArrowWriter, "write_batch", lambda *a, **k: _raise(OSError(errno.EROFS, "Read-only"))
    )
    with pytest.raises(DatasetError, match=r"could not write .*cache/shard-.*read-only"):
        cache.add(["a"], torch.zeros(1, 4, 2, 2), torch.ones(1, 4, 2, 2))
    assert len(LatentCache(tmp_path / "cache")) == 0 and not list((tmp_path / "cache").glob(".*"))


def test_checkpoint_without_permission_names_the_checkpoint(tmp_path, monkeypatch):
    from torch.utils.data import TensorDataset

    def denied(self, path, *a, **k):
        raise PermissionError(errno.EACCES, "Permission denied", path)

    monkeypatch.setattr(loop.Accelerator, "save_state", denied)
    model = torch.nn.Linear(2, 1)

    class Objective(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, batch):
            return self.model(batch[0]).pow(2).mean()

    data = TensorDataset(torch.randn(8, 2))
    with pytest.raises(OSError, match=r"could not write .*checkpoint-1.*permission denied"):
        loop.train(
            Objective(),
            data,
            TrainParams(steps=2, batch_size=4, learning_rate=0.1, checkpoint_every=1),
            checkpoint_dir=tmp_path / "ck",
        )
    assert not list((tmp_path / "ck").glob("checkpoint*"))  # no checkpoint
    assert not list((tmp_path / "ck").glob(".*"))  # and no hidden half


def _raise(error):
    raise error
