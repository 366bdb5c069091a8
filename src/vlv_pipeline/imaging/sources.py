"""The image source contract: the ``Record`` one input item gives, the ``ImageSource`` base
class of every kind, the helpers the kinds share, and the read-back ``iter_images``.

The kinds are ``folder_source.FolderSource`` (a folder), ``file_source.FileSource`` (a single
image file), ``parquet_source.ParquetSource`` (a parquet file) and
``webdataset_source.WebDatasetSource`` (webdataset (img2dataset) tar shards);
``source_kinds.open_source`` creates one by name.

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

import hashlib
import os
from abc import ABC, abstractmethod
from collections.abc import Container, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any, ClassVar

import pandas as pd
from PIL import Image

from vlv_pipeline.errors import InputError
from vlv_pipeline.imaging.checks import (
    IMAGE_EXTENSIONS,
    WHITE,
    ImageRejected,
    Reason,
    decode_normalised,
)
from vlv_pipeline.imaging.reading import SCREENING, ReadPolicy, Refusal, read_back, read_back_cap

#: LAION's watermark probability: a field of img2dataset's ``key.json`` (with
#: ``--save_additional_columns`` naming it) or a parquet column (``ingest.watermark_below``)
WATERMARK_FIELD = "pwatermark"
#: why an entry whose name is not UTF-8 is not read (folder entries, a named file)
BAD_NAME_DETAIL = "the name is not valid UTF-8 (shown with \\x escapes): rename it to read it"

#: ``iter_records``' ``only`` and ``part`` (see ``ImageSource.iter_records``)
Only = Container[str] | None
Part = tuple[int, int] | None


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


def policy_for(policy: ReadPolicy, only: Only, ref: str) -> ReadPolicy:
    """``policy`` for one ref: a read-back's ``only`` maps each ref to the size screening
    recorded for it (None where it recorded none)."""
    if isinstance(only, Mapping):
        return read_back(only.get(ref), policy)
    return policy


def is_image_name(name: str) -> bool:
    return PurePosixPath(name).suffix.lower() in IMAGE_EXTENSIONS


def as_watermark(value: object) -> float | None:
    """A watermark probability from metadata: a finite number, else None (not known)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    value = float(value)
    return value if value == value and abs(value) != float("inf") else None


def watermark_of(meta: Mapping[str, object]) -> float | None:
    """The watermark probability an item's metadata gives (its ``WATERMARK_FIELD``)."""
    return as_watermark(meta.get(WATERMARK_FIELD))


def clean_caption(value: object) -> str | None:
    if value is None or (isinstance(value, float) and value != value):
        return None
    text = str(value).strip()
    return text or None


def unsupported_name(ref: str) -> Refusal | None:
    """Why ``ref`` is not read as an image by its name (not an image type), None if it is."""
    if is_image_name(ref):
        return None
    suffix = PurePosixPath(ref).suffix or "(none)"
    return Reason.UNSUPPORTED_EXTENSION, f"extension {suffix} is not an image type"


class ImageSource(ABC):
    """Base class of all sources; see the module docstring."""

    kind: ClassVar[str]

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)

    def iter_records(
        self, only: Only = None, part: Part = None, policy: ReadPolicy | None = None
    ) -> Iterator[Record]:
        """Stream records in a stable order.

        Args:
            only: if given, records whose ``ref`` is not in it may be skipped without
                reading their bytes (used by ``iter_images``).
            part: ``(k, n)``: only the k-th of n contiguous blocks of the source's units.
            policy: what may be read (default ``reading.SCREENING``: no links, nothing
                outside the source's folder, at most 64 MiB a file).
        """
        return self._records(only, part, policy or SCREENING)

    @abstractmethod
    def _records(self, only: Only, part: Part, policy: ReadPolicy) -> Iterator[Record]:
        """``iter_records``, with the policy's default filled in (a generator, so that a
        missing source is raised when the records are first asked for)."""

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
