"""A sharded cache of VAE posteriors (mean and std per image), keyed by image_id.

Layout of a cache directory::

    index.json             {"format": "arrow", "fingerprint": {...},
                            "shards": [{"file", "count"}, ...]}
    shard-<hex>.arrow      one Hugging Face ``datasets`` Arrow file: columns ``image_id``
                           and one fixed-shape float32 array per field ("mean", "std")

Shards are memory-mapped Arrow files (``datasets.Dataset.from_file``), so reading a row
touches only that row's pages and several processes share the page cache. Each shard lists
its own image ids; the index names shards only, so rewriting it after a shard costs
O(shards), not O(images). Shards are written one at a time, each to a temporary name then
renamed, and the index is rewritten (atomically) after every shard, so an interrupted
encoding keeps every finished shard and a rerun continues from there. The fingerprint
records what made the latents (the VAE's weights hash, its config, the resolution); a cache
with another fingerprint, or of an older format, is discarded rather than mixed.

Catalog (the same directory under two names: the node that extends the cache reads the
previous state and writes the new one)::

    latent_cache_previous:
      type: vlv_pipeline.datasets.latent_cache.LatentCacheDataset
      path: data/04_feature/latent_cache
    latent_cache:
      type: vlv_pipeline.datasets.latent_cache.LatentCacheDataset
      path: data/04_feature/latent_cache
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections import OrderedDict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from kedro.io import AbstractDataset, DatasetError
from kedro_datasets._typing import TablePreview

INDEX = "index.json"
FORMAT = "arrow"


def weights_sha256(module: torch.nn.Module) -> str:
    """A hash of a module's weights (as float32), independent of the dtype it runs in."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().to(torch.float32).cpu().numpy().tobytes())
    return digest.hexdigest()


def vae_fingerprint(vae, resolution: int | None) -> dict:
    """What makes the latents: a hash of the VAE's weights and config, and the resolution."""
    # private keys (_name_or_path, _use_default_values...) say where it was loaded from, not what it is
    config = {k: v for k, v in dict(vae.config).items() if not k.startswith("_")}
    config = json.dumps(config, sort_keys=True, default=str)
    return {
        "weights_sha256": weights_sha256(vae),
        "config_sha256": hashlib.sha256(config.encode()).hexdigest(),
        "resolution": resolution,
    }


class CorruptCacheError(DatasetError):
    """A shard of the cache is missing or unreadable."""


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.write_text(text)
    os.replace(tmp, path)


def _features(fields: tuple[str, ...], tensors: tuple[torch.Tensor, ...]):
    """Arrow column types: the image id, then one fixed-shape float32 array per field."""
    from datasets import Array2D, Array3D, Array4D, Array5D, Features, Value

    arrays = {2: Array2D, 3: Array3D, 4: Array4D, 5: Array5D}
    columns: dict[str, Any] = {"image_id": Value("string")}
    for name, tensor in zip(fields, tensors, strict=True):
        shape = tuple(tensor.shape[1:])
        if len(shape) not in arrays:
            raise ValueError(f"field {name!r}: per-image tensors of 2 to 5 dims, got {shape}")
        columns[name] = arrays[len(shape)](shape=shape, dtype="float32")
    return Features(columns)


class LatentCache:
    """A handle on a cache directory: what is cached, adding shards, reading latents.

    Subclasses cache other per-image tensors by naming their ``FIELDS`` (see
    ``EmbeddingCache``); ``add`` and ``load`` take and return them in that order.
    """

    FIELDS: tuple[str, ...] = ("mean", "std")
    KIND = "latent cache"
    REBUILD = "`kedro run --pipeline cache`"

    def __init__(self, path: str | Path):
        self.path = Path(path)
        index_path = self.path / INDEX
        if index_path.is_file():
            try:
                index = json.loads(index_path.read_text())
            except json.JSONDecodeError as error:
                raise CorruptCacheError(
                    f"{self.KIND} index {index_path} is not valid JSON ({error}); delete "
                    f"{self.path} to rebuild it"
                ) from error
        else:
            index = {"format": FORMAT, "fingerprint": None, "shards": []}
        # a cache written by an older version of the project has no fingerprint to match:
        # the node that extends it rebuilds it, and readers say to
        self.outdated = index.get("format") != FORMAT
        self.fingerprint: dict | None = None if self.outdated else index["fingerprint"]
        self.shards: list[dict] = [] if self.outdated else index["shards"]
        self._ids: dict[str, tuple[int, int]] | None = None

    # -- what is there ---------------------------------------------------------------
    def __len__(self) -> int:
        return sum(s["count"] for s in self.shards)

    def image_ids(self) -> set[str]:
        return set(self._locations())

    def _locations(self) -> dict[str, tuple[int, int]]:
        if self._ids is None:
            self._ids = {}
            for i, shard in enumerate(self.shards):
                for row, image_id in enumerate(self._shard_ids(shard)):
                    self._ids[image_id] = (i, row)
        return self._ids

    def _open(self, shard: dict):
        """The shard as a memory-mapped ``datasets.Dataset``, checked against the index."""
        from datasets import Dataset

        path = self.path / shard["file"]
        if not path.is_file():
            raise CorruptCacheError(
                f"{self.KIND} shard {path} is missing; delete {self.path} (or rerun "
                f"{self.REBUILD} after deleting it) to rebuild"
            )
        try:
            table = Dataset.from_file(str(path))
        except Exception as error:  # pyarrow raises several types for a damaged file
            raise CorruptCacheError(
                f"{self.KIND} shard {path} is corrupt ({error}); delete {self.path} to rebuild"
            ) from error
        if len(table) != shard["count"] or not set(self.FIELDS) <= set(table.column_names):
            raise CorruptCacheError(
                f"{self.KIND} shard {path} does not hold {shard['count']} rows of "
                f"{self.FIELDS}; delete {self.path} to rebuild"
            )
        return table

    def _shard_ids(self, shard: dict) -> list[str]:
        return self._open(shard).data.column("image_id").to_pylist()

    # -- writing -----------------------------------------------------------------------
    def reset(self, fingerprint: dict) -> None:
        """Start afresh for latents made by ``fingerprint``; old shards are removed."""
        old = [p for p in self.path.glob("shard-*") if p.is_file()] if self.path.is_dir() else []
        self.path.mkdir(parents=True, exist_ok=True)
        self.fingerprint, self.shards, self._ids, self.outdated = fingerprint, [], None, False
        self._write_index()
        for path in old:
            path.unlink(missing_ok=True)

    def add(self, image_ids: list[str], *tensors: torch.Tensor) -> None:
        """Write one shard (atomically) of ``FIELDS`` tensors and record it in the index."""
        from datasets.arrow_writer import ArrowWriter

        if self.fingerprint is None:
            raise DatasetError(f"call reset(fingerprint) before adding to a new {self.KIND}")
        if len(tensors) != len(self.FIELDS) or any(len(t) != len(image_ids) for t in tensors):
            raise ValueError(
                f"give image_ids and one tensor per field {self.FIELDS}, all the same length"
            )
        name = f"shard-{uuid.uuid4().hex[:12]}.arrow"
        tmp = self.path / f".{name}.tmp"
        arrays = [t.detach().float().cpu().numpy() for t in tensors]
        writer = None
        try:
            writer = ArrowWriter(path=str(tmp), features=_features(self.FIELDS, tensors))
            writer.write_batch(
                {
                    "image_id": list(image_ids),
                    **{f: list(a) for f, a in zip(self.FIELDS, arrays, strict=True)},
                }
            )
            writer.finalize()
            writer.close()
            os.replace(tmp, self.path / name)
        except OSError as error:  # disk full, permissions: the index still lists only whole shards
            from vlv_pipeline.datasets.model_directory import unwritable

            if writer is not None:
                writer.close()
            tmp.unlink(missing_ok=True)
            raise DatasetError(unwritable(self.path / name, error)) from error
        self.shards.append({"file": name, "count": len(image_ids)})
        self._ids = None
        self._write_index()

    def _write_index(self) -> None:
        _write_atomic(
            self.path / INDEX,
            json.dumps({"format": FORMAT, "fingerprint": self.fingerprint, "shards": self.shards}),
        )

    # -- reading -----------------------------------------------------------------------
    def _check_current(self) -> None:
        if self.outdated:
            raise CorruptCacheError(
                f"{self.KIND} {self.path} was written by an older version of this project; "
                f"run {self.REBUILD} to rebuild it"
            )

    def load(self, image_ids: Iterable[str]) -> tuple[torch.Tensor, ...]:
        """The ``FIELDS`` tensors of the given images, in the given order (for small sets:
        training reads per row through ``rows``)."""
        rows = self.rows(image_ids)
        items = rows.__getitems__(list(range(len(rows))))  # one Arrow take per shard
        if not items:
            return tuple(torch.empty(0) for _ in self.FIELDS)
        return tuple(torch.stack([item[k] for item in items]) for k in range(len(self.FIELDS)))

    def rows(self, image_ids: Iterable[str], fields: tuple[str, ...] | None = None) -> CacheRows:
        """Per-image reads of the given images' ``fields`` (default: all ``FIELDS``), for a
        DataLoader: nothing is loaded yet."""
        self._check_current()
        return CacheRows(self, list(image_ids), fields)

    def verify(self) -> None:
        """Open every shard once (raises ``CorruptCacheError`` naming a bad one)."""
        self._check_current()
        for shard in self.shards:
            self._open(shard)


class CacheRows:
    """The ``fields`` tensors of a fixed list of images, one image (or one batch) at a time.

    Shards are opened lazily (memory-mapped) in each process that reads, at most
    ``MAX_OPEN_SHARDS`` at once, so a DataLoader worker holds the rows it reads and not the
    split. Per image it keeps 8 bytes (shard number and row). Picklable.
    """

    MAX_OPEN_SHARDS = 64

    def __init__(
        self, cache: LatentCache, image_ids: list[str], fields: tuple[str, ...] | None = None
    ) -> None:
        unknown = set(fields or ()) - set(cache.FIELDS)
        if unknown:
            raise ValueError(f"the {cache.KIND} has no field(s) {sorted(unknown)}: {cache.FIELDS}")
        where = cache._locations()
        missing = [i for i in image_ids if i not in where]
        if missing:
            raise KeyError(
                f"{len(missing)} image(s) are not in the {cache.KIND} {cache.path} (e.g. "
                f"{missing[0][:12]}...): run {cache.REBUILD}"
            )
        self.cache = LatentCache.__new__(type(cache))  # a light copy: path and shard list
        self.cache.__dict__.update(path=cache.path, shards=cache.shards, _ids=None)
        self.fields = tuple(fields or cache.FIELDS)
        self.shard = np.array([where[i][0] for i in image_ids], dtype=np.int32)
        self.row = np.array([where[i][1] for i in image_ids], dtype=np.int64)

    @property
    def root(self) -> Path:
        return self.cache.path

    def __len__(self) -> int:
        return len(self.shard)

    def _table(self, number: int):
        """(the shard's memory-mapped pyarrow table, {field: per-image shape})."""
        tables = self.__dict__.setdefault("_tables", OrderedDict())
        table = tables.pop(number, None)
        if table is None:
            shard = self.cache._open(self.cache.shards[number])
            shapes = {f: tuple(shard.features[f].shape) for f in self.fields}
            table = (shard.data.table, shapes)
            while len(tables) >= self.MAX_OPEN_SHARDS:
                tables.popitem(last=False)
        tables[number] = table
        return table

    def _read(self, number: int, rows: list[int]) -> dict[str, np.ndarray]:
        """One Arrow ``take`` of ``rows``; the fixed-shape arrays unnested into numpy (what
        ``datasets``' numpy formatting gives, without its per-call overhead)."""
        import pyarrow as pa

        def nested(kind) -> bool:
            return (
                pa.types.is_list(kind)
                or pa.types.is_large_list(kind)
                or (pa.types.is_fixed_size_list(kind))
            )

        try:
            table, shapes = self._table(number)
            taken = table.select(list(self.fields)).take(rows)
            out = {}
            for field in self.fields:
                values = taken.column(field).combine_chunks()
                values = getattr(values, "storage", values)  # the ArrayND extension's lists
                while nested(values.type):
                    values = values.flatten()
                out[field] = values.to_numpy(zero_copy_only=False).reshape(
                    len(rows), *shapes[field]
                )
            return out
        except CorruptCacheError:
            raise
        except Exception as error:  # a file damaged after it was opened
            path = self.cache.path / self.cache.shards[number]["file"]
            raise CorruptCacheError(
                f"{self.cache.KIND} shard {path} is corrupt or missing ({error}); delete "
                f"{self.cache.path} to rebuild"
            ) from error

    def __getitem__(self, i: int) -> tuple[torch.Tensor, ...]:
        return self.__getitems__([i])[0]

    def __getitems__(self, indices: list[int]) -> list[tuple[torch.Tensor, ...]]:
        """Items ``indices``, read with one Arrow take per shard they fall in."""
        by_shard: dict[int, list[int]] = {}
        for k, i in enumerate(indices):
            by_shard.setdefault(int(self.shard[i]), []).append(k)
        out: list = [None] * len(indices)
        for number, ks in by_shard.items():
            batch = self._read(number, [int(self.row[indices[k]]) for k in ks])
            for j, k in enumerate(ks):
                out[k] = tuple(torch.from_numpy(np.array(batch[f][j])) for f in self.fields)
        return out

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.pop("_tables", None)
        return state


class LatentCacheDataset(AbstractDataset[LatentCache, LatentCache]):
    """Kedro dataset whose ``load()`` is a :class:`LatentCache` handle on a directory.

    Nodes extend the cache through the handle (shard by shard, so memory stays bounded);
    ``save(handle)`` only checks that the handle's index is on disk at this path.
    """

    cache_class = LatentCache

    def __init__(self, *, path: str, metadata: dict[str, Any] | None = None):
        self._path = Path(path)
        self.metadata = metadata

    def load(self) -> LatentCache:
        return self.cache_class(self._path)

    def save(self, data: LatentCache) -> None:
        if not isinstance(data, self.cache_class):
            raise DatasetError(
                f"expected a {self.cache_class.__name__} handle, got {type(data).__name__}"
            )
        if data.path.resolve() != self._path.resolve():
            raise DatasetError(f"the handle writes to {data.path}, this dataset is {self._path}")
        if not (self._path / INDEX).is_file():
            raise DatasetError(f"{self._path} has no index: nothing was written")

    def _exists(self) -> bool:
        return (self._path / INDEX).is_file()

    def preview(self, nrows: int = 50) -> TablePreview:
        """A table for kedro-viz: what made the cache, then one row per shard."""
        cache = self.cache_class(self._path)
        rows = [[f"fingerprint.{k}", str(v)] for k, v in (cache.fingerprint or {}).items()]
        rows.append(["images", str(len(cache))])
        rows += [[s["file"], f"{s['count']} images"] for s in cache.shards[:nrows]]
        return TablePreview(
            {"index": list(range(len(rows))), "columns": ["item", "value"], "data": rows}
        )

    def _describe(self) -> dict[str, Any]:
        return {"path": str(self._path)}


class EmbeddingCache(LatentCache):
    """Stage 2's cache: a frozen VLV encoder's caption embeddings and their text-encoder outputs.

    The fingerprint names the encoder's version (a hash of its weights) and the text encoder's,
    so a retrained stage 1 invalidates it.
    """

    FIELDS = ("embeddings", "conditions")
    KIND = "embedding cache"
    REBUILD = "`kedro run --pipeline synthesize`"


class EmbeddingCacheDataset(LatentCacheDataset):
    """Kedro dataset whose ``load()`` is an :class:`EmbeddingCache` handle on a directory."""

    cache_class = EmbeddingCache
