"""The image source kinds by name (``SOURCE_KINDS``), and creating a source from a kind, a
path and options (``open_source``, ``open_user_source``)."""

from __future__ import annotations

import inspect
import os
from typing import Any

from vlv_pipeline.errors import ParameterError
from vlv_pipeline.imaging.file_source import FileSource
from vlv_pipeline.imaging.folder_source import FolderSource
from vlv_pipeline.imaging.parquet_source import ParquetSource
from vlv_pipeline.imaging.sources import ImageSource
from vlv_pipeline.imaging.webdataset_source import WebDatasetSource

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
