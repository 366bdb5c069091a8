"""Caption pairs someone already made, read from a local copy of an image-caption dataset.

The authors published the 6M image-caption pairs they made with Gemini 2.0 Flash as a
Hugging Face dataset (the official README links ``ccvl/LAION-High-Qualtiy-Pro-6M-VLV``);
their stage-2 script reads every ``*.parquet`` file of a folder, columns ``image`` and
``caption``. This backend of ``synthesize`` takes such a copy instead of a captioner, so a
run skips the API calls. What it reads (``PairsDataset.files``):

- one ``.parquet`` or ``.arrow`` file;
- a folder of parquet files, found anywhere below it in path order (a hub download's
  ``data/train-0000k-of-000nn.parquet``, or the official script's folder);
- a ``datasets`` ``save_to_disk`` folder: ``state.json`` names its Arrow files; a saved
  ``DatasetDict`` (``dataset_dict.json``) is read at its ``split``.

Each row is matched to a selected manifest image (``match``):

- ``sha256`` (default): the sha256 of the row's image bytes is the manifest's image id. It
  holds when the same files went through ingest (e.g. the dataset's parquet files ingested
  as the image source): ingest names every image by the sha256 of the bytes it read, which
  are the cell's bytes (an encoded image, or the ``bytes`` of the Hugging Face Image struct;
  a struct holding only a ``path`` is read from the data file's folder). Images that were
  downloaded again, resized or re-encoded have other bytes and cannot match; nor can raw
  pixel arrays stored as bytes (ingest does not take those as images).
- ``source``: ``key_column`` equals the manifest's ``source`` ref (a folder's relative path,
  a shard member ``00000.tar/000000042.jpg``, a parquet row number);
- ``key``: ``key_column`` equals that ref's file name up to its first dot (img2dataset's
  ``key``, ``000000042``).

By URL is not possible: ingest does not record where an image was downloaded from.

The read policy is ingest's (``imaging/reading.py``), with this backend's own settings
(``max_file_bytes``, ``follow_links``): a data file that is a link is refused unless
``follow_links``; a parquet footer or page over the cap is not read (a group with such a
page is skipped whole, unread); an image or caption cell over the cap is skipped; an
image path must stay inside its data file's folder. Arrow files are memory-mapped
(``save_to_disk`` writes them uncompressed). Each refusal is counted and the first few are
logged; the run goes on with the rest.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import stat
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import pandas as pd

from vlv_pipeline.errors import InputError, MissingInputError
from vlv_pipeline.imaging.reading import (
    ReadPolicy,
    Refusal,
    broken_link,
    inside,
    link_refused,
    not_a_file,
    read_file,
    unreadable,
)

logger = logging.getLogger(__name__)

SETTING = "synthesize.captioner.pairs_dataset"
_LOGGED_REFUSALS = 5
_BATCH_ROWS = 256


def _ours(detail: str) -> str:
    """A refusal's text naming this backend's settings, not ingest's."""
    for name in ("max_file_bytes", "follow_links"):
        detail = detail.replace(f"ingest.{name}", f"{SETTING}.{name}")
    return detail


def _entry_refusal(path: Path, policy: ReadPolicy) -> Refusal | None:
    """Why a data file found below the dataset's folder may not be read (None: it may)."""
    try:
        st = os.stat(path, follow_symlinks=policy.follow_links)
    except OSError as error:
        return broken_link(path, error) if path.is_symlink() else unreadable(error)
    if stat.S_ISLNK(st.st_mode):
        return link_refused(path)
    if not stat.S_ISREG(st.st_mode):
        return not_a_file(st.st_mode)
    return None


def _saved_files(folder: Path, split: str) -> list[Path]:
    """The Arrow files of a ``save_to_disk`` folder (a Dataset, or a DatasetDict's split)."""
    if (folder / "dataset_dict.json").is_file():
        splits = json.loads((folder / "dataset_dict.json").read_text()).get("splits", [])
        if split not in splits:
            raise InputError(
                f"{SETTING}.path {folder} is a DatasetDict with no split {split!r} (it has "
                f"{', '.join(sorted(splits))}): set {SETTING}.split"
            )
        folder = folder / split
    state = json.loads((folder / "state.json").read_text())
    names = [entry["filename"] for entry in state.get("_data_files", [])]
    if any(PurePosixPath(n).name != n for n in names):
        raise InputError(f"{folder / 'state.json'} names data files outside its folder: {names}")
    return [folder / name for name in names]


def data_files(path: str | os.PathLike[str], split: str = "train") -> list[Path]:
    """The data files a pairs dataset at ``path`` is read from, in order (see the module
    docstring); links and special files are not filtered here (``PairsDataset.files``)."""
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise MissingInputError(f"{SETTING}.path {path} is not there")
    if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
        return _saved_files(path, split)
    found = []
    for folder, dirs, files in os.walk(path):  # links to folders are not walked into
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [Path(folder) / f for f in files if f.endswith(".parquet")]
    if not found:
        raise MissingInputError(
            f"{SETTING}.path {path} has no .parquet files below it, nor a save_to_disk "
            "state.json (a single .arrow file may be named as the path)"
        )
    return sorted(found, key=lambda p: p.relative_to(path).as_posix())


@dataclass
class _Tally:
    """What a pass over the dataset met: rows read, and rows not used, by why."""

    rows: int = 0
    skipped: Counter = field(default_factory=Counter)
    logged: int = 0

    def refuse(self, where: str, refusal: Refusal, rows: int = 1) -> None:
        reason, detail = refusal
        self.skipped[str(reason)] += rows
        if self.logged < _LOGGED_REFUSALS:
            self.logged += 1
            logger.warning("pairs dataset: %s: %s: %s", where, reason, _ours(detail))


@dataclass
class PairsDataset:
    """A local image-caption dataset as a caption source (``params.synthesize``'s
    ``PairsDatasetParams``; the module docstring says what is read and how rows match)."""

    path: str
    split: str = "train"
    caption_column: str = "caption"
    image_column: str | None = "image"
    key_column: str | None = None
    match: str = "sha256"
    captioner: str = "pairs_dataset"
    max_file_bytes: int = 64 * 1024 * 1024
    follow_links: bool = False

    @property
    def policy(self) -> ReadPolicy:
        return ReadPolicy(max_bytes=self.max_file_bytes, follow_links=self.follow_links)

    def describe(self) -> dict:
        return {"captioner": self.captioner, "path": self.path, "match": self.match}

    def files(self, tally: _Tally | None = None) -> list[Path]:
        """The data files that may be read (the others refused into ``tally``)."""
        readable = []
        for path in data_files(self.path, self.split):
            refusal = _entry_refusal(path, self.policy)
            if refusal is None:
                readable.append(path)
            elif tally is not None:
                tally.refuse(str(path), refusal)
        return readable

    @property
    def _columns(self) -> list[str]:
        named = self.image_column if self.match == "sha256" else self.key_column
        return [named, self.caption_column]

    def captions_for(self, selection: pd.DataFrame) -> tuple[dict[str, str], _Tally]:
        """``{image_id: caption}`` for the selected images the dataset has (the first row
        of each), and what the pass met. Stops reading once every selected image is found."""
        wanted = self._wanted(selection)
        found: dict[str, str] = {}
        tally = _Tally()
        for where, name, caption in self._rows(tally):
            image_id = wanted.get(name)
            if image_id is None or image_id in found:
                continue
            if caption is None:
                tally.refuse(where, ("no_caption", f"an empty {self.caption_column!r}"))
                continue
            found[image_id] = caption
            if len(found) == len(wanted):
                break
        return found, tally

    def _wanted(self, selection: pd.DataFrame) -> dict[str, str]:
        """What a row's name must be to be each selected image: ``{name: image_id}``."""
        ids = selection["image_id"].astype(str).tolist()
        if self.match == "sha256":
            return {i: i for i in ids}
        refs = selection["source"].astype(str).tolist()
        names = refs if self.match == "source" else [_key_of(r) for r in refs]
        wanted = dict(zip(names, ids, strict=True))
        if len(wanted) < len(names):
            twice = pd.Series(names)[pd.Series(names).duplicated()].iloc[0]
            raise InputError(
                f"{SETTING}.match is {self.match}, but two selected images have the name "
                f"{twice!r}: match by source (the whole ref) or by sha256"
            )
        return wanted

    def _rows(self, tally: _Tally) -> Iterator[tuple[str, str, str | None]]:
        """``(where, name, caption)`` per readable row: name is the sha256 of the image
        bytes, or the key column's value."""
        for path in self.files(tally):
            cells = _parquet_cells if path.suffix == ".parquet" else _arrow_cells
            for where, named, caption in cells(path, self._columns, self.policy, tally):
                tally.rows += 1
                if self.match == "sha256":
                    data, refusal = _image_bytes(named, path.parent, self.policy)
                    if refusal is not None:
                        tally.refuse(where, refusal)
                        continue
                    name = hashlib.sha256(data).hexdigest()
                else:
                    if named is None:
                        continue
                    name = str(named).strip()
                yield where, name, _clean(caption)


def _key_of(ref: str) -> str:
    """img2dataset's key of a manifest ref: its file name up to the first dot."""
    return PurePosixPath(ref).name.split(".", 1)[0]


def _clean(caption: object) -> str | None:
    if caption is None:
        return None
    text = str(caption).strip()
    return text or None


def _image_bytes(
    value: object, folder: Path, policy: ReadPolicy
) -> tuple[bytes | None, Refusal | None]:
    """An image cell's bytes: binary, or the Hugging Face Image struct's ``bytes``, or the
    file its ``path`` names inside ``folder``."""
    if isinstance(value, _TooLarge):
        return None, value.refusal
    if isinstance(value, dict):
        value = value.get("bytes") or value.get("path")
    if value is None:
        return None, ("no_image", "a null image cell")
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value), None
    target = folder / str(value)
    if not inside(folder, target):
        return None, ("outside_source", f"path {value!r} is outside {folder}: not read")
    return read_file(target, policy)


@dataclass(frozen=True)
class _TooLarge:
    """A cell over the cap, in place of its value (never copied out of Arrow)."""

    refusal: Refusal


def _capped(column, cap: int, what: str) -> list:
    """A column's values, with each binary or string cell over ``cap`` bytes (an image
    struct's ``bytes`` field included) replaced by a ``_TooLarge``; sizes from Arrow's
    offsets, so nothing over the cap is copied."""
    import pyarrow as pa
    import pyarrow.compute as pc

    data = column
    if pa.types.is_struct(column.type) and column.type.get_field_index("bytes") >= 0:
        data = column.field("bytes")
    sized = (
        pa.types.is_binary(data.type)
        or pa.types.is_large_binary(data.type)
        or pa.types.is_string(data.type)
        or pa.types.is_large_string(data.type)
    )
    if not sized:
        return column.to_pylist()
    lengths = pc.binary_length(data).to_pylist()
    return [
        _TooLarge(("too_large", f"{what} of {n} bytes > {SETTING}.max_file_bytes {cap}: not read"))
        if n is not None and n > cap
        else column[i].as_py()
        for i, n in enumerate(lengths)
    ]


def _batch_cells(batch, columns: list[str], cap: int, where: str, first: int, tally: _Tally):
    named, caption = (_capped(batch.column(c), cap, f"a cell of {c!r}") for c in columns)
    for n, (value, text) in enumerate(zip(named, caption, strict=True)):
        row = f"{where} row {first + n}"
        if isinstance(text, _TooLarge):
            tally.rows += 1
            tally.refuse(row, text.refusal)
            continue
        yield row, value, text


def _check_columns(path: Path, names: list[str], columns: list[str]) -> None:
    missing = [c for c in columns if c not in names]
    if missing:
        raise InputError(
            f"pairs dataset {path}: no column(s) {missing}; it has {', '.join(names)} "
            f"(set {SETTING}.image_column, key_column or caption_column)"
        )


def _parquet_cells(path: Path, columns: list[str], policy: ReadPolicy, tally: _Tally):
    """``(where, image or key cell, caption cell)`` per row of a parquet file, each row
    group sized from its page headers before it is read (``imaging/parquet_pages.py``); a
    file that does not open as parquet (or whose footer is over the cap), or a group that
    does not read, is skipped and counted."""
    import pyarrow as pa

    from vlv_pipeline.imaging.parquet_pages import leaf_columns, plan_row_group
    from vlv_pipeline.imaging.parquet_source import open_parquet

    cap = policy.max_bytes
    with contextlib.ExitStack() as stack:
        try:
            fd, parquet = stack.enter_context(open_parquet(str(path), cap))
        except (InputError, OSError, pa.ArrowException) as error:
            tally.refuse(str(path), ("unreadable", _ours(str(error))))
            return
        _check_columns(path, parquet.schema_arrow.names, columns)
        leaves = leaf_columns(parquet.metadata.schema, columns)
        first = 0
        for group in range(parquet.num_row_groups):
            plan = plan_row_group(fd, parquet.metadata, group, first, leaves, cap, _BATCH_ROWS)
            start, first = first, first + plan.rows
            where = f"{path} rows {start}-{first - 1}"
            if plan.refusal is not None:
                tally.rows += plan.rows
                tally.refuse(where, plan.refusal, plan.rows)
                continue
            batches = parquet.iter_batches(
                batch_size=plan.batch_rows, columns=columns, row_groups=[group]
            )
            try:
                for batch in batches:
                    yield from _batch_cells(batch, columns, cap, str(path), start, tally)
                    start += batch.num_rows
            except pa.ArrowException as error:
                tally.refuse(where, ("corrupt", str(error)), first - start)


def _arrow_cells(path: Path, columns: list[str], policy: ReadPolicy, tally: _Tally):
    """The same for an Arrow stream file (``save_to_disk``), memory-mapped."""
    import pyarrow as pa

    with pa.memory_map(str(path)) as source:
        try:
            reader = pa.ipc.open_stream(source)
        except pa.ArrowInvalid:
            source.seek(0)
            reader = pa.ipc.open_file(source)  # an Arrow file, not a stream
        _check_columns(path, reader.schema.names, columns)
        batches = (
            reader
            if isinstance(reader, pa.ipc.RecordBatchStreamReader)
            else (reader.get_batch(i) for i in range(reader.num_record_batches))
        )
        first = 0
        for batch in batches:
            yield from _batch_cells(batch, columns, policy.max_bytes, str(path), first, tally)
            first += batch.num_rows
