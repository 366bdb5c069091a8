"""The ``parquet`` image source: the rows of a parquet file (``ParquetSource``), and
``open_parquet``, which opens such a file once, refusing what may not be read; the contract
the source keeps is in ``sources.py``."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vlv_pipeline.distributed import block
from vlv_pipeline.errors import InputError, MissingInputError
from vlv_pipeline.imaging.checks import Reason
from vlv_pipeline.imaging.parquet_pages import GroupPlan, leaf_columns, plan_row_group
from vlv_pipeline.imaging.reading import (
    _FLAGS,
    VERIFIED,
    ReadPolicy,
    Refusal,
    file_kind,
    inside,
    mib,
    read_file,
)
from vlv_pipeline.imaging.sources import (
    WATERMARK_FIELD,
    ImageSource,
    Only,
    Part,
    Record,
    as_watermark,
    clean_caption,
    policy_for,
)
from vlv_pipeline.imaging.splits import canonical_split


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

    def image_bytes(
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

    def cells(self, column, policy: ReadPolicy) -> list:
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

    def _records(self, only: Only, part: Part, policy: ReadPolicy) -> Iterator[Record]:
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
            images = self.cells(batch.column(self.image_column), policy)
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
                data, rejected = self.image_bytes(value, policy_for(policy, only, ref))
                yield Record(
                    ref,
                    data,
                    clean_caption(caption),
                    canonical_split(split),
                    rejected,
                    watermark=as_watermark(mark),
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
