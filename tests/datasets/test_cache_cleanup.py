"""A cache write on a full disk fails with the project's message and leaves no temporary; a
rerun removes the temporaries that no live writer will finish (issue 26, item 7)."""

from __future__ import annotations

import errno
import os
import subprocess
import time

import pytest
import torch
from kedro.io import DatasetError

from vlv_pipeline.datasets.cache_extension import begin_extension
from vlv_pipeline.datasets.shard_store import LatentCache
from vlv_pipeline.files import MACHINE, is_stale, temporary_for

FP = {"weights_sha256": "a", "resolution": None}


def test_a_full_disk_while_writing_a_shard_gives_the_projects_message(
    tmp_path, monkeypatch, full_disk
):
    cache = LatentCache(tmp_path / "cache")
    cache.reset(FP)
    cache.add(["a"], torch.zeros(1, 4, 8, 8), torch.ones(1, 4, 8, 8))
    before = sorted(p.name for p in (tmp_path / "cache").iterdir())
    full_disk(room=700)
    with pytest.raises(DatasetError) as failed:  # not a raw OSError from the clean-up
        cache.add(["b", "c"], torch.zeros(2, 4, 8, 8), torch.ones(2, 4, 8, 8))
    monkeypatch.undo()
    message = str(failed.value)
    assert "could not write" in message and "disk is full" in message, message
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == before  # no temporary
    assert LatentCache(tmp_path / "cache").image_ids() == {"a"}


def _dead_pid() -> int:
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def _age(path, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then))


def test_a_rerun_removes_temporaries_that_no_live_writer_will_finish(tmp_path):
    cache_dir = tmp_path / "cache"
    LatentCache(cache_dir).reset(FP)
    name = "shard-0123456789ab.arrow"
    stale = {
        # the name temporaries had before they named their writer: by age only
        f".{name}.tmp": 2 * 3600,
        ".index.json.tmp-0123abcd": 2 * 3600,
        # this machine's process that is gone: at once
        f".{name}.tmp-{MACHINE}-{_dead_pid()}-0123abcd.arrow": 0,
        # another machine's, untouched for two hours
        f".{name}.tmp-otherhost.4026531836-77-0123abcd.arrow": 2 * 3600,
    }
    other = "shard-ba9876543210.arrow"
    live = {
        f".{other}.tmp": 60,  # recent: perhaps a writer of an older version, still running
        f".{name}.tmp-otherhost.4026531836-77-89abcdef.arrow": 60,  # another machine, recent
        f".{name}.tmp-{MACHINE}-{os.getppid()}-0123abcd.arrow": 2 * 3600,  # a live process here
    }
    for file, age in {**stale, **live}.items():
        (cache_dir / file).write_bytes(b"half")
        _age(cache_dir / file, age)
    assert [is_stale(cache_dir / file) for file in live] == [False] * len(live)

    cache = begin_extension(LatentCache(cache_dir), FP)  # what `kedro run --pipeline cache` does
    left = {p.name for p in cache_dir.iterdir() if p.name.startswith(".")}
    assert left == set(live)
    cache.add(["a"], torch.zeros(1, 4, 2, 2), torch.ones(1, 4, 2, 2))  # and it still works
    assert LatentCache(cache_dir).image_ids() == {"a"}


def test_a_temporary_keeps_the_suffix_and_names_its_writer(tmp_path):
    tmp = temporary_for(tmp_path / "grid.png")
    assert tmp.parent == tmp_path and tmp.name.startswith(".grid.png.tmp-")
    assert tmp.suffix == ".png" and f"-{os.getpid()}-" in tmp.name
    tmp.write_bytes(b"x")
    assert not is_stale(tmp)  # this process is alive


def test_a_save_removes_its_datasets_stale_temporaries_and_their_empty_versions(tmp_path):
    import pandas as pd
    from kedro.io import Version

    from vlv_pipeline.datasets.atomic import ParquetDataset
    from vlv_pipeline.datasets.model_directory import ModelDirectoryDataset
    from vlv_pipeline.models.probe import AttributeProbe

    root = tmp_path / "manifest.parquet"
    killed = (
        root
        / "2024-01-01T00.00.00.000Z"
        / f".manifest.parquet.tmp-{MACHINE}-{_dead_pid()}-0123abcd.parquet"
    )
    killed.parent.mkdir(parents=True)
    killed.write_bytes(b"PAR1 half")
    ParquetDataset(filepath=str(root), version=Version(None, None)).save(pd.DataFrame({"a": [1]}))
    assert not killed.parent.exists()  # the temporary and the version folder it was alone in
    assert len(list(root.iterdir())) == 1

    models = tmp_path / "probe"
    old_tmp = models / ".probe.tmp-0123456789ab"  # a model directory's temporary, before names
    (old_tmp / "sub").mkdir(parents=True)
    (old_tmp / "sub" / "model.safetensors").write_bytes(b"half")
    for path in (old_tmp / "sub" / "model.safetensors", old_tmp / "sub", old_tmp):
        _age(path, 2 * 3600)
    dataset = ModelDirectoryDataset(
        filepath=str(models),
        load_class="vlv_pipeline.models.probe.AttributeProbe",
        version=Version(None, None),
    )
    dataset.save(AttributeProbe(image_size=16, width=4, hidden=8))
    assert not old_tmp.exists() and not list(models.glob(".*"))


def test_a_full_disk_while_writing_the_index_leaves_no_unlisted_shard(tmp_path, monkeypatch):
    from pathlib import Path

    cache = LatentCache(tmp_path / "cache")
    cache.reset(FP)
    cache.add(["a"], torch.zeros(1, 4, 2, 2), torch.ones(1, 4, 2, 2))
    before = sorted(p.name for p in (tmp_path / "cache").iterdir())
    real = Path.write_text

    def full(self, *args, **kwargs):
        if self.name.startswith(".index"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", full)
    with pytest.raises(DatasetError, match=r"could not write .*index\.json.*disk is full"):
        cache.add(["b"], torch.zeros(1, 4, 2, 2), torch.ones(1, 4, 2, 2))
    monkeypatch.undo()
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == before
    assert cache.image_ids() == {"a"} and LatentCache(tmp_path / "cache").image_ids() == {"a"}
