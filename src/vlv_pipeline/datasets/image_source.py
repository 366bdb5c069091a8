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
source streams its records when iterated. What it may read (links, parquet paths outside
the file's folder, a byte cap per file) is ``params:ingest``'s, applied where ingest and
caption screen the source (``imaging/reading.py``), not an option of the entry.

A source is read-only unless the catalog says ``writable: true`` (folder or webdataset).
The shapes world's `world` pipeline writes its images through such an entry, so what it
renders IS the raw source that `ingest` reads; a user's own data stays read-only. A
writable webdataset entry writes shards as img2dataset does (``{key}.jpg``, ``{key}.txt``,
``{key}.json``; ``samples_per_shard`` per tar): the rehearsal environment's input.

A save is atomic as a whole (``files.atomic_target``): every image (or tar) is written into a
hidden temporary folder beside the source, the folder is flushed to disk (each file in it,
``files.fsync_tree``) and then renamed into place, swapping out the previous folder
(``files.replace_tree``). The files inside are written in place within that temporary folder:
no reader sees them before the rename, and a crash before it leaves only a stale temporary
that the next save removes. A crash between the swap's two renames leaves the previous folder
as a backup that the next load or save puts back (``files.restore_backup``).
"""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any

from kedro.io import AbstractDataset, DatasetError
from PIL import Image

from vlv_pipeline.errors import ParameterError, SaveError
from vlv_pipeline.files import atomic_target, restore_backup
from vlv_pipeline.imaging.source_kinds import open_source
from vlv_pipeline.imaging.sources import ImageSource


class ImageSourceDataset(AbstractDataset[Any, ImageSource]):
    """Images in a folder, a parquet file or webdataset shards (read-only unless ``writable``)."""

    def __init__(
        self,
        *,
        kind: str,
        path: str,
        writable: bool = False,
        samples_per_shard: int = 10000,
        metadata: dict[str, Any] | None = None,
        **options: Any,
    ) -> None:
        """Check ``kind`` and its options at once (raises ``ValueError`` naming a bad one)."""
        if writable and kind not in ("folder", "webdataset"):
            raise ParameterError(f"writable: true needs kind: folder or webdataset, not {kind!r}")
        if samples_per_shard < 1:
            raise ParameterError("samples_per_shard must be >= 1")
        self._source = open_source(kind, path, **options)
        self._kind = kind
        self._path = Path(path)
        self._writable = writable
        self._per_shard = samples_per_shard
        self.metadata = metadata

    def load(self) -> ImageSource:
        if self._writable:  # a save killed mid-swap left the previous folder aside
            restore_backup(self._path)
        return self._source

    def save(self, data: Mapping[str, Any]) -> None:
        """Write ``{relative/path.png: image}`` as the whole folder (or set of shards).

        A value is an image or a callable returning one (with an optional ``caption``
        attribute, as the world's ``LazyImage`` has). Images are
        written one at a time (callables are called lazily) into a hidden sibling folder,
        flushed to disk, that then replaces the old one (module docstring), so a crash leaves
        the previous folder intact and no stale images survive a smaller rewrite. A folder
        ignores captions (the world keeps them in its labels table); shards carry them as
        ``{key}.txt``. A write that fails (a full disk) is a ``SaveError`` naming the folder.
        """
        if not self._writable:
            raise SaveError(
                f"{self._path} is a read-only image source (your own data): nothing writes to it. "
                "Only the shapes world's `world` pipeline writes raw images, through a catalog "
                "entry with `writable: true`; with your own data run `kedro run --pipeline vlv`."
            )
        with atomic_target(self._path) as tmp:
            tmp.mkdir(parents=True)
            if self._kind == "webdataset":
                self._write_shards(tmp, data)
            else:
                self._write_images(tmp, data)

    def _write_images(self, folder: Path, data: Mapping[str, Any]) -> None:
        """Each image at its relative path under ``folder``."""
        for relative, value in data.items():
            rel = PurePosixPath(relative)
            if rel.is_absolute() or ".." in rel.parts or not rel.suffix:
                raise DatasetError(
                    f"bad image path {relative!r}: need a relative file name with a suffix"
                )
            target = folder / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            _image(value).save(target)

    def _write_shards(self, folder: Path, data: Mapping[str, Any]) -> None:
        """img2dataset's layout: ``00000.tar`` holding ``000000000.jpg/.txt/.json``, ..."""
        items = list(data.items())
        for start in range(0, len(items), self._per_shard):
            shard = start // self._per_shard
            with tarfile.open(folder / f"{shard:05d}.tar", "w") as tar:
                for offset, (relative, value) in enumerate(items[start : start + self._per_shard]):
                    key = f"{shard:05d}{offset:04d}"
                    caption = getattr(value, "caption", None)
                    image = _image(value).convert("RGB")
                    buffer = io.BytesIO()
                    image.save(buffer, "JPEG", quality=95)
                    meta = {
                        "key": key,
                        "status": "success",
                        "caption": caption,
                        "width": image.width,
                        "height": image.height,
                        "original_file": relative,
                    }
                    members = [(f"{key}.jpg", buffer.getvalue())]
                    if caption is not None:
                        members.append((f"{key}.txt", caption.encode("utf-8")))
                    members.append((f"{key}.json", json.dumps(meta).encode("utf-8")))
                    for name, payload in members:
                        info = tarfile.TarInfo(name)
                        info.size = len(payload)
                        tar.addfile(info, io.BytesIO(payload))

    def _describe(self) -> dict[str, Any]:
        return self._source.describe()

    def _exists(self) -> bool:
        if self._writable:
            restore_backup(self._path)
        return self._source.exists()


def _image(value: Any) -> Image.Image:
    """A saved value: an image, or a callable returning one."""
    return value() if callable(value) else value
