"""``LocalVersionedDataset``: what the project's versioned datasets of local folders share
(``ImageFolderDataset``, ``ModelCardDataset``, ``ModelDirectoryDataset``): a local
``filepath`` (no other protocol), Kedro's versioning (``<filepath>/<version>/<name>``),
``metadata``, their description, finding what to load (``_load_path``), and saving a folder
whole or not at all (``_saving_folder``)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import Any, TypeVar

from kedro.io.core import (
    AbstractVersionedDataset,
    DatasetError,
    Version,
    VersionNotFoundError,
    get_protocol_and_path,
)

from vlv_pipeline.files import atomic_target, restore_backup

_DI = TypeVar("_DI")
_DO = TypeVar("_DO")


class LocalVersionedDataset(AbstractVersionedDataset[_DI, _DO]):
    """A dataset at a local ``filepath``, versioned or not."""

    def __init__(
        self,
        *,
        filepath: str | os.PathLike,
        version: Version | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        protocol, path = get_protocol_and_path(filepath, version)
        if protocol != "file":
            raise DatasetError(f"{type(self).__name__} supports local paths only; got '{filepath}'")
        self.metadata = metadata
        super().__init__(filepath=PurePosixPath(path), version=version)

    def _describe(self) -> dict[str, Any]:
        return {"filepath": self._filepath, "version": self._version}

    def _never_saved(self) -> Exception:
        """What ``_load_path`` raises when no version was saved yet."""
        return DatasetError(f"no version of {self._filepath} was saved yet")

    def _load_path(self) -> Path:
        """The path to load (the latest version, or the one asked for), put back from the
        backup a killed save left (``files.restore_backup``)."""
        try:
            path = Path(self._get_load_path())
        except VersionNotFoundError as error:
            raise self._never_saved() from error
        restore_backup(path)
        return path

    @contextmanager
    def _saving_folder(self) -> Iterator[Path]:
        """A new empty folder for the body to fill, hidden under a temporary name, flushed and
        renamed into place as this save's path when the body ends (``files.atomic_target``);
        if it fails, nothing is left, not even an empty version folder. A versioned save is a
        new version, never an old one."""
        save_path = Path(self._get_save_path())  # versioned: raises if it exists
        # Hidden names: kedro finds versions with glob('<filepath>/*/<name>'), which
        # skips dot-entries, so a half-written directory is never taken for a version.
        beside = Path(self._filepath) if self._version else save_path.parent
        version_folder = save_path.parent if self._version else None
        made_version = version_folder is not None and not version_folder.exists()
        try:
            with atomic_target(save_path, beside=beside) as tmp:
                tmp.mkdir(parents=True)
                yield tmp
                if version_folder is not None:
                    version_folder.mkdir(parents=True, exist_ok=True)
        finally:
            if made_version and not save_path.exists():
                try:
                    version_folder.rmdir()  # no empty version folder either
                except OSError:
                    pass
