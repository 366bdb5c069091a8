"""Shared by the dataset tests: a disk that fills up partway through a write."""

from __future__ import annotations

import errno

import fsspec.implementations.local
import pytest


class FullDiskFile:
    """A file on a disk with ``room`` bytes left: a write past them writes what fits, then
    fails with ENOSPC, and so does closing it afterwards (flushing what is buffered), as on a
    real full disk."""

    def __init__(self, file, room: int):
        self._file, self._room = file, room

    def write(self, data):
        if len(data) > self._room:
            self._file.write(data[: self._room])
            self._file.flush()
            self._room = 0
            raise OSError(errno.ENOSPC, "No space left on device")
        self._room -= len(data)
        return self._file.write(data)

    def close(self):
        self._file.close()
        if self._room == 0:
            raise OSError(errno.ENOSPC, "No space left on device")

    def __getattr__(self, name):
        return getattr(self._file, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


@pytest.fixture
def full_disk(monkeypatch):
    """``full_disk(room)``: from now on, every file a dataset opens for writing (through
    fsspec's local file system, as kedro-datasets and Hugging Face ``datasets`` do) has
    ``room`` bytes left. ``monkeypatch.undo()`` frees the disk."""

    def fill_after(room: int) -> None:
        real_open = open

        def open_on_a_full_disk(path, mode="r", *args, **kwargs):
            file = real_open(path, mode, *args, **kwargs)
            return FullDiskFile(file, room) if ("w" in mode or "a" in mode) else file

        monkeypatch.setattr(
            fsspec.implementations.local, "open", open_on_a_full_disk, raising=False
        )

    return fill_after
