"""kedro-datasets' file datasets, saved atomically: the same classes, arguments and files, but
``save()`` writes a hidden temporary in the destination's folder and renames it into place.

kedro-datasets writes straight to ``<filepath>/<version>/<name>``; a write that fails midway
(a full disk) leaves a truncated file there, and Kedro takes it for the latest version, so the
next run reads a broken file. Here a save that fails leaves nothing: no file, no temporary,
no empty version folder, and the previous version stays the latest. The error says which file
could not be written and why (``vlv_pipeline.files.unwritable``).

Catalog (local paths; other protocols save as kedro-datasets does)::

    image_manifest:
      type: vlv_pipeline.datasets.atomic.ParquetDataset
      filepath: data/02_intermediate/image_manifest.parquet
      versioned: true
"""

from __future__ import annotations

import glob
import inspect
from pathlib import Path, PurePosixPath
from typing import Any

from kedro_datasets.json import JSONDataset as _JSONDataset
from kedro_datasets.matplotlib import MatplotlibDataset as _MatplotlibDataset
from kedro_datasets.pandas import ParquetDataset as _ParquetDataset
from kedro_datasets.pillow import ImageDataset as _ImageDataset
from kedro_datasets.text import TextDataset as _TextDataset

from vlv_pipeline.files import atomic_target, remove_stale


class AtomicSave:
    """Mixin for a kedro-datasets file dataset: ``save()`` runs the class's own save with
    ``_get_save_path()`` pointing at a hidden temporary beside the real path, flushes it to
    disk (a file, or a folder of figures and everything in it), then renames it into place
    (``files.atomic_target``). Put it before the kedro-datasets class in the bases."""

    _atomic_target: PurePosixPath | None = None

    def _get_save_path(self) -> PurePosixPath:
        if self._atomic_target is not None:  # inside save(): the class writes the temporary
            return self._atomic_target
        return super()._get_save_path()  # type: ignore[misc]

    def _write(self, data: Any) -> None:
        """The kedro-datasets class's own save, without Kedro's wrapper around it."""
        inspect.unwrap(super().save)(self, data)  # type: ignore[misc]

    def save(self, data: Any) -> None:
        if getattr(self, "_protocol", "file") != "file":
            return self._write(data)
        final = Path(super()._get_save_path())  # type: ignore[misc]  # versioned: must not exist
        versioned = bool(getattr(self, "_version", None))
        folder_was_there = final.parent.exists()
        self._remove_stale_temporaries(final, versioned)
        try:
            with atomic_target(final, sweep=False) as tmp:
                self._atomic_target = PurePosixPath(tmp)
                self._write(data)
        finally:
            self._atomic_target = None
            if versioned and not folder_was_there and not final.exists():
                try:
                    final.parent.rmdir()  # the empty version folder this save made
                except OSError:
                    pass

    def _remove_stale_temporaries(self, final: Path, versioned: bool) -> None:
        """Temporaries of this dataset that no live writer will finish (``files.is_stale``),
        e.g. after a killed run; a version folder they leave empty goes with them."""
        pattern = f".{glob.escape(final.name)}.tmp*"
        if not versioned:
            remove_stale(final.parent.glob(pattern))
            return
        for tmp in remove_stale(Path(self._filepath).glob(f"*/{pattern}")):  # type: ignore[attr-defined]
            try:
                tmp.parent.rmdir()
            except OSError:
                pass  # not empty: a real version lives there


class ParquetDataset(AtomicSave, _ParquetDataset):
    """``pandas.ParquetDataset``, saved atomically."""


class JSONDataset(AtomicSave, _JSONDataset):
    """``json.JSONDataset``, saved atomically."""


class MatplotlibDataset(AtomicSave, _MatplotlibDataset):
    """``matplotlib.MatplotlibDataset``, saved atomically (a list or dict of figures: the whole
    folder at once)."""


class ImageDataset(AtomicSave, _ImageDataset):
    """``pillow.ImageDataset``, saved atomically."""


class TextDataset(AtomicSave, _TextDataset):
    """``text.TextDataset``, saved atomically."""


__all__ = [
    "AtomicSave",
    "ImageDataset",
    "JSONDataset",
    "MatplotlibDataset",
    "ParquetDataset",
    "TextDataset",
]
