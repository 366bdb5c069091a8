"""``ImageFolderDataset``: a (versioned) folder of PNG images, written one image at a time.

``save`` takes any iterable of ``(name, image)`` pairs (``name``: the file's path relative
to the folder, posix, e.g. ``from_embeddings/photos/a.jpg.png``; ``image``: a PIL image,
written as PNG, a ``(H, W, 3)`` uint8 array, or the bytes of a file) and writes each as it comes, so a
lazy iterable that renders while it is iterated (the `reconstruct` pipeline's) never holds
more than one batch. The folder appears whole or not at all: it is written under a hidden
temporary name, flushed, and renamed into place (``files.atomic_target``); a versioned one
lands at ``<filepath>/<version>/<name>`` and never replaces an earlier version.

``load`` gives an ``ImageFolder``: the folder's path, its file names, and ``open(name)``.

Catalog::

    reconstructions:
      type: vlv_pipeline.datasets.image_folder.ImageFolderDataset
      filepath: ${globals:data}/07_model_output/reconstructions
      versioned: true
"""

from __future__ import annotations

import io
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
from kedro.io.core import DatasetError
from PIL import Image

from vlv_pipeline.datasets.local_versioned import LocalVersionedDataset
from vlv_pipeline.errors import MissingInputError


@dataclass(frozen=True)
class ImageFolder:
    """A folder of images written by ``ImageFolderDataset``."""

    path: Path

    def names(self) -> list[str]:
        """Every file's path relative to the folder (posix), sorted."""
        return sorted(
            p.relative_to(self.path).as_posix() for p in self.path.rglob("*") if p.is_file()
        )

    def __contains__(self, name: str) -> bool:
        return (self.path / name).is_file()

    def open(self, name: str) -> Image.Image:
        """The image ``name``, decoded, RGB."""
        with Image.open(self.path / name) as image:
            return image.convert("RGB")


def safe_relative(name: str) -> PurePosixPath:
    """``name`` as a relative path that stays inside the folder (no ``..``, not absolute,
    no empty or ``.`` parts); raises ``DatasetError`` otherwise."""
    path = PurePosixPath(name)
    if path.is_absolute() or any(part in ("", ".", "..") for part in name.split("/")):
        raise DatasetError(f"image name {name!r} would leave the folder: not written")
    return path


def _encoded(image: Any) -> bytes:
    if isinstance(image, bytes | bytearray):
        return bytes(image)
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    if not isinstance(image, Image.Image):
        raise DatasetError(f"cannot write a {type(image).__name__} as an image")
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


class ImageFolderDataset(LocalVersionedDataset[Iterable[tuple[str, Any]], ImageFolder]):
    """See the module docstring."""

    def _never_saved(self) -> Exception:
        return MissingInputError(f"no version of the image folder {self._filepath} was saved yet")

    def load(self) -> ImageFolder:
        path = self._load_path()
        if not path.is_dir():
            raise MissingInputError(f"image folder {path} does not exist")
        return ImageFolder(path)

    def save(self, data: Iterable[tuple[str, Any]]) -> None:
        with self._saving_folder() as tmp:
            seen: set[str] = set()
            for name, image in data:
                relative = safe_relative(name)
                if str(relative) in seen:
                    raise DatasetError(f"image name {name!r} given twice: not written")
                seen.add(str(relative))
                target = tmp / relative
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(_encoded(image))

    def _exists(self) -> bool:
        try:
            return self._load_path().is_dir()
        except (DatasetError, MissingInputError):
            return False
