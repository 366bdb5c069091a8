"""Map-style training sets that read one image at a time, so no split sits in memory.

Items are read by position (a seeded sampler picks them; DataLoader workers read them):

- ``ImagePixels``: a manifest's images decoded per item from their source (random access,
  see ``imaging.random_access``), checked against their ``image_id`` (sha256), normalised
  to ``resolution``, as **uint8** ``(3, S, S)``. They become floats on the device, in the
  objective (``world.data.to_unit_range``), so a batch travels at a quarter of the float32 size.
- ``CacheRows`` (datasets.shard_reader): one image's cached tensors.
- ``Zipped``: item ``i`` of several such sets, as one tuple.
- ``BoundedCache``: keeps decoded items up to a byte budget per process (least recently
  used out first), so a small world is read from disk once and a large one never piles up.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from vlv_pipeline.errors import InputError
from vlv_pipeline.imaging.checks import ImageRejected, decode_normalised
from vlv_pipeline.imaging.random_access import byte_reader, manifest_locations
from vlv_pipeline.imaging.sources import ImageSource


class ImagePixels(Dataset):
    """Item ``i``: the image of ``refs[i]`` as uint8 ``(3, S, S)``, verified against ``image_ids[i]``.

    ``locations``: where ingest found each image's bytes in a tar shard (see
    ``imaging.random_access.manifest_locations``)."""

    @classmethod
    def of_manifest(cls, source: ImageSource, rows, resolution: int | None) -> ImagePixels:
        """The images of manifest ``rows``, in their order."""
        return cls(
            source,
            rows["source"].astype(str).tolist(),
            rows["image_id"].astype(str).tolist(),
            resolution,
            manifest_locations(rows),
        )

    def __init__(
        self,
        source: ImageSource,
        refs: Sequence[str],
        image_ids: Sequence[str],
        resolution: int | None,
        locations: Sequence[tuple[int, int] | None] | None = None,
    ) -> None:
        if len(refs) != len(image_ids):
            raise ValueError("give one image_id per ref")
        self.reader = byte_reader(source, refs, locations)
        self.image_ids = np.array([i.encode("ascii") for i in image_ids], dtype=np.bytes_)
        self.resolution = resolution

    def __len__(self) -> int:
        return len(self.reader)

    def __getitem__(self, i: int) -> torch.Tensor:
        data = self.reader.read(i)
        expected = self.image_ids[i].decode("ascii")
        source = self.reader.source
        if hashlib.sha256(data).hexdigest() != expected:
            raise InputError(f"{source!r}: item {i} changed since ingest (sha256 != {expected})")
        try:
            image = decode_normalised(data, self.resolution)
        except ImageRejected as error:
            raise InputError(
                f"{source!r}: item {i} ({expected}) no longer decodes: {error}"
            ) from error
        return torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1).contiguous()


class Zipped(Dataset):
    """Item ``i`` of every part, flattened into one tuple (``None`` parts give an empty tensor)."""

    def __init__(self, *parts: Dataset | None) -> None:
        sizes = {len(p) for p in parts if p is not None}
        if len(sizes) != 1:
            raise ValueError(f"parts of different lengths: {sorted(sizes)}")
        self.parts, self.size = parts, sizes.pop()

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, i: int) -> tuple[torch.Tensor, ...]:
        return self.__getitems__([i])[0]

    def __getitems__(self, indices: list[int]) -> list[tuple[torch.Tensor, ...]]:
        """A batch's items; parts that read a batch at once (the caches) do so."""
        out: list[list[torch.Tensor]] = [[] for _ in indices]
        for part in self.parts:
            if part is None:
                for item in out:
                    item.append(torch.empty(0, dtype=torch.uint8))
                continue
            items = _items(part, indices)
            for item, got in zip(out, items, strict=True):
                item.extend(got if isinstance(got, tuple) else (got,))
        return [tuple(item) for item in out]


def _items(dataset: Dataset, indices: list[int]) -> list:
    if hasattr(dataset, "__getitems__"):
        return dataset.__getitems__(indices)
    return [dataset[i] for i in indices]


def _nbytes(item) -> int:
    if isinstance(item, torch.Tensor):
        return item.numel() * item.element_size()
    return sum(_nbytes(part) for part in item)


class BoundedCache(Dataset):
    """``dataset`` with its items kept in memory up to ``max_bytes`` per process (LRU).

    Each DataLoader worker has its own cache (worker processes share no memory), so the
    bound for a run is ``max_bytes x max(1, num_workers)``. ``max_bytes=0`` keeps nothing.
    """

    def __init__(self, dataset: Dataset, max_bytes: int) -> None:
        if max_bytes < 0:
            raise ValueError("max_bytes must be >= 0")
        self.dataset, self.max_bytes = dataset, max_bytes
        self._items: OrderedDict[int, object] = OrderedDict()
        self.held = 0

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        return self.__getitems__([i])[0]

    def __getitems__(self, indices: list[int]) -> list:
        found = [self._items.get(i) for i in indices]
        for i, item in zip(indices, found, strict=True):
            if item is not None:  # used now: evicted last (keeping a new item may still
                self._items.move_to_end(i)  # evict it; this batch holds it anyway)
        missing = [i for i, item in zip(indices, found, strict=True) if item is None]
        read = iter(_items(self.dataset, missing) if missing else ())
        out = []
        for i, item in zip(indices, found, strict=True):
            if item is None:
                item = next(read)
                self._keep(i, item)
            out.append(item)
        return out

    def _keep(self, i: int, item) -> None:
        size = _nbytes(item)
        if size > self.max_bytes or i in self._items:
            return
        while self.held + size > self.max_bytes:
            self.held -= _nbytes(self._items.popitem(last=False)[1])
        self._items[i] = item
        self.held += size

    def __getstate__(self) -> dict:  # a worker starts with an empty cache of its own
        state = dict(self.__dict__)
        state["_items"], state["held"] = OrderedDict(), 0
        return state
