"""The ``folder`` image source: a directory tree of image files, with an optional captions
table (``FolderSource``); the contract it keeps is in ``sources.py``."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable, Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import pandas as pd

from vlv_pipeline.distributed import block
from vlv_pipeline.errors import InputError, MissingInputError
from vlv_pipeline.imaging.checks import Reason
from vlv_pipeline.imaging.reading import (
    ReadPolicy,
    Refusal,
    broken_link,
    link_refused,
    not_a_file,
    read_file,
    ref_path,
    safe_name,
    unreadable,
)
from vlv_pipeline.imaging.sources import (
    BAD_NAME_DETAIL,
    ImageSource,
    Only,
    Part,
    Record,
    clean_caption,
    policy_for,
    unsupported_name,
)
from vlv_pipeline.imaging.splits import canonical_split, split_from_dirname


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
            labels[key] = (clean_caption(caption), canonical_split(split))
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
                yield f"{prefix}{escaped}", entry.path, (Reason.BAD_NAME, BAD_NAME_DETAIL)
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
        """``ref``'s record; ``policy`` is this item's (``policy_for``)."""
        caption, split = self._label(ref, labels)
        refusal = refusal or unsupported_name(ref)
        if refusal is not None:
            return Record(ref, None, caption, split, refusal)
        data, refusal = read_file(path, policy)
        return Record(ref, data, caption, split, refusal)

    def _records(self, only: Only, part: Part, policy: ReadPolicy) -> Iterator[Record]:
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
            yield self._record(ref, path, refusal, labels, policy_for(policy, only, ref))

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
                yield self._record(ref, path, None, labels, policy_for(policy, only, ref))
