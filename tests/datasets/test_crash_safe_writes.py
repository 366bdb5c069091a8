"""Writes that survive a crash (issue 26, review of items 6 and 7): a folder replacing another
is swapped through a backup that no clean-up of temporaries removes and that the next load or
save puts back; every file a save writes, in a folder too, is flushed to disk before the
rename; clean-up never raises."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest
import torch
from kedro.io import DatasetError

from vlv_pipeline import files
from vlv_pipeline.datasets.atomic import MatplotlibDataset, ParquetDataset
from vlv_pipeline.datasets.image_source import ImageSourceDataset
from vlv_pipeline.datasets.model_directory import ModelDirectoryDataset
from vlv_pipeline.datasets.shard_store import LatentCache
from vlv_pipeline.models.probe import AttributeProbe

PROBE = "vlv_pipeline.models.probe.AttributeProbe"
FP = {"weights_sha256": "a", "resolution": None}


def _probe(seed: int) -> AttributeProbe:
    torch.manual_seed(seed)
    return AttributeProbe(image_size=16, width=4, hidden=8)


def _same(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _figures(value: float, n: int = 2) -> dict:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = {}
    for i in range(n):
        figure, axes = plt.subplots(figsize=(1, 1))
        axes.imshow([[value, 1 - value], [0.5, value]])
        out[f"grid_{i}.png"] = figure
    return out


def _images(color: int, n: int = 2) -> dict:
    from PIL import Image

    return {f"train/{i}.png": Image.new("RGB", (8, 8), (color, i, 0)) for i in range(n)}


# --------------------------------------------------------------------------- a crash mid-swap

# The process that dies between the swap's two renames: os.replace moving the finished
# temporary into place ends the process (os._exit: no clean-up, no finally).
DYING_SAVE = textwrap.dedent(
    """
    import os, sys
    from pathlib import Path
    sys.path.insert(0, sys.argv[1])
    import test_crash_safe_writes as t

    kind, target = sys.argv[2], Path(sys.argv[3])
    real = os.replace

    def replace(src, dst, *args, **kwargs):
        if Path(src).name.startswith(f".{target.name}.tmp-"):
            os._exit(3)  # killed between the two renames
        return real(src, dst, *args, **kwargs)

    os.replace = replace
    t.save(kind, target, new=True)
    os._exit(0)
    """
)


def _dataset(kind: str, target: Path):
    if kind == "model_directory":
        return ModelDirectoryDataset(filepath=str(target), load_class=PROBE)
    if kind == "image_source":
        return ImageSourceDataset(kind="folder", path=str(target), writable=True)
    return MatplotlibDataset(filepath=str(target))


def save(kind: str, target: Path, new: bool) -> None:
    """What each kind saves: the previous (``new=False``) or the next version."""
    data = {
        "model_directory": lambda: _probe(1 if new else 0),
        "image_source": lambda: _images(200 if new else 10, n=3 if new else 2),
        "matplotlib": lambda: _figures(0.9 if new else 0.1, n=3 if new else 2),
    }[kind]()
    _dataset(kind, target).save(data)


def _previous_is_there(kind: str, target: Path) -> None:
    if kind == "model_directory":
        assert _same(_dataset(kind, target).load(), _probe(0))
    elif kind == "image_source":
        dataset = _dataset(kind, target)
        source = dataset.load()
        assert dataset.exists()
        assert sorted(r.ref for r in source.iter_records()) == ["train/0.png", "train/1.png"]
    else:
        assert sorted(p.name for p in target.iterdir()) == ["grid_0.png", "grid_1.png"]


def _die_mid_swap(kind: str, target: Path) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), *sys.path])}
    run = subprocess.run(
        [sys.executable, "-c", DYING_SAVE, str(Path(__file__).parent), kind, str(target)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 3, run.stderr[-3000:]
    assert not target.exists()  # the previous was moved aside, the new not yet in place
    (backup,) = target.parent.glob(f".{target.name}.old-*")  # a backup, not a temporary
    assert not files.is_stale(backup)


KINDS = ["model_directory", "image_source", "matplotlib"]


@pytest.mark.parametrize("kind", KINDS)
def test_a_load_after_a_crash_between_the_two_renames_finds_the_previous(tmp_path, kind):
    target = tmp_path / "out"
    save(kind, target, new=False)
    _die_mid_swap(kind, target)
    if kind == "matplotlib":  # it cannot be loaded: its next save puts it back
        files.restore_backup(target)
    _previous_is_there(kind, target)
    assert not list(tmp_path.glob(".out.old-*"))


@pytest.mark.parametrize("kind", KINDS)
def test_a_failed_save_after_a_crash_between_the_two_renames_keeps_the_previous(
    tmp_path, monkeypatch, kind
):
    """The next save's sweep of stale temporaries must not take the previous folder with it."""
    target = tmp_path / "out"
    save(kind, target, new=False)
    _die_mid_swap(kind, target)
    assert list(tmp_path.glob(".out.tmp-*"))  # the dead process's finished temporary

    def fails(*args, **kwargs):
        raise RuntimeError("simulated failure")

    if kind == "model_directory":
        monkeypatch.setattr(AttributeProbe, "save_pretrained", fails)
    elif kind == "image_source":
        monkeypatch.setattr(ImageSourceDataset, "_write_images", fails)
    else:
        monkeypatch.setattr(MatplotlibDataset, "_write", fails)
    with pytest.raises(Exception, match="simulated failure"):
        save(kind, target, new=True)
    monkeypatch.undo()
    _previous_is_there(kind, target)
    assert not list(tmp_path.glob(".out.*"))  # the dead one's temporary swept, no backup left
    save(kind, target, new=True)  # and the next save works


def test_a_second_rename_that_fails_puts_the_previous_back(tmp_path, monkeypatch):
    target = tmp_path / "probe"
    dataset = ModelDirectoryDataset(filepath=str(target), load_class=PROBE)
    dataset.save(_probe(0))
    real = os.replace

    def full(src, dst, *args, **kwargs):
        if Path(src).name.startswith(".probe.tmp-"):
            raise OSError(28, "No space left on device")
        return real(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", full)
    with pytest.raises(DatasetError, match=r"could not write .*probe.*disk is full"):
        dataset.save(_probe(1))
    monkeypatch.undo()
    assert _same(dataset.load(), _probe(0))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["probe"]


def test_a_live_writers_backup_is_left_alone(tmp_path):
    """A backup whose writer still runs is its swap in progress: not put back, not removed."""
    target = tmp_path / "out"
    backup = target.with_name(f".out.old-{files.MACHINE}-{os.getppid()}-0123abcd")
    backup.mkdir()
    assert files.restore_backup(target) is None
    assert backup.exists() and not target.exists()


def test_a_backup_left_after_the_second_rename_goes_with_the_next_save(tmp_path):
    """Killed after the new folder was in place, before its backup was removed: the next
    save (or load) removes that backup, nobody's any more."""
    target = tmp_path / "probe"
    dataset = ModelDirectoryDataset(filepath=str(target), load_class=PROBE)
    dataset.save(_probe(0))
    dead = subprocess.Popen(["true"])
    dead.wait()
    left = target.with_name(f".probe.old-{files.MACHINE}-{dead.pid}-0123abcd")
    left.mkdir()
    (left / "config.json").write_text("{}")
    dataset.save(_probe(1))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["probe"]
    assert _same(dataset.load(), _probe(1))


# --------------------------------------------------------------------------- flushed to disk


@pytest.fixture
def fsynced(monkeypatch) -> list[str]:
    """The names of the files and folders every os.fsync flushed, in order."""
    seen: list[str] = []
    real = os.fsync

    def fsync(descriptor):
        seen.append(Path(os.readlink(f"/proc/self/fd/{descriptor}")).name)
        return real(descriptor)

    monkeypatch.setattr(os, "fsync", fsync)
    return seen


def test_a_folder_of_figures_is_flushed_file_by_file(tmp_path, fsynced):
    MatplotlibDataset(filepath=str(tmp_path / "grids")).save(_figures(0.5))
    assert {"grid_0.png", "grid_1.png"} <= set(fsynced), fsynced


def test_an_image_source_is_flushed_file_by_file(tmp_path, fsynced):
    ImageSourceDataset(kind="folder", path=str(tmp_path / "images"), writable=True).save(
        _images(10)
    )
    assert {"0.png", "1.png", "train"} <= set(fsynced), fsynced
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images"]


def test_the_cache_index_is_flushed_before_its_rename(tmp_path, fsynced):
    cache = LatentCache(tmp_path / "cache")
    cache.reset(FP)
    cache.add(["a"], torch.zeros(1, 4, 2, 2), torch.ones(1, 4, 2, 2))
    assert any(name.startswith(".index.json.tmp-") for name in fsynced), fsynced
    assert any(name.startswith(".shard-") for name in fsynced), fsynced


def test_a_model_directory_is_flushed_file_by_file(tmp_path, fsynced):
    ModelDirectoryDataset(filepath=str(tmp_path / "probe"), load_class=PROBE).save(_probe(0))
    written = {p.name for p in (tmp_path / "probe").rglob("*") if p.is_file()}
    assert written <= set(fsynced), (written, fsynced)


# --------------------------------------------------------------------------- clean-up


def test_a_temporary_that_cannot_be_read_is_left_and_the_save_goes_on(tmp_path, monkeypatch):
    """Another user's temporary (another machine's, so judged by age): reading its age fails
    with PermissionError; the sweep leaves it and the save still works."""
    root = tmp_path / "manifest.parquet"
    foreign = tmp_path / ".manifest.parquet.tmp-otherhost.4026531836-77-0123abcd.parquet"
    foreign.write_bytes(b"someone else's")
    real = files._last_touched

    def denied(path):
        if path.name == foreign.name:
            raise PermissionError(13, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(files, "_last_touched", denied)
    assert not files.is_stale(foreign)
    assert files.remove_stale([foreign]) == []
    ParquetDataset(filepath=str(root)).save(pd.DataFrame({"a": [1]}))
    assert ParquetDataset(filepath=str(root)).load()["a"].tolist() == [1]
    assert foreign.exists()


def test_a_temporary_that_cannot_be_removed_is_not_reported_removed(tmp_path, monkeypatch):
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = tmp_path / f".x.json.tmp-{files.MACHINE}-{dead.pid}-0123abcd.json"
    stale.write_text("{}")

    def cannot(self, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "unlink", cannot)
    assert files.remove_stale([stale]) == []
    monkeypatch.undo()
    assert files.remove_stale([stale]) == [stale] and not stale.exists()


def test_an_atomic_target_that_fails_leaves_nothing(tmp_path):
    final = tmp_path / "out.json"
    final.write_text(json.dumps({"old": 1}))
    with pytest.raises(DatasetError, match=r"could not write .*out\.json.*permission denied"):
        with files.atomic_target(final) as tmp:
            tmp.write_text("half")
            raise PermissionError(13, "Permission denied")
    assert json.loads(final.read_text()) == {"old": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]
