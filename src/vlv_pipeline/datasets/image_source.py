"""``ImageSourceDataset``: a read-only Kedro dataset whose ``load()`` is an ``ImageSource``.

.. code-block:: yaml

    raw_images:
      type: vlv_pipeline.datasets.image_source.ImageSourceDataset
      kind: folder                       # folder | parquet | webdataset
      path: data/01_raw/shapes/images
      captions: data/01_raw/shapes/labels.parquet   # folder only, optional

    laion_shards:
      type: vlv_pipeline.datasets.image_source.ImageSourceDataset
      kind: webdataset
      path: data/01_raw/laion/{00000..00099}.tar   # a tar, a folder of *.tar, or a glob

Options by kind: folder ``captions``; parquet ``image_column``, ``caption_column``,
``split_column``, ``batch_size``; webdataset none. ``load()`` reads nothing: the returned
source streams its records when iterated.

A source is read-only unless the catalog says ``writable: true`` (folder kind only). The
shapes world's `world` pipeline writes its images through such an entry, so the folder it
renders IS the raw source that `ingest` reads; a user's own data stays read-only.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path, PurePosixPath
from typing import Any

from kedro.io import AbstractDataset, DatasetError
from PIL import Image

from vlv_pipeline.imaging.sources import ImageSource, open_source


class ImageSourceDataset(AbstractDataset[Any, ImageSource]):
    """Images in a folder, a parquet file or webdataset shards (read-only unless ``writable``)."""

    def __init__(
        self,
        *,
        kind: str,
        path: str,
        writable: bool = False,
        metadata: dict[str, Any] | None = None,
        **options: Any,
    ) -> None:
        """Check ``kind`` and its options at once (raises ``ValueError`` naming a bad one)."""
        if writable and kind != "folder":
            raise ValueError(f"writable: true needs kind: folder, not {kind!r}")
        self._source = open_source(kind, path, **options)
        self._path = Path(path)
        self._writable = writable
        self.metadata = metadata

    def load(self) -> ImageSource:
        return self._source

    def save(self, data: Mapping[str, Image.Image | Callable[[], Image.Image]]) -> None:
        """Write ``{relative/path.png: image or callable returning one}`` as the whole folder.

        Images are written one at a time (callables are called lazily) into a hidden
        sibling folder that then replaces the old folder, so a crash leaves the previous
        folder intact and no stale images survive a smaller rewrite.
        """
        if not self._writable:
            raise DatasetError(
                f"{self._path} is a read-only image source (your own data): nothing writes to it. "
                "Only the shapes world's `world` pipeline writes raw images, through a catalog "
                "entry with `writable: true`; with your own data run `kedro run --pipeline vlv`."
            )
        self._path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self._path.parent / f".{self._path.name}.tmp-{uuid.uuid4().hex[:8]}"
        try:
            for relative, image in data.items():
                rel = PurePosixPath(relative)
                if rel.is_absolute() or ".." in rel.parts or not rel.suffix:
                    raise DatasetError(
                        f"bad image path {relative!r}: need a relative file name with a suffix"
                    )
                target = tmp / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                (image() if callable(image) else image).save(target)
            old = None
            if self._path.exists():
                old = self._path.parent / f".{self._path.name}.old-{uuid.uuid4().hex[:8]}"
                os.replace(self._path, old)
            os.replace(tmp, self._path)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def _describe(self) -> dict[str, Any]:
        return self._source.describe()

    def _exists(self) -> bool:
        return self._source.exists()
