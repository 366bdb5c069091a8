"""Random access to a source's image bytes, by position in a fixed list of refs.

``iter_images`` streams a source once, in the source's order. A map-style training set
needs the opposite: the bytes of item ``i`` of a manifest, in whatever order a seeded
sampler asks, from any DataLoader worker. ``byte_reader(source, refs)`` gives that:

- folder: the file ``<folder>/<ref>`` (a regular file only: never a FIFO or device);
- webdataset: img2dataset's tar shards read **in place**. Ingest records where each image's
  bytes lie (the manifest's ``offset``/``length``); items without that are found by scanning
  their shards' headers once. The index is compact arrays of (shard, offset, size), and an
  item is one ``os.pread`` in the uncompressed tar. Nothing is copied or re-sharded;
- parquet: the row's value, reading (and keeping) one row group at a time.

Readers hold their index in numpy arrays (no Python object per image, so forked workers do
not copy it page by page), open files lazily in each process, and are picklable. Per-image
memory: the ref (folder), or 16 bytes plus the shard number (webdataset), or 8 bytes
(parquet).
"""

from __future__ import annotations

import os
import tarfile
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vlv_pipeline.errors import InputError
from vlv_pipeline.imaging.reading import VERIFIED, read_file
from vlv_pipeline.imaging.sources import (
    FolderSource,
    ImageSource,
    ParquetSource,
    WebDatasetSource,
)

MAX_OPEN_FILES = 32  # per process: shards or parquet files kept open between reads


class ByteReader(ABC):
    """The bytes of ``refs[i]`` for ``i`` in ``range(len(reader))``."""

    def __init__(self, source: ImageSource, refs: Sequence[str]) -> None:
        self.source = source
        self.size = len(refs)

    def __len__(self) -> int:
        return self.size

    @abstractmethod
    def read(self, i: int) -> bytes:
        """Raises ``ValueError`` naming the source and the item when it cannot be read."""

    def __getstate__(self) -> dict[str, Any]:  # open files stay in the process that opened them
        state = dict(self.__dict__)
        state.pop("_files", None)
        return state


def _fixed_width(refs: Sequence[str]) -> np.ndarray:
    return np.array([r.encode("utf-8") for r in refs], dtype=np.bytes_)


class FolderReader(ByteReader):
    def __init__(self, source: FolderSource, refs: Sequence[str]) -> None:
        super().__init__(source, refs)
        self.root = Path(source.path)
        self.refs = _fixed_width(refs)

    def read(self, i: int) -> bytes:
        ref = self.refs[i].decode("utf-8")
        parts = ref.split("/")
        if any(part in ("", ".", "..") for part in parts):
            raise InputError(f"{self.source!r}: cannot read {ref!r}: not a path inside the folder")
        # what ingest kept, checked against its sha256 by the caller; never a FIFO or device
        data, refused = read_file(os.path.join(self.root, *parts), VERIFIED)
        if data is None:
            reason, detail = refused
            raise InputError(f"{self.source!r}: cannot read {ref!r}: {reason}: {detail}")
        return data


class _OpenFiles:
    """A small per-process LRU of open file descriptors, read with ``os.pread``.

    ``pread`` reads at an offset without moving a shared file position: a DataLoader worker
    forked from a process that already had the shard open shares that descriptor's
    position with its siblings, and seek-then-read would then race (it did, before this).
    Descriptors opened by another process (the parent, before a fork) are not reused.
    """

    def __init__(self, limit: int = MAX_OPEN_FILES) -> None:
        self.limit = limit
        self.pid = os.getpid()
        self.files: OrderedDict[str, int] = OrderedDict()

    def read(self, path: str, offset: int, length: int) -> bytes:
        if self.pid != os.getpid():  # inherited across a fork: the parent's descriptors
            self.pid, self.files = os.getpid(), OrderedDict()
        fd = self.files.pop(path, None)
        if fd is None:
            fd = os.open(path, os.O_RDONLY)
            while len(self.files) >= self.limit:
                os.close(self.files.popitem(last=False)[1])
        self.files[path] = fd
        return os.pread(fd, length, offset)


def _shard_of(ref: str, names: set[str]) -> str:
    """The shard part of a webdataset ref ``<shard>/<member>`` (shard names may hold '/')."""
    start = 0
    while (cut := ref.find("/", start)) != -1:
        if ref[:cut] in names:
            return ref[:cut]
        start = cut + 1
    raise KeyError(ref)


class TarReader(ByteReader):
    """img2dataset tar shards, read in place through an index of member offsets.

    ``locations`` (from the manifest: ingest records where each image's bytes lie while it
    streams the shards) make the index free; refs without one are found by scanning their
    shards' headers once.
    """

    def __init__(
        self,
        source: WebDatasetSource,
        refs: Sequence[str],
        locations: Sequence[tuple[int, int] | None] | None = None,
    ) -> None:
        super().__init__(source, refs)
        paths = dict(source.shards())
        names = set(paths)
        shard_of: list[str] = []
        for ref in refs:
            try:
                shard_of.append(_shard_of(ref, names))
            except KeyError:
                raise InputError(
                    f"{source!r}: {ref!r} is in none of its shards; re-run ingest if the "
                    "shards moved"
                ) from None
        used = sorted(set(shard_of))
        numbers = {name: number for number, name in enumerate(used)}
        self.paths = [os.fspath(paths[name]) for name in used]
        self.shard = np.array([numbers[name] for name in shard_of], dtype=np.int32)
        self.offset = np.full(len(refs), -1, dtype=np.int64)
        self.length = np.zeros(len(refs), dtype=np.int64)
        wanted: dict[str, dict[str, int]] = {}  # shard -> member -> position, to scan for
        for position, (ref, shard) in enumerate(zip(refs, shard_of, strict=True)):
            location = locations[position] if locations is not None else None
            if location is None:
                wanted.setdefault(shard, {})[ref[len(shard) + 1 :]] = position
            else:
                self.offset[position], self.length[position] = location
        for name, members in sorted(wanted.items()):
            self._scan(numbers[name], self.paths[numbers[name]], members)
        missing = [ref for ref, offset in zip(refs, self.offset, strict=True) if offset < 0]
        if missing:
            raise InputError(
                f"{source!r}: {len(missing)} manifest item(s) are not in their shard, e.g. "
                f"{missing[:3]}; re-run ingest if the shards changed"
            )

    def _scan(self, number: int, path: str, members: dict[str, int]) -> None:
        try:
            with tarfile.open(path, mode="r:") as tar:  # headers only; data is skipped
                for member in tar:
                    position = members.get(member.name)
                    if position is not None and member.isfile():
                        self.shard[position] = number
                        self.offset[position] = member.offset_data
                        self.length[position] = member.size
        except (tarfile.TarError, OSError, EOFError) as error:
            raise InputError(
                f"webdataset shard {path} cannot be indexed for random access ({error}). "
                "Training reads shards in place and needs plain (uncompressed) tar files, as "
                "img2dataset writes them: decompress the shard, or re-run ingest if it changed"
            ) from error

    def read(self, i: int) -> bytes:
        files = self.__dict__.setdefault("_files", _OpenFiles())
        path = self.paths[self.shard[i]]
        try:
            data = files.read(path, int(self.offset[i]), int(self.length[i]))
        except OSError as error:
            raise InputError(f"{self.source!r}: cannot read shard {path}: {error}") from error
        if len(data) != self.length[i]:
            raise InputError(f"webdataset shard {path} is shorter than its index: re-run ingest")
        return data


class ParquetReader(ByteReader):
    """Rows of a parquet source; the last row group read stays in memory (one per process)."""

    def __init__(self, source: ParquetSource, refs: Sequence[str]) -> None:
        import pyarrow.parquet as pq

        super().__init__(source, refs)
        self.rows = np.array([int(r) for r in refs], dtype=np.int64)
        with pq.ParquetFile(source.path) as parquet:
            sizes = [parquet.metadata.row_group(g).num_rows for g in range(parquet.num_row_groups)]
            if source.image_column not in parquet.schema_arrow.names:
                raise InputError(f"parquet source {source.path}: no column {source.image_column!r}")
        self.starts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        if len(self.rows) and (self.rows.min() < 0 or self.rows.max() >= self.starts[-1]):
            raise InputError(
                f"parquet source {source.path} has {self.starts[-1]} rows; the manifest names "
                "rows beyond that: re-run ingest if the file changed"
            )

    def read(self, i: int) -> bytes:
        import pyarrow.parquet as pq

        row = int(self.rows[i])
        group = int(np.searchsorted(self.starts, row, side="right") - 1)
        if self.__dict__.get("_group") != group:
            with pq.ParquetFile(self.source.path) as parquet:
                column = parquet.read_row_group(group, columns=[self.source.image_column])
            self._group, self._values = group, column.column(0)
        data, rejected = self.source._image_bytes(self._values[row - self.starts[group]].as_py())
        if data is None:
            raise InputError(f"{self.source!r}: row {row} is now {rejected}")
        return data

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state.pop("_group", None)
        state.pop("_values", None)
        return state


_READERS: dict[type[ImageSource], type[ByteReader]] = {
    FolderSource: FolderReader,
    WebDatasetSource: TarReader,
    ParquetSource: ParquetReader,
}


def byte_reader(
    source: ImageSource,
    refs: Sequence[str],
    locations: Sequence[tuple[int, int] | None] | None = None,
) -> ByteReader:
    """A random-access reader of ``refs`` (a manifest's ``source`` column) in ``source``;
    ``locations`` (the manifest's ``offset``/``length``) spare tar shards a scan."""
    if isinstance(source, WebDatasetSource):
        return TarReader(source, refs, locations)
    for kind, reader in _READERS.items():
        if isinstance(source, kind):
            return reader(source, refs)
    raise TypeError(f"no random access for {type(source).__name__}")


def manifest_locations(rows) -> list[tuple[int, int] | None] | None:
    """The manifest rows' ``(offset, length)`` where ingest recorded one (None elsewhere);
    None for a manifest written before ingest recorded them."""
    if "offset" not in rows.columns or "length" not in rows.columns:
        return None
    import pandas as pd

    return [
        None if pd.isna(offset) else (int(offset), int(length))
        for offset, length in zip(rows["offset"].tolist(), rows["length"].tolist(), strict=True)
    ]
