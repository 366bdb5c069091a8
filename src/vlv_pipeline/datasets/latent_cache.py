"""A sharded cache of VAE posteriors (mean and std per image), keyed by image_id.

Layout of a cache directory::

    index.json                  {"fingerprint": {...}, "shards": [{"file", "count"}, ...]}
    shard-<hex>.safetensors     tensors "mean" and "std" (n, C, h, w), metadata "image_ids"

Each shard's header holds its image ids; the index names shards only, so rewriting it
after a shard costs O(shards), not O(images). Shards are written one at a time, each to a
temporary name then renamed, and the index is rewritten (atomically) after every shard, so
an interrupted encoding keeps every finished shard and a rerun continues from there. The fingerprint records what made the latents (the
VAE's weights hash, its config, the resolution); a cache with another fingerprint is
discarded rather than mixed.

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
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

INDEX = "index.json"


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
                    f"latent cache index {index_path} is not valid JSON ({error}); delete "
                    f"{self.path} to rebuild the cache"
                ) from error
        else:
            index = {"fingerprint": None, "shards": []}
        self.fingerprint: dict | None = index["fingerprint"]
        self.shards: list[dict] = index["shards"]
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

    def _shard_ids(self, shard: dict) -> list[str]:
        """A shard's image ids: from its own header (older indexes also listed them)."""
        if "image_ids" in shard:
            return shard["image_ids"]
        path = self.path / shard["file"]
        try:
            with safe_open(str(path), framework="pt") as handle:
                ids = json.loads((handle.metadata() or {})["image_ids"])
        except (SafetensorError, OSError, ValueError, KeyError) as error:
            raise CorruptCacheError(
                f"{self.KIND} shard {path} is missing or has no image ids ({error}); delete "
                f"{self.path} to rebuild"
            ) from error
        if len(ids) != shard["count"]:
            raise CorruptCacheError(
                f"{self.KIND} shard {path} lists {len(ids)} images, the index {shard['count']}; "
                f"delete {self.path} to rebuild"
            )
        return ids

    # -- writing -----------------------------------------------------------------------
    def reset(self, fingerprint: dict) -> None:
        """Start afresh for latents made by ``fingerprint``; old shards are removed."""
        old = [self.path / s["file"] for s in self.shards]
        self.path.mkdir(parents=True, exist_ok=True)
        self.fingerprint, self.shards, self._ids = fingerprint, [], None
        self._write_index()
        for path in old:
            path.unlink(missing_ok=True)

    def add(self, image_ids: list[str], *tensors: torch.Tensor) -> None:
        """Write one shard (atomically) of ``FIELDS`` tensors and record it in the index."""
        if self.fingerprint is None:
            raise DatasetError(f"call reset(fingerprint) before adding to a new {self.KIND}")
        if len(tensors) != len(self.FIELDS) or any(len(t) != len(image_ids) for t in tensors):
            raise ValueError(
                f"give image_ids and one tensor per field {self.FIELDS}, all the same length"
            )
        name = f"shard-{uuid.uuid4().hex[:12]}.safetensors"
        tmp = self.path / f".{name}.tmp"
        try:
            save_file(
                {k: t.contiguous().cpu() for k, t in zip(self.FIELDS, tensors, strict=True)},
                str(tmp),
                metadata={"image_ids": json.dumps(list(image_ids))},
            )
            os.replace(tmp, self.path / name)
        except OSError as error:  # disk full, permissions: the index still lists only whole shards
            from vlv_pipeline.datasets.model_directory import unwritable

            tmp.unlink(missing_ok=True)
            raise DatasetError(unwritable(self.path / name, error)) from error
        self.shards.append({"file": name, "count": len(image_ids)})  # ids: in the shard
        self._ids = None
        self._write_index()

    def _write_index(self) -> None:
        _write_atomic(
            self.path / INDEX,
            json.dumps({"fingerprint": self.fingerprint, "shards": self.shards}),
        )

    # -- reading -----------------------------------------------------------------------
    def _load_shard(self, shard: dict) -> dict[str, torch.Tensor]:
        path = self.path / shard["file"]
        if not path.is_file():
            raise CorruptCacheError(
                f"{self.KIND} shard {path} is missing; delete {self.path} (or rerun "
                f"{self.REBUILD} after deleting it) to rebuild"
            )
        try:
            tensors = load_file(str(path))
        except (SafetensorError, OSError, ValueError) as error:
            raise CorruptCacheError(
                f"{self.KIND} shard {path} is corrupt ({error}); delete {self.path} to rebuild"
            ) from error
        if set(tensors) != set(self.FIELDS) or any(
            len(t) != shard["count"] for t in tensors.values()
        ):
            raise CorruptCacheError(
                f"{self.KIND} shard {path} does not hold {shard['count']} rows of "
                f"{self.FIELDS}; delete {self.path} to rebuild"
            )
        return tensors

    def load(self, image_ids: Iterable[str]) -> tuple[torch.Tensor, ...]:
        """The ``FIELDS`` tensors of the given images, in the given order."""
        image_ids = list(image_ids)
        where = self._locations()
        missing = [i for i in image_ids if i not in where]
        if missing:
            raise KeyError(
                f"{len(missing)} image(s) are not in the {self.KIND} {self.path} (e.g. "
                f"{missing[0][:12]}...): run {self.REBUILD}"
            )
        needed = sorted({where[i][0] for i in image_ids})
        loaded = {i: self._load_shard(self.shards[i]) for i in needed}
        return tuple(
            torch.stack([loaded[where[i][0]][field][where[i][1]] for i in image_ids])
            for field in self.FIELDS
        )

    def rows(self, image_ids: Iterable[str], fields: tuple[str, ...] | None = None) -> CacheRows:
        """Per-image reads of the given images' ``fields`` (default: all ``FIELDS``), for a
        DataLoader: nothing is loaded yet."""
        return CacheRows(self, list(image_ids), fields)

    def verify(self) -> None:
        """Read every shard once (raises ``CorruptCacheError`` naming a bad one)."""
        for shard in self.shards:
            self._load_shard(shard)


class CacheRows:
    """The ``FIELDS`` tensors of a fixed list of images, one image at a time.

    Shards are opened lazily (memory-mapped by safetensors) in each process that reads, at
    most ``MAX_OPEN_SHARDS`` at once, so a DataLoader worker holds the rows it reads and not
    the split. Per image it keeps 8 bytes (shard number and row). Picklable.
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
        self.kind, self.root, self.rebuild = cache.KIND, cache.path, cache.REBUILD
        self.fields = tuple(fields or cache.FIELDS)
        self.files = [cache.path / s["file"] for s in cache.shards]
        self.counts = [s["count"] for s in cache.shards]
        for path in {self.files[where[i][0]] for i in image_ids}:
            if not path.is_file():
                raise CorruptCacheError(
                    f"{self.kind} shard {path} is missing; delete {self.root} to rebuild"
                )
        self.shard = np.array([where[i][0] for i in image_ids], dtype=np.int32)
        self.row = np.array([where[i][1] for i in image_ids], dtype=np.int32)

    def __len__(self) -> int:
        return len(self.shard)

    def _handle(self, number: int):
        handles = self.__dict__.setdefault("_handles", OrderedDict())
        handle = handles.pop(number, None)
        if handle is None:
            path = self.files[number]
            try:
                handle = safe_open(str(path), framework="pt")
                shapes = {f: handle.get_slice(f).get_shape() for f in self.fields}
            except (SafetensorError, OSError, ValueError) as error:
                raise CorruptCacheError(
                    f"{self.kind} shard {path} is corrupt or missing ({error}); delete "
                    f"{self.root} to rebuild"
                ) from error
            if any(shape[0] != self.counts[number] for shape in shapes.values()):
                raise CorruptCacheError(
                    f"{self.kind} shard {path} does not hold {self.counts[number]} rows of "
                    f"{self.fields}; delete {self.root} to rebuild"
                )
            while len(handles) >= self.MAX_OPEN_SHARDS:
                handles.popitem(last=False)
        handles[number] = handle
        return handle

    def __getitem__(self, i: int) -> tuple[torch.Tensor, ...]:
        handle, row = self._handle(int(self.shard[i])), int(self.row[i])
        return tuple(handle.get_slice(f)[row : row + 1][0] for f in self.fields)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.pop("_handles", None)
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
