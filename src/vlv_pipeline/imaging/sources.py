"""Image sources: a folder, a single image file, a parquet file, or webdataset (img2dataset)
tar shards.

A source is cheap to create and can be iterated any number of times. ``iter_records``
streams one small ``Record`` at a time (one file's bytes, never the whole source), in a
deterministic order. Every input item yields exactly one record per image member, including
items the source itself rejects (``data is None`` and ``rejected`` set), so that every
input gets a verdict.

``Record.ref`` finds the item again:

- folder: the path relative to the folder, posix (``train/000000.png``);
- file: the file's name (``photo.jpg``);
- parquet: the row index (``"17"``);
- webdataset: ``<shard>/<member>`` (``00000.tar/000000042.jpg``), the shard named relative
  to the directory (or common parent of the glob) it was found in.

``iter_records(part=(k, n))`` streams only the k-th of n contiguous blocks of the source's
units (files of a folder, row groups of a parquet file, tar shards), so that n processes can
screen one source together: the blocks in order are the whole stream, in its order.

``iter_records(policy=...)`` says what may be read (``reading.ReadPolicy``: links, paths
outside the source's folder, a byte cap per file). What the policy refuses still gets its
record, with its reason, and is never opened or read: every entry under a folder (hidden
ones, links, FIFOs, names that are not UTF-8) gets exactly one record. A parquet row group
is sized from its page headers before it is read (``parquet_pages.py``): one with a page
over the cap gives each of its rows a ``too_large`` record, unread, and the others are read
a few rows at a time, so a batch stays under the cap.

A read-back (``iter_images``) passes ``only`` as a mapping of each ref to the size
screening recorded for it: an item is then read no further than that size.
"""

from __future__ import annotations

import glob
import hashlib
import inspect
import json
import logging
import os
import stat
import tarfile
import zlib
from abc import ABC, abstractmethod
from collections.abc import Container, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, ClassVar

import pandas as pd
from PIL import Image

from vlv_pipeline.distributed import block
from vlv_pipeline.errors import InputError, MissingInputError, ParameterError
from vlv_pipeline.imaging.checks import (
    IMAGE_EXTENSIONS,
    WHITE,
    ImageRejected,
    Reason,
    decode_normalised,
)
from vlv_pipeline.imaging.parquet_pages import GroupPlan, leaf_columns, plan_row_group
from vlv_pipeline.imaging.reading import (
    _FLAGS,
    SCREENING,
    VERIFIED,
    ReadPolicy,
    Refusal,
    broken_link,
    file_kind,
    inside,
    link_refused,
    mib,
    not_a_file,
    read_back,
    read_back_cap,
    read_file,
    ref_path,
    safe_name,
    unreadable,
)
from vlv_pipeline.imaging.splits import canonical_split, split_from_dirname

logger = logging.getLogger(__name__)

_WDS_META_EXTENSIONS = frozenset({"txt", "json", "cls"})
#: LAION's watermark probability: a field of img2dataset's ``key.json`` (with
#: ``--save_additional_columns`` naming it) or a parquet column (``ingest.watermark_below``)
WATERMARK_FIELD = "pwatermark"


@dataclass(frozen=True, slots=True)
class Record:
    """One input item. ``data is None`` when the source rejected it (see ``rejected``)."""

    ref: str
    data: bytes | None
    caption: str | None = None
    split: str | None = None
    rejected: tuple[Reason, str] | None = None
    # (offset, length) of the bytes in the file, where a seek reaches them (plain tar shards):
    # ingest keeps it in the manifest, so training reads the item without scanning the shard
    location: tuple[int, int] | None = None
    # LAION's pwatermark from the item's metadata, when it carries one (screening only)
    watermark: float | None = None


def _policy_for(policy: ReadPolicy, only: Container[str] | None, ref: str) -> ReadPolicy:
    """``policy`` for one ref: a read-back's ``only`` maps each ref to the size screening
    recorded for it (None where it recorded none)."""
    if isinstance(only, Mapping):
        return read_back(only.get(ref), policy)
    return policy


def _is_image_name(name: str) -> bool:
    return PurePosixPath(name).suffix.lower() in IMAGE_EXTENSIONS


def _watermark(value: object) -> float | None:
    """A watermark probability from metadata: a finite number, else None (not known)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    value = float(value)
    return value if value == value and abs(value) != float("inf") else None


def _clean_caption(value: object) -> str | None:
    if value is None or (isinstance(value, float) and value != value):
        return None
    text = str(value).strip()
    return text or None


class ImageSource(ABC):
    """Base class of all sources; see the module docstring."""

    kind: ClassVar[str]

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)

    @abstractmethod
    def iter_records(
        self,
        only: Container[str] | None = None,
        part: tuple[int, int] | None = None,
        policy: ReadPolicy | None = None,
    ) -> Iterator[Record]:
        """Stream records in a stable order.

        Args:
            only: if given, records whose ``ref`` is not in it may be skipped without
                reading their bytes (used by ``iter_images``).
            part: ``(k, n)``: only the k-th of n contiguous blocks of the source's units.
            policy: what may be read (default ``reading.SCREENING``: no links, nothing
                outside the source's folder, at most 64 MiB a file).
        """

    @abstractmethod
    def exists(self) -> bool:
        """Whether the source's files are there."""

    def options(self) -> dict[str, Any]:
        """The kind-specific options this source was created with."""
        return {}

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "path": self.path, **self.options()}

    def __iter__(self) -> Iterator[Record]:
        return self.iter_records()

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.describe().items() if k != "kind")
        return f"{type(self).__name__}({args})"

    def iter_images(
        self,
        manifest: pd.DataFrame,
        resolution: int | None = None,
        background: Sequence[int] = WHITE,
    ) -> Iterator[tuple[str, Image.Image]]:
        """See the module-level ``iter_images``."""
        return iter_images(self, manifest, resolution, background)


# --------------------------------------------------------------------------- folder


def _read_captions_table(path: Path) -> pd.DataFrame:
    suffix = path.suffix.lower()
    if suffix in (".parquet", ".pq"):
        import pyarrow.parquet as pq

        names = set(pq.read_schema(path).names)
        columns = [c for c in ("file", "caption", "split") if c in names]
        table = pd.read_parquet(path, columns=columns)
    elif suffix == ".csv":
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    elif suffix in (".jsonl", ".ndjson"):
        table = pd.read_json(path, lines=True, dtype=False)
    else:
        raise InputError(f"captions table {path}: use .parquet, .csv or .jsonl, not {suffix!r}")
    missing = [c for c in ("file", "caption") if c not in table.columns]
    if missing:
        raise InputError(
            f"captions table {path} lacks column(s) {missing}; has {list(table.columns)}"
        )
    return table


class FolderSource(ImageSource):
    """A directory tree of image files, with an optional captions table.

    Recursive, sorted, hidden files and folders skipped, symlinked folders not followed.
    The first path component ``train``/``val``/``valid``/``validation``/``test`` gives the
    split; a ``split`` column in the captions table wins over it.

    Args:
        path: the folder.
        captions: a parquet/csv/jsonl table with ``file`` (relative to the folder),
            ``caption`` and optionally ``split``. A relative path is looked up from the
            working directory, else from the folder and each folder above it (Kedro makes
            ``path`` absolute but not ``captions``, and a notebook's working directory is
            not the project root); it is resolved when first read, not when created.
    """

    kind = "folder"

    def __init__(self, path: str | os.PathLike[str], captions: str | None = None) -> None:
        super().__init__(path)
        self.captions = os.fspath(captions) if captions is not None else None

    def options(self) -> dict[str, Any]:
        return {"captions": self.captions} if self.captions is not None else {}

    def captions_path(self) -> Path | None:
        """Where the captions table is (see ``captions`` above); ``None`` without one."""
        if self.captions is None:
            return None
        given = Path(self.captions)
        if given.is_absolute() or given.exists():
            return given
        folder = Path(self.path).absolute()
        for base in (folder, *folder.parents):
            if (base / given).is_file():
                return base / given
        return given

    def exists(self) -> bool:
        captions = self.captions_path()
        return Path(self.path).is_dir() and (captions is None or captions.is_file())

    def _load_labels(self, captions: Path | None) -> dict[str, tuple[str | None, str | None]]:
        """``file -> (caption, split)``, read afresh on each pass (the table may change)."""
        if captions is None:
            return {}
        table = _read_captions_table(captions)
        splits = table["split"] if "split" in table.columns else [None] * len(table)
        labels: dict[str, tuple[str | None, str | None]] = {}
        for file, caption, split in zip(table["file"], table["caption"], splits, strict=True):
            key = PurePosixPath(str(file).replace("\\", "/")).as_posix()
            if key in labels:
                raise InputError(f"captions table {captions}: {key!r} twice")
            labels[key] = (_clean_caption(caption), canonical_split(split))
        return labels

    def _walk(
        self,
        directory: str,
        prefix: str,
        skip: str | None,
        policy: ReadPolicy,
        ancestors: frozenset[tuple[int, int]],
    ) -> Iterator[tuple[str, str, Refusal | None]]:
        """``(ref, path, refusal)`` for every entry under ``directory``, sorted; a refused
        entry (a folder too) is one row, and nothing under it is listed."""
        try:
            with os.scandir(directory) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as error:
            if not prefix:
                raise
            yield prefix[:-1], directory, (Reason.UNREADABLE, f"folder cannot be listed: {error}")
            return
        for entry in entries:
            escaped = safe_name(entry.name)
            if escaped is not None:
                detail = (
                    "the name is not valid UTF-8 (shown with \\x escapes): rename it to read it"
                )
                yield f"{prefix}{escaped}", entry.path, (Reason.BAD_NAME, detail)
                continue
            rel = f"{prefix}{entry.name}"
            try:
                row = self._entry(entry, rel, skip, policy, ancestors)
            except OSError as error:  # the entry vanished or cannot be looked at
                yield rel, entry.path, unreadable(error)
                continue
            if row is None:  # the captions table itself
                continue
            if isinstance(row, tuple):
                yield row
            else:
                yield from row

    def _entry(self, entry: os.DirEntry, rel: str, skip, policy, ancestors):
        """One entry: a row, the rows under a folder (an iterator), or None to skip it."""
        if skip is not None and entry.name == os.path.basename(skip):
            if os.path.realpath(entry.path) == skip:
                return None
        if entry.name.startswith("."):
            what = "folder" if entry.is_dir(follow_symlinks=False) else "file"
            return (
                rel,
                entry.path,
                (Reason.HIDDEN, f"a hidden {what} (name starts with '.'): not read"),
            )
        if entry.is_symlink():
            if not policy.follow_links:
                what = "folders" if os.path.isdir(entry.path) else "files"
                return rel, entry.path, link_refused(entry.path, what)
            try:
                target = os.stat(entry.path)
            except OSError as error:
                return rel, entry.path, broken_link(entry.path, error)
            if not stat.S_ISDIR(target.st_mode):
                return rel, entry.path, None  # read_file decides: a file, a FIFO, its size
            key = (target.st_dev, target.st_ino)
            if key in ancestors:
                detail = (
                    f"a symbolic link to {os.readlink(entry.path)}, a folder it lies in: "
                    "a loop, not followed"
                )
                return rel, entry.path, (Reason.BROKEN_LINK, detail)
            return self._walk(entry.path, f"{rel}/", skip, policy, ancestors | {key})
        if entry.is_dir(follow_symlinks=False):
            own = entry.stat(follow_symlinks=False)
            key = (own.st_dev, own.st_ino)
            return self._walk(entry.path, f"{rel}/", skip, policy, ancestors | {key})
        if not entry.is_file(follow_symlinks=False):
            return rel, entry.path, not_a_file(entry.stat(follow_symlinks=False).st_mode)
        return rel, entry.path, None

    def _label(self, ref: str, labels) -> tuple[str | None, str | None]:
        caption, split = labels.get(ref, (None, None))
        if split is None and "/" in ref:
            split = split_from_dirname(ref.split("/", 1)[0])
        return caption, split

    def _record(
        self, ref: str, path: str, refusal: Refusal | None, labels, policy: ReadPolicy
    ) -> Record:
        """``ref``'s record; ``policy`` is this item's (``_policy_for``)."""
        caption, split = self._label(ref, labels)
        if refusal is not None:
            return Record(ref, None, caption, split, refusal)
        if not _is_image_name(ref):
            suffix = PurePosixPath(ref).suffix or "(none)"
            detail = f"extension {suffix} is not an image type"
            return Record(ref, None, caption, split, (Reason.UNSUPPORTED_EXTENSION, detail))
        data, refusal = read_file(path, policy)
        return Record(ref, data, caption, split, refusal)

    def iter_records(
        self,
        only: Container[str] | None = None,
        part: tuple[int, int] | None = None,
        policy: ReadPolicy | None = None,
    ) -> Iterator[Record]:
        policy = policy or SCREENING
        root = Path(self.path)
        if not root.is_dir():
            raise MissingInputError(f"image folder {self.path!r} does not exist")
        captions = self.captions_path()
        labels = self._load_labels(captions)
        if only is not None and part is None and isinstance(only, Iterable):
            yield from self._named(root, only, labels, policy)
            return
        skip = os.path.realpath(captions) if captions is not None else None
        start = os.stat(root)
        entries: Iterable[tuple[str, str, Refusal | None]] = self._walk(
            os.fspath(root), "", skip, policy, frozenset({(start.st_dev, start.st_ino)})
        )
        if part is not None:  # the entry list (names only), then this part's block of it
            entries = list(entries)
            chosen = block(len(entries), part)
            entries = entries[chosen.start : chosen.stop]
        for ref, path, refusal in entries:
            if only is not None and ref not in only:
                continue
            yield self._record(ref, path, refusal, labels, _policy_for(policy, only, ref))

    def _named(
        self, root: Path, only: Iterable[str], labels, policy: ReadPolicy
    ) -> Iterator[Record]:
        """The records of the refs in ``only`` that exist, in the walk's order, without
        listing the folder (a later stage reading back what ingest kept)."""
        for ref in sorted({str(r) for r in only}, key=lambda r: r.split("/")):
            path = ref_path(root, ref)
            if path is None:
                continue  # no ref this source gives: not found
            if os.path.lexists(path):
                yield self._record(ref, path, None, labels, _policy_for(policy, only, ref))


# ----------------------------------------------------------------------------- file


class FileSource(ImageSource):
    """One image file, named by its path (``caption.source=photo.jpg``); its ref is the
    file's name.

    It is read as a folder's entry is (``FolderSource``): a symbolic link is refused unless
    the policy follows links (then a dangling one or a loop is a ``broken_link``), a FIFO or
    device is never opened, a file over the cap is refused from its size, a name that is
    not an image type is ``unsupported_extension``. The file is named on purpose, so a name
    starting with "." is read (a folder's walk skips hidden entries)."""

    kind = "file"

    def exists(self) -> bool:
        return os.path.lexists(self.path) and not os.path.isdir(self.path)

    def ref(self) -> str:
        name = os.path.basename(os.path.normpath(self.path))
        return safe_name(name) or name

    def iter_records(
        self,
        only: Container[str] | None = None,
        part: tuple[int, int] | None = None,
        policy: ReadPolicy | None = None,
    ) -> Iterator[Record]:
        policy = policy or SCREENING
        if not os.path.lexists(self.path):
            raise MissingInputError(f"image file {self.path!r} does not exist")
        if os.path.isdir(self.path):
            raise InputError(f"image source {self.path!r} is a folder: use kind folder")
        if not block(1, part):
            return
        ref = self.ref()
        if only is not None and ref not in only:
            return
        data, refusal = self._read(ref, _policy_for(policy, only, ref))
        yield Record(ref, data, rejected=refusal)

    def _read(self, ref: str, policy: ReadPolicy) -> tuple[bytes | None, Refusal | None]:
        """The file's bytes, or why not: a folder entry's checks, in a folder's order."""
        if safe_name(os.path.basename(self.path)) is not None:
            detail = "the name is not valid UTF-8 (shown with \\x escapes): rename it to read it"
            return None, (Reason.BAD_NAME, detail)
        if os.path.islink(self.path) and not policy.follow_links:
            return None, link_refused(self.path, "files")
        if not _is_image_name(ref):
            suffix = PurePosixPath(ref).suffix or "(none)"
            return None, (Reason.UNSUPPORTED_EXTENSION, f"extension {suffix} is not an image type")
        return read_file(self.path, policy)


# --------------------------------------------------------------------------- parquet


class ParquetSource(ImageSource):
    """Rows of a parquet file; streamed in batches of ``batch_size`` rows.

    Args:
        path: the parquet file.
        image_column: binary image bytes, or a path relative to the parquet file's folder,
            or a struct with ``bytes``/``path`` fields (the Hugging Face ``Image`` layout).
        caption_column, split_column: optional column names.

    A ``pwatermark`` column (LAION's watermark probability), when the file has one, gives
    each record its ``watermark`` while screening.
    """

    kind = "parquet"

    def __init__(
        self,
        path: str | os.PathLike[str],
        image_column: str = "image",
        caption_column: str | None = None,
        split_column: str | None = None,
        batch_size: int = 64,
    ) -> None:
        super().__init__(path)
        self.image_column = image_column
        self.caption_column = caption_column
        self.split_column = split_column
        self.batch_size = batch_size

    def options(self) -> dict[str, Any]:
        opts = {"image_column": self.image_column}
        for key in ("caption_column", "split_column"):
            if getattr(self, key) is not None:
                opts[key] = getattr(self, key)
        return opts

    def exists(self) -> bool:
        return Path(self.path).is_file()

    def _image_bytes(
        self, value: object, policy: ReadPolicy = VERIFIED
    ) -> tuple[bytes | None, Refusal | None]:
        if isinstance(value, _Oversized):
            return None, value.refusal
        if isinstance(value, dict):  # {"bytes": ..., "path": ...}
            value = value.get("bytes") or value.get("path")
        if value is None:
            return None, (Reason.EMPTY_FILE, f"null {self.image_column!r} value")
        if isinstance(value, bytes | bytearray | memoryview):
            if policy.max_bytes is not None and len(value) > policy.max_bytes:
                return None, policy.too_large(len(value), "a cell of ")
            return bytes(value), None
        return self._read_path(str(value), policy)  # the decoder decides, not the suffix

    def _read_path(self, value: str, policy: ReadPolicy) -> tuple[bytes | None, Refusal | None]:
        """A path cell: relative to the parquet file's folder, and inside it unless
        ``policy.allow_outside``."""
        folder = Path(self.path).parent
        target = folder / value
        if not policy.allow_outside and not inside(folder, target):
            return None, (
                Reason.OUTSIDE_SOURCE,
                f"path {value!r} is outside the parquet file's folder {folder}: not read "
                "(set ingest.allow_outside_paths: true to read it)",
            )
        return read_file(target, policy)

    def _cells(self, column, policy: ReadPolicy) -> list:
        """The column's values as Python objects, except that a binary cell over the cap
        becomes an ``_Oversized`` marker: its length comes from Arrow's offsets, and its
        bytes are never copied out."""
        import pyarrow as pa
        import pyarrow.compute as pc

        cap = policy.max_bytes
        data = column
        if pa.types.is_struct(column.type):
            if column.type.get_field_index("bytes") < 0:
                return column.to_pylist()
            data = column.field("bytes")
        if cap is None or not (
            pa.types.is_binary(data.type) or pa.types.is_large_binary(data.type)
        ):
            return column.to_pylist()
        lengths = pc.binary_length(data).to_pylist()
        if all(n is None or n <= cap for n in lengths):
            return column.to_pylist()
        return [
            _Oversized(policy.too_large(n, "a cell of "))
            if n is not None and n > cap
            else column[i].as_py()
            for i, n in enumerate(lengths)
        ]

    def iter_records(
        self,
        only: Container[str] | None = None,
        part: tuple[int, int] | None = None,
        policy: ReadPolicy | None = None,
    ) -> Iterator[Record]:
        policy = policy or SCREENING
        if not Path(self.path).is_file():
            raise MissingInputError(f"parquet source {self.path!r} does not exist")
        with open_parquet(self.path, policy.max_bytes) as (fd, parquet):
            names = parquet.schema_arrow.names
            columns = [self.image_column, self.caption_column, self.split_column]
            wanted = [c for c in columns if c is not None]
            missing = [c for c in wanted if c not in names]
            if missing:
                raise InputError(f"parquet source {self.path}: no column(s) {missing}; has {names}")
            if only is None and WATERMARK_FIELD in names and WATERMARK_FIELD not in wanted:
                wanted.append(WATERMARK_FIELD)  # screening: LAION's score, when it is there
            groups = block(parquet.num_row_groups, part)
            # refs are row numbers in the whole file: count the rows of the groups before
            first = sum(parquet.metadata.row_group(g).num_rows for g in range(groups.start))
            leaves = leaf_columns(parquet.metadata.schema, wanted)
            for group in groups:
                plan = self.plan(fd, parquet, group, first, leaves, policy)
                first += plan.rows
                refs = [str(row) for row in range(plan.first_row, plan.first_row + plan.rows)]
                if only is not None and not any(ref in only for ref in refs):
                    continue  # a read-back: nothing wanted in this group, not even sized
                if plan.refusal is not None:
                    for ref in refs:
                        if only is None or ref in only:
                            yield Record(ref, None, rejected=plan.refusal)
                    continue
                yield from self._group_records(parquet, group, plan, refs, wanted, only, policy)

    def plan(self, fd: int, parquet, group: int, first_row: int, leaves, policy) -> GroupPlan:
        """How row ``group`` may be read under ``policy``'s cap (``parquet_pages``)."""
        if policy.max_bytes is None:
            rows = parquet.metadata.row_group(group).num_rows
            return GroupPlan(first_row, rows, self.batch_size)
        return plan_row_group(
            fd, parquet.metadata, group, first_row, leaves, policy.max_bytes, self.batch_size
        )

    def _group_records(self, parquet, group, plan, refs, wanted, only, policy):
        refs = iter(refs)
        batches = parquet.iter_batches(
            batch_size=plan.batch_rows, columns=wanted, row_groups=[group]
        )
        for batch in batches:
            images = self._cells(batch.column(self.image_column), policy)
            captions = (
                batch.column(self.caption_column).to_pylist()
                if self.caption_column
                else [None] * len(images)
            )
            splits = (
                batch.column(self.split_column).to_pylist()
                if self.split_column
                else [None] * len(images)
            )
            marks = (
                batch.column(WATERMARK_FIELD).to_pylist()
                if WATERMARK_FIELD in wanted and WATERMARK_FIELD != self.image_column
                else [None] * len(images)
            )
            for value, caption, split, mark in zip(images, captions, splits, marks, strict=True):
                ref = next(refs)
                if only is not None and ref not in only:
                    continue
                data, rejected = self._image_bytes(value, _policy_for(policy, only, ref))
                yield Record(
                    ref,
                    data,
                    _clean_caption(caption),
                    canonical_split(split),
                    rejected,
                    watermark=_watermark(mark),
                )


@dataclass(frozen=True, slots=True)
class _Oversized:
    """A parquet cell over the byte cap, in place of its bytes."""

    refusal: Refusal


@contextmanager
def open_parquet(path: str, max_footer: int | None, buffer_size: int = 1 << 20):
    """``(descriptor, pq.ParquetFile)`` of the parquet file ``path``, opened once: the page
    headers are sized (``parquet_pages``) from the very file Arrow then reads. A FIFO or a
    device is refused without blocking; a footer (which Arrow reads whole) longer than
    ``max_footer`` is refused from the length the file's last bytes give (a sparse file can
    claim gigabytes); Arrow reads a column chunk ``buffer_size`` at a time, not whole."""
    import pyarrow.parquet as pq

    fd = os.open(path, _FLAGS)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise InputError(f"parquet source {path}: {file_kind(st.st_mode)}, not a regular file")
        tail = os.pread(fd, 8, max(st.st_size - 8, 0))
        footer = int.from_bytes(tail[:4], "little") if len(tail) == 8 else 0
        if max_footer is not None and footer > max_footer:
            raise InputError(
                f"parquet source {path}: its footer claims {footer} bytes ({mib(footer)}), "
                f"> max_file_bytes {max_footer} ({mib(max_footer)}): not read (a parquet "
                "file's footer is read whole; raise ingest.max_file_bytes if it is real)"
            )
        with os.fdopen(fd, "rb", closefd=False) as file:
            with pq.ParquetFile(file, buffer_size=buffer_size) as parquet:
                yield fd, parquet
    finally:
        os.close(fd)


# ----------------------------------------------------------------------- webdataset


def _wds_key_ext(name: str) -> tuple[str, str]:
    """webdataset convention: the extension starts at the first dot of the basename."""
    head, _, base = name.rpartition("/")
    stem, dot, ext = base.partition(".")
    key = f"{head}/{stem}" if head else stem
    return key, ext if dot else ""


class WebDatasetSource(ImageSource):
    """Tar shards as img2dataset writes them: ``key.jpg`` + ``key.txt`` + ``key.json``.

    ``path`` is a tar file, a directory of ``*.tar`` files, or a glob. Each shard is read
    as a stream (``tarfile`` mode ``r|*``), grouping consecutive members by key. The caption
    is ``key.txt``, else a string ``caption`` field of ``key.json``; a number ``pwatermark``
    there is the record's ``watermark``. A shard that cannot be
    read to the end gives one ``corrupt`` record (ref = the shard) after its good members.
    A shard found in the directory or by the glob that the policy refuses (a link, a FIFO)
    gives one record (ref = the shard) and is never opened; a member over the byte cap, or
    one that is not a file (a link, a device), gives its own record and is never read.
    """

    kind = "webdataset"

    def _candidates(self) -> list[tuple[str, Path, bool]]:
        """``(name used in refs, path, named)`` for every ``*.tar`` found, sorted; ``named``:
        the path itself names the shard (then a link is followed, as the user named it)."""
        path = Path(self.path)
        if path.is_file():
            return [(path.name, path, True)]
        if path.is_dir():
            return [(p.name, p, False) for p in sorted(path.glob("*.tar"))]
        matches = sorted(Path(p) for p in glob.glob(self.path))
        matches = [p for p in matches if not p.is_dir()]
        if not matches:
            return []
        root = Path(os.path.commonpath([p.parent for p in matches]))
        return [(p.relative_to(root).as_posix(), p, False) for p in matches]

    def _entries(self, policy: ReadPolicy) -> list[tuple[str, Path, Refusal | None]]:
        """Every shard found, with the policy's refusal (None: read it)."""
        entries = []
        for name, path, named in self._candidates():
            refusal = None
            try:
                st = os.stat(path, follow_symlinks=named or policy.follow_links)
                if stat.S_ISLNK(st.st_mode):
                    refusal = link_refused(path, "shards")
                elif stat.S_ISDIR(st.st_mode):
                    continue  # a folder the glob matched: not a shard
                elif not stat.S_ISREG(st.st_mode):
                    refusal = not_a_file(st.st_mode)
            except OSError as error:
                refusal = broken_link(path, error) if path.is_symlink() else unreadable(error)
            entries.append((name, path, refusal))
        return entries

    def shards(self) -> list[tuple[str, Path]]:
        """``(name used in refs, path)`` for every readable shard, sorted (links followed)."""
        return [(name, path) for name, path, refusal in self._entries(VERIFIED) if refusal is None]

    def exists(self) -> bool:
        return bool(self.shards())

    def iter_records(
        self,
        only: Container[str] | None = None,
        part: tuple[int, int] | None = None,
        policy: ReadPolicy | None = None,
    ) -> Iterator[Record]:
        policy = policy or SCREENING
        shards = self._entries(policy)
        if not shards:
            raise MissingInputError(f"webdataset source {self.path!r}: no tar shards found")
        chosen = block(len(shards), part)
        for name, path, refusal in shards[chosen.start : chosen.stop]:
            if refusal is not None:
                if only is None:
                    yield Record(name, None, rejected=refusal)
                continue
            yield from self._iter_shard(name, path, only, policy)

    def _iter_shard(
        self, shard: str, path: Path, only: Container[str] | None, policy: ReadPolicy
    ) -> Iterator[Record]:
        current: str | None = None
        group = _Group()
        seen = 0
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
            with os.fdopen(fd, "rb") as raw:
                if not stat.S_ISREG(os.fstat(raw.fileno()).st_mode):  # replaced meanwhile
                    yield Record(shard, None, rejected=not_a_file(os.fstat(raw.fileno()).st_mode))
                    return
                with tarfile.open(name=os.fspath(path), mode="r|*", fileobj=raw) as tar:
                    # offsets in a compressed stream are not file offsets: no location then
                    plain = getattr(tar.fileobj, "comptype", None) == "tar"
                    for member in tar:
                        if member.isdir():
                            continue
                        base = member.name.rsplit("/", 1)[-1]
                        if base.startswith("."):
                            continue
                        key, ext = _wds_key_ext(member.name)
                        if key != current:
                            if current is not None:
                                yield from self._flush(shard, current, group, only)
                            current, group = key, _Group()
                        seen += 1
                        if only is None:  # images and their caption/metadata
                            needed = _is_image_name(member.name) or ext in _WDS_META_EXTENSIONS
                        else:  # just the wanted images
                            needed = f"{shard}/{member.name}" in only and _is_image_name(
                                member.name
                            )
                        group.members[ext] = None
                        mine = _policy_for(policy, only, f"{shard}/{member.name}")
                        if not member.isfile():
                            group.refused[ext] = (Reason.NOT_A_FILE, _member_kind(member))
                        elif needed and mine.max_bytes is not None and member.size > mine.max_bytes:
                            group.refused[ext] = mine.too_large(member.size, "a tar member of ")
                        elif needed:
                            fileobj = tar.extractfile(member)
                            group.members[ext] = fileobj.read() if fileobj is not None else None
                        if plain and member.isfile():
                            group.where[ext] = (member.offset_data, member.size)
        except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
            if current is not None:
                yield from self._flush(shard, current, group, only)
            yield Record(
                shard,
                None,
                rejected=(Reason.CORRUPT, f"tar shard unreadable after {seen} members: {exc}"),
            )
            return
        if current is not None:
            yield from self._flush(shard, current, group, only)

    def _flush(
        self, shard: str, key: str, group: _Group, only: Container[str] | None = None
    ) -> Iterator[Record]:
        members, refused = group.members, group.refused
        for ext in _WDS_META_EXTENSIONS & refused.keys():
            logger.warning(
                "%s/%s.%s: %s; its caption is not read", shard, key, ext, refused[ext][1]
            )
        meta = None
        if members.get("json") is not None:
            try:
                meta = json.loads(members["json"])
            except ValueError:
                pass
        meta = meta if isinstance(meta, dict) else {}
        caption = None
        if members.get("txt") is not None:
            caption = _clean_caption(members["txt"].decode("utf-8", errors="replace"))
        elif isinstance(meta.get("caption"), str):
            caption = _clean_caption(meta["caption"])
        watermark = _watermark(meta.get(WATERMARK_FIELD))
        images = [ext for ext in members if _is_image_name(f"x.{ext}")]
        for ext in images:
            ref = f"{shard}/{key}.{ext}"
            if only is not None and ref not in only:
                continue
            if ext in refused:
                yield Record(ref, None, caption, rejected=refused[ext])
                continue
            yield Record(
                ref, members[ext], caption, location=group.where.get(ext), watermark=watermark
            )
        if images or only is not None:
            return
        others = [ext for ext in members if ext not in _WDS_META_EXTENSIONS]
        for ext in others:
            ref = f"{shard}/{key}.{ext}" if ext else f"{shard}/{key}"
            detail = f"extension .{ext} is not an image type" if ext else "no extension"
            yield Record(ref, None, caption, rejected=(Reason.UNSUPPORTED_EXTENSION, detail))
        if not others:
            found = ", ".join(sorted(members))
            yield Record(
                f"{shard}/{key}",
                None,
                caption,
                rejected=(Reason.UNSUPPORTED_EXTENSION, f"no image member (has {found})"),
            )


@dataclass(slots=True)
class _Group:
    """The members of one webdataset key, as read: bytes (None when not read), refusals,
    and where each member's bytes lie in a plain tar."""

    members: dict[str, bytes | None] = field(default_factory=dict)
    refused: dict[str, Refusal] = field(default_factory=dict)
    where: dict[str, tuple[int, int]] = field(default_factory=dict)


def _member_kind(member: tarfile.TarInfo) -> str:
    if member.issym():
        what = f"a symbolic link to {member.linkname}"
    elif member.islnk():
        what = f"a hard link to {member.linkname}"
    elif member.isfifo():
        what = "a FIFO"
    elif member.isdev():
        what = "a device"
    else:
        what = "not a regular file"
    return f"a tar member that is {what}: not read"


# ------------------------------------------------------------------------ factory

SOURCE_KINDS: dict[str, type[ImageSource]] = {
    cls.kind: cls for cls in (FolderSource, FileSource, ParquetSource, WebDatasetSource)
}


def open_source(kind: str, path: str | os.PathLike[str], **options: Any) -> ImageSource:
    """Create the source of ``kind`` (folder | file | parquet | webdataset) at ``path``.

    Raises ``ValueError`` for an unknown kind or an option that kind does not take.
    """
    cls = SOURCE_KINDS.get(kind)
    if cls is None:
        raise ParameterError(
            f"unknown image source kind {kind!r}; use one of {sorted(SOURCE_KINDS)}"
        )
    accepted = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "path")]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ParameterError(
            f"image source kind {kind!r} does not take option(s) {unknown}; it takes {accepted}"
        )
    return cls(path, **options)


def open_user_source(kind: str, path: str | os.PathLike[str]) -> ImageSource:
    """A user's images (``caption.source``, ``reconstruct.source``): ``open_source``, except
    that a ``folder`` named by a path that is there but is not a folder (a file, a link to
    one, a dangling link, a FIFO) is that single file (kind ``file``), screened as a folder's
    entry would be."""
    if kind == "folder" and os.path.lexists(path) and not os.path.isdir(path):
        kind = FileSource.kind
    return open_source(kind, path)


# --------------------------------------------------------------------- iter_images


def recorded_sizes(manifest: pd.DataFrame) -> list[int | None]:
    """The byte size screening recorded for each manifest row (its ``length``), None where
    it recorded none (a manifest written before sizes were recorded)."""
    if "length" not in manifest.columns:
        return [None] * len(manifest)
    return [None if pd.isna(n) else int(n) for n in manifest["length"].tolist()]


def iter_images(
    source: ImageSource,
    manifest: pd.DataFrame,
    resolution: int | None = None,
    background: Sequence[int] = WHITE,
) -> Iterator[tuple[str, Image.Image]]:
    """Yield ``(image_id, RGB image normalised to resolution²)`` for the manifest's rows.

    One streaming pass over ``source``, in the source's order (not the manifest's), matching
    rows by ``ref`` = the manifest's ``source`` column; stops as soon as every row is found.
    A folder's files are opened by name, without listing the folder. Pass a filtered
    manifest (e.g. one split) to get a subset. Items are read under ``reading.VERIFIED``:
    what screening kept, as it kept it (through a link it was allowed to follow), each no
    further than the size screening recorded for it (the manifest's ``length``; the default
    ``ingest.max_file_bytes`` where there is none) and checked against its sha256; never a
    FIFO or device.

    Raises ``ValueError`` naming the item if it is now refused (larger than it was, not a
    file), if its bytes no longer hash to its ``image_id``, no longer decode, or if some
    manifest rows are not found in the source.
    """
    refs = manifest["source"].astype(str).tolist()
    wanted = dict(zip(refs, manifest["image_id"].astype(str), strict=True))
    if len(wanted) != len(manifest):
        raise InputError("manifest has repeated 'source' refs")
    if not wanted:
        return
    sizes = recorded_sizes(manifest)
    caps = dict(zip(refs, sizes, strict=True))
    policy = ReadPolicy(read_back_cap(sizes), follow_links=True, allow_outside=True)
    for record in source.iter_records(only=caps, policy=policy):
        image_id = wanted.pop(record.ref, None)
        if image_id is None:
            continue
        if record.data is None:
            reason, detail = record.rejected or (Reason.UNREADABLE, "no data")
            raise InputError(f"{source!r}: manifest item {record.ref!r} is now {reason}: {detail}")
        if hashlib.sha256(record.data).hexdigest() != image_id:
            raise InputError(
                f"{source!r}: {record.ref!r} changed since ingest (sha256 != {image_id})"
            )
        try:
            image = decode_normalised(record.data, resolution, background)
        except ImageRejected as exc:
            raise InputError(f"{source!r}: {record.ref!r} no longer decodes: {exc}") from exc
        yield image_id, image
        if not wanted:
            return
    if wanted:
        examples = list(wanted)[:3]
        raise InputError(f"{source!r}: {len(wanted)} manifest image(s) not found, e.g. {examples}")
