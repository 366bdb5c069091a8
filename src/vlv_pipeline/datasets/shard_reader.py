"""The shard reader: ``CacheRows``, the cached tensors of a fixed list of images read one image
(or one batch) at a time from a shard store's memory-mapped Arrow shards (``shard_store``),
for a DataLoader."""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from vlv_pipeline.datasets.shard_format import CorruptCacheError
from vlv_pipeline.errors import MissingEntryError

if TYPE_CHECKING:
    from vlv_pipeline.datasets.shard_store import LatentCache


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
            raise MissingEntryError(
                f"{len(missing)} image(s) are not in the {cache.KIND} {cache.path} (e.g. "
                f"{missing[0][:12]}...): run {cache.REBUILD}"
            )
        self.cache = type(cache).__new__(type(cache))  # a light copy: path and shard list
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
                f"{self.cache.KIND} shard {path} is corrupt or missing ({error}); run "
                f"{self.cache.REBUILD}: it drops the damaged shard and encodes its images again"
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
