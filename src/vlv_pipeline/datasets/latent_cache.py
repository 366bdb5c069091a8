"""A sharded cache of VAE posteriors (mean and std per image), keyed by image_id.

Layout of a cache directory::

    index.json                  {"fingerprint": {...}, "shards": [{"file", "count"}, ...]}
    shard-<hex>.safetensors     tensors "mean" and "std" (n, C, h, w), metadata "image_ids"

Shards are written one at a time, each to a temporary name then renamed, and the index is
rewritten (atomically) after every shard, so an interrupted encoding keeps every finished
shard and a rerun continues from there. The fingerprint records what made the latents (the
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

import json
import os
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from kedro.io import AbstractDataset, DatasetError
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

INDEX = "index.json"


class CorruptCacheError(DatasetError):
    """A shard of the cache is missing or unreadable."""


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.write_text(text)
    os.replace(tmp, path)


class LatentCache:
    """A handle on a cache directory: what is cached, adding shards, reading latents."""

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
                for row, image_id in enumerate(shard["image_ids"]):
                    self._ids[image_id] = (i, row)
        return self._ids

    # -- writing -----------------------------------------------------------------------
    def reset(self, fingerprint: dict) -> None:
        """Start afresh for latents made by ``fingerprint``; old shards are removed."""
        old = [self.path / s["file"] for s in self.shards]
        self.path.mkdir(parents=True, exist_ok=True)
        self.fingerprint, self.shards, self._ids = fingerprint, [], None
        self._write_index()
        for path in old:
            path.unlink(missing_ok=True)

    def add(self, image_ids: list[str], mean: torch.Tensor, std: torch.Tensor) -> None:
        """Write one shard (atomically) and record it in the index."""
        if self.fingerprint is None:
            raise DatasetError("call reset(fingerprint) before adding latents to a new cache")
        if not (len(image_ids) == len(mean) == len(std)):
            raise ValueError("image_ids, mean and std must have the same length")
        name = f"shard-{uuid.uuid4().hex[:12]}.safetensors"
        tmp = self.path / f".{name}.tmp"
        save_file(
            {"mean": mean.contiguous().cpu(), "std": std.contiguous().cpu()},
            str(tmp),
            metadata={"image_ids": json.dumps(list(image_ids))},
        )
        os.replace(tmp, self.path / name)
        self.shards.append({"file": name, "count": len(image_ids), "image_ids": list(image_ids)})
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
                f"latent cache shard {path} is missing; delete {self.path} (or rerun "
                "`kedro run --pipeline cache` after deleting it) to rebuild"
            )
        try:
            tensors = load_file(str(path))
        except (SafetensorError, OSError, ValueError) as error:
            raise CorruptCacheError(
                f"latent cache shard {path} is corrupt ({error}); delete {self.path} to rebuild"
            ) from error
        if set(tensors) != {"mean", "std"} or len(tensors["mean"]) != shard["count"]:
            raise CorruptCacheError(
                f"latent cache shard {path} does not hold {shard['count']} means and stds; "
                f"delete {self.path} to rebuild"
            )
        return tensors

    def load(self, image_ids: Iterable[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and std of the given images, in the given order."""
        image_ids = list(image_ids)
        where = self._locations()
        missing = [i for i in image_ids if i not in where]
        if missing:
            raise KeyError(
                f"{len(missing)} image(s) are not in the latent cache {self.path} (e.g. "
                f"{missing[0][:12]}...): run `kedro run --pipeline cache`"
            )
        needed = sorted({where[i][0] for i in image_ids})
        loaded = {i: self._load_shard(self.shards[i]) for i in needed}
        mean = torch.stack([loaded[where[i][0]]["mean"][where[i][1]] for i in image_ids])
        std = torch.stack([loaded[where[i][0]]["std"][where[i][1]] for i in image_ids])
        return mean, std

    def verify(self) -> None:
        """Read every shard once (raises ``CorruptCacheError`` naming a bad one)."""
        for shard in self.shards:
            self._load_shard(shard)


class LatentCacheDataset(AbstractDataset[LatentCache, LatentCache]):
    """Kedro dataset whose ``load()`` is a :class:`LatentCache` handle on a directory.

    Nodes extend the cache through the handle (shard by shard, so memory stays bounded);
    ``save(handle)`` only checks that the handle's index is on disk at this path.
    """

    def __init__(self, *, path: str, metadata: dict[str, Any] | None = None):
        self._path = Path(path)
        self.metadata = metadata

    def load(self) -> LatentCache:
        return LatentCache(self._path)

    def save(self, data: LatentCache) -> None:
        if not isinstance(data, LatentCache):
            raise DatasetError(f"expected a LatentCache handle, got {type(data).__name__}")
        if data.path.resolve() != self._path.resolve():
            raise DatasetError(f"the handle writes to {data.path}, this dataset is {self._path}")
        if not (self._path / INDEX).is_file():
            raise DatasetError(f"latent cache {self._path} has no index: nothing was written")

    def _exists(self) -> bool:
        return (self._path / INDEX).is_file()

    def _describe(self) -> dict[str, Any]:
        return {"path": str(self._path)}
