"""``LatentCacheDataset``: a Kedro dataset whose ``load()`` is a handle
(``shard_store.LatentCache``) on a sharded cache of VAE posteriors (mean and std per image),
keyed by image_id.

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

from pathlib import Path
from typing import Any

from kedro.io import AbstractDataset, DatasetError
from kedro_datasets._typing import TablePreview

from vlv_pipeline.datasets.shard_format import INDEX
from vlv_pipeline.datasets.shard_store import LatentCache


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
