"""Random access to a source's image bytes, by position in a fixed list of refs.

``iter_images`` streams a source once, in the source's order. A map-style training set
needs the opposite: the bytes of item ``i`` of a manifest, in whatever order a seeded
sampler asks, from any DataLoader worker. ``byte_reader(source, refs)`` gives that:

- folder: the file ``<folder>/<ref>`` (a regular file only: never a FIFO or device);
- webdataset: img2dataset's tar shards read **in place**. Ingest records where each image's
  bytes lie (the manifest's ``offset``/``length``); items without that are found by scanning
  their shards' headers once. The index is compact arrays of (shard, offset, size), and an
  item is one ``os.pread`` in the uncompressed tar. Nothing is copied or re-sharded;
- parquet: the row's value, reading one row group at a time, sized from its page headers
  first (``parquet_pages``), and keeping it while it is small (``GROUP_CACHE_BYTES``).

Like ``iter_images``, readers read back what screening kept (``reading.VERIFIED``): no item
further than the size the manifest records for it (its ``length``; the default
``ingest.max_file_bytes`` where there is none), and never a FIFO or a device, a shard
swapped for one included; the caller checks each item's sha256.

Readers hold their index in numpy arrays (no Python object per image, so forked workers do
not copy it page by page), open files lazily in each process, and are picklable. Per-image
memory: the ref (folder), or 16 bytes plus the shard number (webdataset), or 8 bytes
(parquet).
"""

from __future__ import annotations

import os
import stat
import tarfile
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vlv_pipeline.errors import InputError
from vlv_pipeline.imaging.folder_source import FolderSource
from vlv_pipeline.imaging.parquet_pages import leaf_columns, plan_row_group
from vlv_pipeline.imaging.parquet_source import ParquetSource, open_parquet
from vlv_pipeline.imaging.reading import (
    _FLAGS,
    VERIFIED,
    Refusal,
    file_kind,
    read_back,
    read_back_cap,
    read_file,
    ref_path,
)
from vlv_pipeline.imaging.sources import ImageSource
from vlv_pipeline.imaging.webdataset_source import WebDatasetSource

MAX_OPEN_FILES = 32  # per process: shards or parquet files kept open between reads
#: A parquet row group whose image column decodes to more than this is not kept in memory
#: between reads (per process); only the batch that held the item is.
GROUP_CACHE_BYTES = 256 << 20

#: ``(offset, length)`` of an item as the manifest records it: ``offset`` where its bytes lie
#: in a plain tar shard, ``length`` the bytes screening read (either may be None).
Location = tuple[int | None, int | None]


class ByteReader(ABC):
    """The bytes of ``refs[i]`` for ``i`` in ``range(len(reader))``; ``locations``
    (``manifest_locations``) cap each item at its recorded size."""

    def __init__(
        self,
        source: ImageSource,
        refs: Sequence[str],
        locations: Sequence[Location | None] | None = None,
    ) -> None:
        self.source = source
        self.size = len(refs)
        self.sizes = _sizes(refs, locations)
        self._index(refs, locations)

    def __len__(self) -> int:
        return self.size

    @abstractmethod
    def _index(self, refs: Sequence[str], locations: Sequence[Location | None] | None) -> None:
        """Where each ref is found, kept in numpy arrays (see the module docstring)."""

    @abstractmethod
    def read(self, i: int) -> bytes:
        """Raises ``ValueError`` naming the source and the item when it cannot be read."""

    def _refused(self, ref: str, refusal: Refusal) -> InputError:
        """The error for item ``ref``, which its read-back policy refuses."""
        reason, detail = refusal
        return InputError(f"{self.source!r}: cannot read {ref!r}: {reason}: {detail}")

    def __getstate__(self) -> dict[str, Any]:  # open files stay in the process that opened them
        state = dict(self.__dict__)
        state.pop("_files", None)
        return state


def _fixed_width(refs: Sequence[str]) -> np.ndarray:
    return np.array([r.encode("utf-8") for r in refs], dtype=np.bytes_)


def _sizes(refs: Sequence[str], locations: Sequence[Location | None] | None) -> np.ndarray:
    """The recorded size of each ref, -1 where none is recorded."""
    if locations is None:
        return np.full(len(refs), -1, dtype=np.int64)
    return np.array(
        [-1 if loc is None or loc[1] is None else int(loc[1]) for loc in locations],
        dtype=np.int64,
    )


def _size(sizes: np.ndarray, i: int) -> int | None:
    return None if sizes[i] < 0 else int(sizes[i])


class FolderReader(ByteReader):
    source: FolderSource

    def _index(self, refs: Sequence[str], locations: Sequence[Location | None] | None) -> None:
        self.root = Path(self.source.path)
        self.refs = _fixed_width(refs)

    def read(self, i: int) -> bytes:
        ref = self.refs[i].decode("utf-8")
        path = ref_path(self.root, ref)
        if path is None:
            raise InputError(f"{self.source!r}: cannot read {ref!r}: not a path inside the folder")
        # what ingest kept, no larger than it was, checked against its sha256 by the caller
        data, refused = read_file(path, read_back(_size(self.sizes, i)))
        if data is None:
            raise self._refused(ref, refused)
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
            fd = _open_regular(path)
            while len(self.files) >= self.limit:
                os.close(self.files.popitem(last=False)[1])
        self.files[path] = fd
        return os.pread(fd, length, offset)


class NotAFile(OSError):
    """A path that should be a regular file (a shard) is not."""


def _open_regular(path: str) -> int:
    """A descriptor of the regular file ``path``; a FIFO or device is refused without
    blocking (a shard swapped for a FIFO after ingest would block a plain open)."""
    fd = os.open(path, _FLAGS)
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise NotAFile(f"{file_kind(mode)}, not a regular file: never read")
    return fd


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

    source: WebDatasetSource

    def _index(self, refs: Sequence[str], locations: Sequence[Location | None] | None) -> None:
        source = self.source
        self.refs = _fixed_width(refs)  # self.sizes: the cap of an item found by a scan
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
            if location is None or location[0] is None or location[1] is None:
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
            fd = _open_regular(path)
            with os.fdopen(fd, "rb") as file, tarfile.open(fileobj=file, mode="r:") as tar:
                for member in tar:  # headers only; data is skipped
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
        length = int(self.length[i])
        policy = read_back(_size(self.sizes, i))
        if length > policy.max_bytes:  # found by a scan of a shard that changed
            ref = self.refs[i].decode("utf-8")
            raise self._refused(ref, policy.too_large(length, "a tar member of "))
        try:
            data = files.read(path, int(self.offset[i]), length)
        except OSError as error:
            raise InputError(f"{self.source!r}: cannot read shard {path}: {error}") from error
        if len(data) != self.length[i]:
            raise InputError(f"webdataset shard {path} is shorter than its index: re-run ingest")
        return data


class ParquetReader(ByteReader):
    """Rows of a parquet source, a row group at a time: sized from its page headers before
    it is read (a group with a page over the cap is refused unread), read in batches under
    the cap, and kept in memory (one per process) when it decodes to at most
    ``GROUP_CACHE_BYTES``, else only the batch that held the row."""

    source: ParquetSource

    def _index(self, refs: Sequence[str], locations: Sequence[Location | None] | None) -> None:
        source = self.source
        self.rows = np.array([int(r) for r in refs], dtype=np.int64)
        self.cap = read_back_cap(_size(self.sizes, i) for i in range(len(refs)))
        with open_parquet(source.path, self.cap) as (_, parquet):
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
        row = int(self.rows[i])
        group = int(np.searchsorted(self.starts, row, side="right") - 1)
        offset = row - int(self.starts[group])
        batches = self.__dict__.get("_batches")
        if self.__dict__.get("_group") != group or _holding(batches, offset) is None:
            self._group, self._batches = None, None  # let the old group go first
            batches = self._load(group, offset, row)
            self._group, self._batches = group, batches
        start, column = _holding(batches, offset)
        policy = read_back(_size(self.sizes, i), VERIFIED)
        (value,) = self.source.cells(column.slice(offset - start, 1), policy)
        data, rejected = self.source.image_bytes(value, policy)
        if data is None:
            reason, detail = rejected
            raise InputError(f"{self.source!r}: row {row} is now {reason}: {detail}")
        return data

    def _load(self, group: int, offset: int, row: int) -> list[tuple[int, Any]]:
        """``[(first row in the group, column)]``: the whole group's batches while they decode
        to at most ``GROUP_CACHE_BYTES``, else just the one holding ``offset``."""
        column = self.source.image_column
        with open_parquet(self.source.path, self.cap) as (fd, parquet):
            leaves = leaf_columns(parquet.metadata.schema, [column])
            plan = plan_row_group(
                fd, parquet.metadata, group, int(self.starts[group]), leaves, self.cap, 1 << 16
            )
            if plan.refusal is not None:
                reason, detail = plan.refusal
                raise InputError(f"{self.source!r}: row {row} is now {reason}: {detail}")
            kept: list[tuple[int, Any]] = []
            hit = None
            total = position = 0
            batches = parquet.iter_batches(
                batch_size=plan.batch_rows, columns=[column], row_groups=[group]
            )
            for batch in batches:
                values = batch.column(0)
                if position <= offset < position + len(values):
                    hit = (position, values)
                total += values.nbytes
                if total <= GROUP_CACHE_BYTES:
                    kept.append((position, values))
                elif hit is not None:
                    return [hit]
                else:
                    kept = []
                position += len(values)
        if hit is None:
            raise InputError(f"{self.source!r}: row {row} is not in row group {group}")
        return kept if total <= GROUP_CACHE_BYTES else [hit]

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state.pop("_group", None)
        state.pop("_batches", None)
        return state


def _holding(batches, offset: int):
    """The ``(start, column)`` of ``batches`` that holds row ``offset`` of its group."""
    for start, column in batches or ():
        if start <= offset < start + len(column):
            return start, column
    return None


_READERS: dict[type[ImageSource], type[ByteReader]] = {
    FolderSource: FolderReader,
    WebDatasetSource: TarReader,
    ParquetSource: ParquetReader,
}


def byte_reader(
    source: ImageSource,
    refs: Sequence[str],
    locations: Sequence[Location | None] | None = None,
) -> ByteReader:
    """A random-access reader of ``refs`` (a manifest's ``source`` column) in ``source``;
    ``locations`` (``manifest_locations``) cap each item at its recorded size, and spare tar
    shards a scan."""
    for kind, reader in _READERS.items():
        if isinstance(source, kind):
            return reader(source, refs, locations)
    raise TypeError(f"no random access for {type(source).__name__}")


def manifest_locations(rows) -> list[Location | None] | None:
    """The manifest rows' ``(offset, length)``: ``offset`` where ingest found the bytes in a
    plain tar (else None), ``length`` the bytes it read (None for a row that has neither);
    None for a manifest written before ingest recorded them."""
    if "offset" not in rows.columns or "length" not in rows.columns:
        return None
    import pandas as pd

    def number(value) -> int | None:
        return None if pd.isna(value) else int(value)

    return [
        None if pd.isna(offset) and pd.isna(length) else (number(offset), number(length))
        for offset, length in zip(rows["offset"].tolist(), rows["length"].tolist(), strict=True)
    ]
