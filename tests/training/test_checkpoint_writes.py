"""The training loop writes ``checkpoint-<step>`` as every other writer does (issue 26, review
of item 7): a hidden temporary naming its writer, flushed to disk, renamed into place, a
checkpoint already there kept until the new one is whole; temporaries of any step that no
live writer will finish are removed."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest
from accelerate import Accelerator

from vlv_pipeline import files
from vlv_pipeline.errors import UnwritableError
from vlv_pipeline.training import run_folders


@pytest.fixture(scope="module")
def accelerator() -> Accelerator:
    return Accelerator(cpu=True)


def _save(accelerator, directory: Path, step: int, seconds: float = 1.0) -> None:
    run_folders.save_checkpoint(
        accelerator, directory, step, [{"step": step}], keep=3, seconds=seconds
    )


def _dead_pid() -> int:
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def _age(path: Path, seconds: float) -> None:
    then = time.time() - seconds
    for p in [path, *path.rglob("*")]:
        os.utime(p, (then, then))


def test_the_checkpoint_is_flushed_and_renamed_from_a_named_temporary(
    tmp_path, accelerator, monkeypatch
):
    renamed, flushed = [], []
    real_replace, real_fsync = os.replace, os.fsync

    def replace(src, dst, *args, **kwargs):
        renamed.append((Path(src).name, Path(dst).name))
        return real_replace(src, dst, *args, **kwargs)

    def fsync(descriptor):
        flushed.append(Path(os.readlink(f"/proc/self/fd/{descriptor}")).name)
        return real_fsync(descriptor)

    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(os, "fsync", fsync)
    _save(accelerator, tmp_path, 1)
    monkeypatch.undo()
    (source,) = [src for src, dst in renamed if dst == "checkpoint-1"]
    assert source.startswith(f".checkpoint-1.tmp-{files.MACHINE}-{os.getpid()}-"), source
    written = {p.name for p in (tmp_path / "checkpoint-1").rglob("*") if p.is_file()}
    assert "history.json" in written and written <= set(flushed), (written, flushed)
    assert run_folders.list_checkpoints(tmp_path) == [(1, tmp_path / "checkpoint-1")]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-1"]


def test_stale_temporaries_of_any_step_are_removed_and_live_ones_kept(tmp_path, accelerator):
    stale = [
        tmp_path / f".checkpoint-3.tmp-{files.MACHINE}-{_dead_pid()}-0123abcd",
        tmp_path / ".tmp-checkpoint-2",  # the name before temporaries named their writer
        tmp_path / ".checkpoint-4.tmp-otherhost.4026531836-77-0123abcd",  # untouched 2 hours
    ]
    live = [
        tmp_path / f".checkpoint-9.tmp-{files.MACHINE}-{os.getppid()}-89abcdef",
        tmp_path / ".checkpoint-5.tmp-otherhost.4026531836-77-89abcdef",  # recent
    ]
    for folder in stale + live:
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"half")
    for folder in stale[1:]:
        _age(folder, 2 * 3600)
    _save(accelerator, tmp_path, 6)
    assert not any(p.exists() for p in stale)
    assert all(p.exists() for p in live)


def test_a_checkpoint_saved_again_is_kept_until_the_new_one_is_in_place(
    tmp_path, accelerator, monkeypatch
):
    _save(accelerator, tmp_path, 5, seconds=1.0)
    real = os.replace

    def full(src, dst, *args, **kwargs):
        if Path(src).name.startswith(".checkpoint-5.tmp-"):
            raise OSError(28, "No space left on device")
        return real(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", full)
    with pytest.raises(UnwritableError, match=r"could not write .*checkpoint-5.*disk is full"):
        _save(accelerator, tmp_path, 5, seconds=2.0)
    monkeypatch.undo()
    record = json.loads((tmp_path / "checkpoint-5" / "history.json").read_text())
    assert record["seconds"] == 1.0  # the previous one, whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-5"]


def test_a_checkpoint_a_killed_swap_left_aside_is_put_back(tmp_path, accelerator):
    _save(accelerator, tmp_path, 5)
    backup = tmp_path / f".checkpoint-5.old-{files.MACHINE}-{_dead_pid()}-0123abcd"
    os.replace(tmp_path / "checkpoint-5", backup)  # killed between the two renames
    _save(accelerator, tmp_path, 6)
    assert [step for step, _ in run_folders.list_checkpoints(tmp_path)] == [5, 6]
    assert not backup.exists()
