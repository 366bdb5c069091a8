"""Map-style training sets: per-item reads equal the old whole-split loads, bounded memory."""

from __future__ import annotations

import pickle
import re

import pytest
import torch
from PIL import Image

from vlv_pipeline.datasets.shard_format import CorruptCacheError
from vlv_pipeline.datasets.shard_store import LatentCache
from vlv_pipeline.imaging.folder_source import FolderSource
from vlv_pipeline.imaging.sources import iter_images
from vlv_pipeline.training.data import BoundedCache, ImagePixels, Zipped
from vlv_pipeline.world.data import pil_to_tensor, to_unit_range


@pytest.fixture
def folder(tmp_path):
    import hashlib

    import pandas as pd

    g = torch.Generator().manual_seed(0)
    rows = []
    for k in range(6):
        path = tmp_path / "images" / f"{k}.png"
        path.parent.mkdir(exist_ok=True)
        Image.fromarray((torch.rand(24, 20, 3, generator=g) * 255).byte().numpy()).save(path)
        rows.append(
            {"image_id": hashlib.sha256(path.read_bytes()).hexdigest(), "source": path.name}
        )
    return FolderSource(tmp_path / "images"), pd.DataFrame(rows)


def test_uint8_pixels_become_the_floats_the_old_path_made(folder):
    source, manifest = folder
    old = dict(iter_images(source, manifest, 16))
    pixels = ImagePixels(source, list(manifest["source"]), list(manifest["image_id"]), 16)
    for i in reversed(range(len(pixels))):
        item = pixels[i]
        assert item.dtype == torch.uint8 and item.shape == (3, 16, 16)
        expected = pil_to_tensor(old[manifest["image_id"][i]])
        assert torch.equal(to_unit_range(item), expected)  # bit for bit
    assert torch.equal(to_unit_range(expected), expected)  # floats pass through


def test_a_changed_image_is_refused_by_name(folder):
    source, manifest = folder
    pixels = ImagePixels(source, list(manifest["source"]), list(manifest["image_id"]), 16)
    Image.new("RGB", (20, 24)).save(source.path + "/2.png")
    with pytest.raises(ValueError, match="item 2 changed since ingest"):
        pixels[2]


def test_cache_rows_equal_the_whole_split_load(tmp_path):
    cache = LatentCache(tmp_path / "cache")
    cache.reset({"test": 1})
    ids = [f"{k:064x}" for k in range(7)]
    tensors = torch.randn(7, 2, 3, 3), torch.rand(7, 2, 3, 3)
    cache.add(ids[:4], tensors[0][:4], tensors[1][:4])
    cache.add(ids[4:], tensors[0][4:], tensors[1][4:])
    order = [5, 0, 3, 6]
    rows = LatentCache(tmp_path / "cache").rows([ids[i] for i in order])
    mean, std = cache.load([ids[i] for i in order])
    rows = pickle.loads(pickle.dumps(rows))  # as a worker gets it
    for k in range(len(order)):
        assert torch.equal(rows[k][0], mean[k]) and torch.equal(rows[k][1], std[k])
    only_std = cache.rows(ids[:2], fields=("std",))[1]
    assert len(only_std) == 1 and torch.equal(only_std[0], tensors[1][1])
    with pytest.raises(ValueError, match=r"no field\(s\) \['var'\]"):
        cache.rows(ids, fields=("var",))
    with pytest.raises(KeyError, match="not in the latent cache"):
        cache.rows(["f" * 64])
    reader = LatentCache(tmp_path / "cache").rows(ids[:1] + ids[5:])
    shard = tmp_path / "cache" / cache.shards[1]["file"]
    shard.write_bytes(shard.read_bytes()[:-50])  # cut inside the data
    assert reader[0][0].shape == (2, 3, 3)
    with pytest.raises(CorruptCacheError, match=re.escape(shard.name)):
        reader[1]
    shard.write_bytes(b"garbage")
    with pytest.raises(CorruptCacheError, match=re.escape(shard.name)):
        LatentCache(tmp_path / "cache").rows(ids[:1])


class Counting(torch.utils.data.Dataset):
    reads = 0

    def __len__(self):
        return 10

    def __getitem__(self, i):
        Counting.reads += 1
        return torch.full((25,), i, dtype=torch.int32), torch.zeros(0)  # 100 bytes


def test_bounded_cache_keeps_at_most_its_budget():
    Counting.reads = 0
    cached = BoundedCache(Counting(), max_bytes=300)
    for _ in range(2):
        for i in range(3):
            assert cached[i][0][0] == i
    assert Counting.reads == 3 and cached.held == 300  # the second pass came from memory
    cached[7]
    assert cached.held == 300 and 0 not in cached._items  # least recently used went first
    # a batch of cached and new items, where keeping the new ones evicts cached ones of it
    assert list(cached._items) == [1, 2, 7]  # 1 is the least recently used
    batch = cached.__getitems__([3, 1, 2, 7])  # keeping 3 first would evict 1
    assert [int(item[0][0]) for item in batch] == [3, 1, 2, 7] and cached.held == 300
    fresh = pickle.loads(pickle.dumps(cached))
    assert fresh.held == 0 and not fresh._items  # a worker starts empty
    nothing = BoundedCache(Counting(), max_bytes=0)
    nothing[1]
    assert nothing.held == 0


def test_zipped_flattens_parts_and_checks_lengths():
    a = torch.utils.data.TensorDataset(torch.arange(4), torch.arange(4) * 2)
    b = torch.utils.data.TensorDataset(torch.arange(4) + 10)
    item = Zipped(None, a, b)[3]
    assert item[0].numel() == 0 and [int(t) for t in item[1:]] == [3, 6, 13]
    with pytest.raises(ValueError, match="different lengths"):
        Zipped(a, torch.utils.data.TensorDataset(torch.arange(5)))
