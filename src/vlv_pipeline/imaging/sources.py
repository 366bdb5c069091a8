"""Image sources: a folder, a parquet file, or webdataset (img2dataset) tar shards.

A source is cheap to create and can be iterated any number of times. ``iter_records``
streams one small ``Record`` at a time (one file's bytes, never the whole source), in a
deterministic order. Every input item yields exactly one record per image member, including
items the source itself rejects (``data is None`` and ``rejected`` set), so that every
input gets a verdict.

``Record.ref`` finds the item again:

- folder: the path relative to the folder, posix (``train/000000.png``);
- parquet: the row index (``"17"``);
- webdataset: ``<shard>/<member>`` (``00000.tar/000000042.jpg``), the shard named relative
  to the directory (or common parent of the glob) it was found in.

``iter_records(part=(k, n))`` streams only the k-th of n contiguous blocks of the source's
units (files of a folder, row groups of a parquet file, tar shards), so that n processes can
screen one source together: the blocks in order are the whole stream, in its order.
"""

from __future__ import annotations

import glob
import hashlib
import inspect
import json
import logging
import os
import tarfile
import zlib
from abc import ABC, abstractmethod
from collections.abc import Container, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, ClassVar

import pandas as pd
from PIL import Image

from vlv_pipeline.imaging.checks import (
    IMAGE_EXTENSIONS,
    WHITE,
    ImageRejected,
    Reason,
    decode_normalised,
)
from vlv_pipeline.imaging.splits import canonical_split, split_from_dirname

logger = logging.getLogger(__name__)

_WDS_META_EXTENSIONS = frozenset({"txt", "json", "cls"})


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


def block(units: int, part: tuple[int, int] | None) -> range:
    """The ``part`` ``(k, n)`` of ``range(units)``: the k-th of n contiguous blocks whose
    sizes differ by at most one (all of it when ``part`` is None)."""
    if part is None:
        return range(units)
    k, n = part
    if not 0 <= k < n:
        raise ValueError(f"part {part}: need 0 <= k < n")
    size, extra = divmod(units, n)
    start = k * size + min(k, extra)
    return range(start, start + size + (k < extra))


def _is_image_name(name: str) -> bool:
    return PurePosixPath(name).suffix.lower() in IMAGE_EXTENSIONS


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
        self, only: Container[str] | None = None, part: tuple[int, int] | None = None
    ) -> Iterator[Record]:
        """Stream records in a stable order.

        Args:
            only: if given, records whose ``ref`` is not in it may be skipped without
                reading their bytes (used by ``iter_images``).
            part: ``(k, n)``: only the k-th of n contiguous blocks of the source's units.
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
        raise ValueError(f"captions table {path}: use .parquet, .csv or .jsonl, not {suffix!r}")
    missing = [c for c in ("file", "caption") if c not in table.columns]
    if missing:
        raise ValueError(
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
                raise ValueError(f"captions table {captions}: {key!r} twice")
            labels[key] = (_clean_caption(caption), canonical_split(split))
        return labels

    def _walk(self, directory: Path, prefix: str, skip: Path | None) -> Iterator[tuple[str, Path]]:
        with os.scandir(directory) as it:
            entries = sorted(it, key=lambda e: e.name)
        for entry in entries:
            if entry.name.startswith("."):
                continue
            rel = f"{prefix}{entry.name}"
            if entry.is_dir(follow_symlinks=False):
                yield from self._walk(Path(entry.path), f"{rel}/", skip)
            elif entry.is_file():
                if (
                    skip is not None
                    and entry.name == skip.name
                    and Path(entry.path).resolve() == skip
                ):
                    continue  # the captions table itself
                yield rel, Path(entry.path)

    def iter_records(
        self, only: Container[str] | None = None, part: tuple[int, int] | None = None
    ) -> Iterator[Record]:
        root = Path(self.path)
        if not root.is_dir():
            raise FileNotFoundError(f"image folder {self.path!r} does not exist")
        captions = self.captions_path()
        labels = self._load_labels(captions)
        skip = captions.resolve() if captions is not None else None
        files: Iterator[tuple[str, Path]] | list[tuple[str, Path]] = self._walk(root, "", skip)
        if part is not None:  # the file list (names only), then this part's block of it
            files = list(files)
            chosen = block(len(files), part)
            files = files[chosen.start : chosen.stop]
        for ref, file in files:
            if only is not None and ref not in only:
                continue
            caption, split = labels.get(ref, (None, None))
            if split is None and "/" in ref:
                split = split_from_dirname(ref.split("/", 1)[0])
            if not _is_image_name(ref):
                suffix = PurePosixPath(ref).suffix or "(none)"
                yield Record(
                    ref,
                    None,
                    caption,
                    split,
                    (Reason.UNSUPPORTED_EXTENSION, f"extension {suffix} is not an image type"),
                )
                continue
            try:
                data = file.read_bytes()
            except OSError as exc:
                yield Record(ref, None, caption, split, (Reason.UNREADABLE, str(exc)))
                continue
            yield Record(ref, data, caption, split)


# --------------------------------------------------------------------------- parquet


class ParquetSource(ImageSource):
    """Rows of a parquet file; streamed in batches of ``batch_size`` rows.

    Args:
        path: the parquet file.
        image_column: binary image bytes, or a path relative to the parquet file's folder,
            or a struct with ``bytes``/``path`` fields (the Hugging Face ``Image`` layout).
        caption_column, split_column: optional column names.
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

    def _image_bytes(self, value: object) -> tuple[bytes | None, tuple[Reason, str] | None]:
        if isinstance(value, dict):  # {"bytes": ..., "path": ...}
            value = value.get("bytes") or value.get("path")
        if value is None:
            return None, (Reason.EMPTY_FILE, f"null {self.image_column!r} value")
        if isinstance(value, bytes | bytearray | memoryview):
            return bytes(value), None
        target = Path(self.path).parent / str(value)  # the decoder decides, not the suffix
        try:
            return target.read_bytes(), None
        except OSError as exc:
            return None, (Reason.UNREADABLE, str(exc))

    def iter_records(
        self, only: Container[str] | None = None, part: tuple[int, int] | None = None
    ) -> Iterator[Record]:
        import pyarrow.parquet as pq

        if not Path(self.path).is_file():
            raise FileNotFoundError(f"parquet source {self.path!r} does not exist")
        with pq.ParquetFile(self.path) as parquet:
            names = parquet.schema_arrow.names
            columns = [self.image_column, self.caption_column, self.split_column]
            wanted = [c for c in columns if c is not None]
            missing = [c for c in wanted if c not in names]
            if missing:
                raise ValueError(f"parquet source {self.path}: no column(s) {missing}; has {names}")
            groups = block(parquet.num_row_groups, part)
            # refs are row numbers in the whole file: count the rows of the groups before
            index = sum(parquet.metadata.row_group(g).num_rows for g in range(groups.start))
            batches = parquet.iter_batches(
                batch_size=self.batch_size, columns=wanted, row_groups=list(groups)
            )
            for batch in batches:
                images = batch.column(self.image_column).to_pylist()
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
                for value, caption, split in zip(images, captions, splits, strict=True):
                    ref = str(index)
                    index += 1
                    if only is not None and ref not in only:
                        continue
                    data, rejected = self._image_bytes(value)
                    yield Record(
                        ref, data, _clean_caption(caption), canonical_split(split), rejected
                    )


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
    is ``key.txt``, else a string ``caption`` field of ``key.json``. A shard that cannot be
    read to the end gives one ``corrupt`` record (ref = the shard) after its good members.
    """

    kind = "webdataset"

    def shards(self) -> list[tuple[str, Path]]:
        """``(name used in refs, path)`` for every shard, sorted."""
        path = Path(self.path)
        if path.is_file():
            return [(path.name, path)]
        if path.is_dir():
            return [(p.name, p) for p in sorted(path.glob("*.tar")) if p.is_file()]
        matches = sorted(Path(p) for p in glob.glob(self.path) if Path(p).is_file())
        if not matches:
            return []
        root = Path(os.path.commonpath([p.parent for p in matches]))
        return [(p.relative_to(root).as_posix(), p) for p in matches]

    def exists(self) -> bool:
        return bool(self.shards())

    def iter_records(
        self, only: Container[str] | None = None, part: tuple[int, int] | None = None
    ) -> Iterator[Record]:
        shards = self.shards()
        if not shards:
            raise FileNotFoundError(f"webdataset source {self.path!r}: no tar shards found")
        chosen = block(len(shards), part)
        for name, path in shards[chosen.start : chosen.stop]:
            yield from self._iter_shard(name, path, only)

    def _iter_shard(self, shard: str, path: Path, only: Container[str] | None) -> Iterator[Record]:
        current: str | None = None
        members: dict[str, bytes | None] = {}
        where: dict[str, tuple[int, int]] = {}
        seen = 0
        try:
            with tarfile.open(path, mode="r|*") as tar:
                # offsets in a compressed stream are not file offsets: no location then
                plain = getattr(tar.fileobj, "comptype", None) == "tar"
                for member in tar:
                    if not member.isfile():
                        continue
                    base = member.name.rsplit("/", 1)[-1]
                    if base.startswith("."):
                        continue
                    key, ext = _wds_key_ext(member.name)
                    if key != current:
                        if current is not None:
                            yield from self._flush(shard, current, members, only, where)
                        current, members, where = key, {}, {}
                    seen += 1
                    if only is None:  # images and their caption/metadata
                        needed = _is_image_name(member.name) or ext in _WDS_META_EXTENSIONS
                    else:  # just the wanted images
                        needed = f"{shard}/{member.name}" in only and _is_image_name(member.name)
                    fileobj = tar.extractfile(member) if needed else None
                    members[ext] = fileobj.read() if fileobj is not None else None
                    if plain:
                        where[ext] = (member.offset_data, member.size)
        except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
            if current is not None:
                yield from self._flush(shard, current, members, only, where)
            yield Record(
                shard,
                None,
                rejected=(Reason.CORRUPT, f"tar shard unreadable after {seen} members: {exc}"),
            )
            return
        if current is not None:
            yield from self._flush(shard, current, members, only, where)

    def _flush(
        self,
        shard: str,
        key: str,
        members: dict[str, bytes | None],
        only: Container[str] | None = None,
        where: dict[str, tuple[int, int]] | None = None,
    ) -> Iterator[Record]:
        caption = None
        if members.get("txt") is not None:
            caption = _clean_caption(members["txt"].decode("utf-8", errors="replace"))
        elif members.get("json") is not None:
            try:
                meta = json.loads(members["json"])
                if isinstance(meta, dict) and isinstance(meta.get("caption"), str):
                    caption = _clean_caption(meta["caption"])
            except ValueError:
                pass
        images = [ext for ext in members if _is_image_name(f"x.{ext}")]
        for ext in images:
            ref = f"{shard}/{key}.{ext}"
            if only is not None and ref not in only:
                continue
            yield Record(ref, members[ext], caption, location=(where or {}).get(ext))
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


# ------------------------------------------------------------------------ factory

SOURCE_KINDS: dict[str, type[ImageSource]] = {
    cls.kind: cls for cls in (FolderSource, ParquetSource, WebDatasetSource)
}


def open_source(kind: str, path: str | os.PathLike[str], **options: Any) -> ImageSource:
    """Create the source of ``kind`` (folder | parquet | webdataset) at ``path``.

    Raises ``ValueError`` for an unknown kind or an option that kind does not take.
    """
    cls = SOURCE_KINDS.get(kind)
    if cls is None:
        raise ValueError(f"unknown image source kind {kind!r}; use one of {sorted(SOURCE_KINDS)}")
    accepted = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "path")]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ValueError(
            f"image source kind {kind!r} does not take option(s) {unknown}; it takes {accepted}"
        )
    return cls(path, **options)


# --------------------------------------------------------------------- iter_images


def iter_images(
    source: ImageSource,
    manifest: pd.DataFrame,
    resolution: int | None = None,
    background: Sequence[int] = WHITE,
) -> Iterator[tuple[str, Image.Image]]:
    """Yield ``(image_id, RGB image normalised to resolution²)`` for the manifest's rows.

    One streaming pass over ``source``, in the source's order (not the manifest's), matching
    rows by ``ref`` = the manifest's ``source`` column; stops as soon as every row is found.
    Pass a filtered manifest (e.g. one split) to get a subset.

    Raises ``ValueError`` if an item's bytes no longer hash to its ``image_id``, no longer
    decode, or if some manifest rows are not found in the source.
    """
    wanted = dict(
        zip(manifest["source"].astype(str), manifest["image_id"].astype(str), strict=True)
    )
    if len(wanted) != len(manifest):
        raise ValueError("manifest has repeated 'source' refs")
    if not wanted:
        return
    for record in source.iter_records(only=wanted.keys()):
        image_id = wanted.pop(record.ref, None)
        if image_id is None:
            continue
        if record.data is None:
            reason, detail = record.rejected or (Reason.UNREADABLE, "no data")
            raise ValueError(f"{source!r}: manifest item {record.ref!r} is now {reason}: {detail}")
        if hashlib.sha256(record.data).hexdigest() != image_id:
            raise ValueError(
                f"{source!r}: {record.ref!r} changed since ingest (sha256 != {image_id})"
            )
        try:
            image = decode_normalised(record.data, resolution, background)
        except ImageRejected as exc:
            raise ValueError(f"{source!r}: {record.ref!r} no longer decodes: {exc}") from exc
        yield image_id, image
        if not wanted:
            return
    if wanted:
        examples = list(wanted)[:3]
        raise ValueError(f"{source!r}: {len(wanted)} manifest image(s) not found, e.g. {examples}")
