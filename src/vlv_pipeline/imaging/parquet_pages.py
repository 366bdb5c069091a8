"""What reading a parquet row group costs, known before it is read (issue 26, item 9).

A parquet cell's length is known only once its page is decompressed, and a page can hold
256 MiB of zeros in a few kilobytes of zstd. But each page says how large it is before it
is decompressed: a few bytes of thrift in front of it (the page header) give its
``uncompressed_page_size``, and Arrow decompresses a page into a buffer of exactly that
size. (The footer's ``total_uncompressed_size`` is not used: nothing makes it agree with
the pages, and Arrow does not read it.)

A cell never spans pages. Its bytes are in its data page (plain encodings), or in the
dictionary page (dictionary encoding), or copied from earlier values of its page
(``DELTA_BYTE_ARRAY``'s shared prefixes, which start afresh on each page). So the largest
page of a column chunk bounds its largest cell, and ``plan_row_group`` decides from the
headers alone:

- a group with a page over the cap is not read at all: a cell in it may be that large, and
  reading any row of the group decompresses that page whole (``GroupPlan.refusal``);
- any other group is read ``GroupPlan.batch_rows`` rows at a time, so that a batch (at most
  that many cells of each column, each no larger than its column's largest page) stays
  under the cap.

Only the header bytes are read, one ``pread`` per page from the open file the caller then
hands to Arrow (so both see the same file); a header that cannot be parsed refuses its
group (``corrupt``), as Arrow would fail on it.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from vlv_pipeline.imaging.checks import Reason
from vlv_pipeline.imaging.reading import Refusal, mib

#: A page holds its values' length prefixes and levels besides the values: a page this much
#: over the cap may still hold one cell within it.
PAGE_OVERHEAD = 4096
#: Arrow refuses a page header larger than this (``kDefaultMaxPageHeaderSize``).
MAX_HEADER = 16 << 20
_FIRST_READ = 1 << 10
_PARQUET_816_PADDING = 100  # Arrow's kMaxDictHeaderSize

# PageHeader field ids (parquet.thrift)
_TYPE, _UNCOMPRESSED, _COMPRESSED = 1, 2, 3
_DATA_PAGE, _INDEX_PAGE, _DICTIONARY_PAGE, _DATA_PAGE_V2 = 0, 1, 2, 3


@dataclass(frozen=True, slots=True)
class GroupPlan:
    """How to read one row group: ``batch_rows`` at a time, or not at all (``refusal``)."""

    first_row: int
    rows: int
    batch_rows: int
    refusal: Refusal | None = None


class _Short(Exception):
    """The header runs past the bytes read so far."""


class _Thrift:
    """Just enough of the thrift compact protocol to read a page header's integers."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def byte(self) -> int:
        if self.pos >= len(self.data):
            raise _Short
        self.pos += 1
        return self.data[self.pos - 1]

    def skip(self, n: int) -> None:
        if n < 0:
            raise ValueError("negative length")
        if self.pos + n > len(self.data):
            raise _Short
        self.pos += n

    def varint(self) -> int:
        result = shift = 0
        while True:
            b = self.byte()
            result |= (b & 0x7F) << shift
            if not b & 0x80:
                return result
            shift += 7
            if shift > 63:
                raise ValueError("varint too long")

    def zigzag(self) -> int:
        n = self.varint()
        return (n >> 1) ^ -(n & 1)

    def struct(self, depth: int = 0) -> dict[int, object]:
        if depth > 8:
            raise ValueError("structs nested too deep")
        fields: dict[int, object] = {}
        last = 0
        while True:
            head = self.byte()
            if head == 0:
                return fields
            kind, delta = head & 0x0F, head >> 4
            last = last + delta if delta else self.zigzag()
            fields[last] = self.value(kind, depth)

    def value(self, kind: int, depth: int, in_container: bool = False) -> object:
        if kind in (1, 2):  # booleans: in the field header, or one byte in a container
            return self.byte() == 1 if in_container else kind == 1
        if kind == 3:
            return self.byte()
        if kind in (4, 5, 6):
            return self.zigzag()
        if kind == 7:
            self.skip(8)
        elif kind == 8:
            self.skip(self.varint())
        elif kind in (9, 10):  # list, set
            head = self.byte()
            size, element = head >> 4, head & 0x0F
            if size == 15:
                size = self.varint()
            self._elements(size, (element,), depth)
        elif kind == 11:  # map
            size = self.varint()
            if size:
                types = self.byte()
                self._elements(size, (types >> 4, types & 0x0F), depth)
        elif kind == 12:
            return self.struct(depth + 1)
        else:
            raise ValueError(f"unknown thrift type {kind}")
        return None

    def _elements(self, size: int, kinds: tuple[int, ...], depth: int) -> None:
        if size > len(self.data) - self.pos:  # each element takes a byte at least
            raise _Short
        for _ in range(size):
            for kind in kinds:
                self.value(kind, depth + 1, in_container=True)


def _header(fd: int, pos: int, end: int) -> tuple[dict[int, object], int]:
    """The page header at ``pos`` and its length in bytes."""
    want = _FIRST_READ
    while True:
        data = os.pread(fd, min(want, max(end - pos, 0)), pos)
        try:
            parser = _Thrift(data)
            return parser.struct(), parser.pos
        except _Short:
            if len(data) < want or want >= MAX_HEADER:
                raise ValueError(f"a page header at byte {pos} is cut short") from None
            want *= 4


def _int(header: dict[int, object], field: int) -> int:
    value = header.get(field)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"a page header without a valid field {field}")
    return value


def page_sizes(fd: int, column, padding: int = 0) -> tuple[int, int]:
    """``(largest, total)``: the largest page of a column chunk and the sum of its pages
    (each uncompressed, or as stored where larger), from the pages' headers; ``column`` is
    pyarrow's ``ColumnChunkMetaData``.

    The pages are walked as Arrow walks them: from the same first byte, until the chunk's
    values are all seen or its bytes (plus Arrow's ``padding`` for old parquet-mr files)
    end."""
    start = column.data_page_offset
    dictionary = column.dictionary_page_offset
    if column.has_dictionary_page and dictionary is not None and 0 < dictionary < start:
        start = dictionary
    end = start + column.total_compressed_size + padding
    largest = total = seen = 0
    pos = start
    while pos < end and seen < column.num_values:
        header, used = _header(fd, pos, end)
        stored = _int(header, _COMPRESSED)
        kind = header.get(_TYPE)
        if kind != _INDEX_PAGE:
            size = max(_int(header, _UNCOMPRESSED), stored)
            largest, total = max(largest, size), total + size
        if kind in (_DATA_PAGE, _DATA_PAGE_V2):
            detail = header.get(5 if kind == _DATA_PAGE else 8)
            seen += _int(detail, 1) if isinstance(detail, dict) else 0
        pos += used + stored
    return largest, total


def arrow_padding(metadata) -> int:
    """The bytes Arrow reads past a column chunk's end in files of parquet-mr before 1.2.9,
    whose chunk sizes left out the dictionary page header (PARQUET-816)."""
    match = re.match(r"parquet-mr version (\d+)\.(\d+)\.(\d+)", metadata.created_by or "")
    if match and tuple(int(n) for n in match.groups()) < (1, 2, 9):
        return _PARQUET_816_PADDING
    return 0


def leaf_columns(schema, names: list[str]) -> dict[str, list[tuple[int, bool]]]:
    """``name -> [(leaf column index, repeated)]`` for the top-level columns ``names``
    (a struct such as the Hugging Face image has a leaf per field)."""
    leaves: dict[str, list[tuple[int, bool]]] = {name: [] for name in names}
    for j in range(len(schema)):
        column = schema.column(j)
        top = column.path.split(".", 1)[0]
        if top in leaves:
            leaves[top].append((j, column.max_repetition_level > 0))
    return leaves


def plan_row_group(
    fd: int,
    metadata,
    group: int,
    first_row: int,
    leaves: dict[str, list[tuple[int, bool]]],
    cap: int,
    batch_size: int,
) -> GroupPlan:
    """How to read row ``group`` of the file open as ``fd`` (see the module docstring).

    ``leaves`` are the wanted columns' leaves (``leaf_columns``); ``cap`` bounds a cell,
    and a batch of cells; ``batch_size`` is the most rows a batch holds anyway.
    """
    meta = metadata.row_group(group)
    rows = meta.num_rows
    where = f"row group {group} (rows {first_row}-{first_row + rows - 1})"
    per_row = 0
    padding = arrow_padding(metadata)
    for name, columns in leaves.items():
        for j, repeated in columns:
            chunk = meta.column(j)
            try:
                largest, total = page_sizes(fd, chunk, padding)
            except (ValueError, OSError) as error:
                detail = f"{where}: column {name!r} cannot be sized from its page headers ({error})"
                return GroupPlan(first_row, rows, 0, (Reason.CORRUPT, detail))
            bound = total if repeated else largest  # a list's row may span pages
            if bound > cap + PAGE_OVERHEAD:
                what = "pages of" if repeated else "a page of"
                return GroupPlan(first_row, rows, 0, _too_big(where, name, bound, cap, what))
            per_row += bound
    batch_rows = max(1, min(batch_size, cap // max(per_row, 1)))
    return GroupPlan(first_row, rows, batch_rows)


def _too_big(where: str, name: str, size: int, cap: int, what: str) -> Refusal:
    return (
        Reason.TOO_LARGE,
        f"{where} has {what} {size} bytes ({mib(size)}) uncompressed in column {name!r}, "
        f"> max_file_bytes {cap} ({mib(cap)}): a cell in it may be that large, and no row of "
        "the group can be read without decompressing it whole, so none is read (rewrite the "
        "parquet file with smaller row groups and pages, e.g. pyarrow's row_group_size and "
        "data_page_size, or raise ingest.max_file_bytes)",
    )
