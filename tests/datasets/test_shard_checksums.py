"""Each cache shard records a checksum when written; readers check it once per shard and
process, before Arrow reads the file (issue 26, item 8)."""

from __future__ import annotations

import json
import logging
import zlib

import pytest
import torch

from vlv_pipeline.datasets import shard_store
from vlv_pipeline.datasets.cache_extension import begin_extension
from vlv_pipeline.datasets.shard_format import CorruptCacheError
from vlv_pipeline.datasets.shard_store import EmbeddingCache, LatentCache

FP = {"weights_sha256": "a", "resolution": None}


def _cache(path, shards=2, rows=16, cls=LatentCache):
    cache = cls(path)
    cache.reset(FP)
    g = torch.Generator().manual_seed(0)
    for s in range(shards):
        ids = [f"s{s}-{i}" for i in range(rows)]
        cache.add(ids, torch.randn(rows, 4, 16, 16, generator=g), torch.rand(rows, 4, 16, 16))
    return cls(path)


def _overwrite_middle(path, fraction=0.25):
    """What a failing disk or a bad copy does: bytes changed in place, the size kept."""
    data = bytearray(path.read_bytes())
    start, length = len(data) // 3, int(len(data) * fraction)
    data[start : start + length] = bytes((b + 1) % 256 for b in data[start : start + length])
    path.write_bytes(bytes(data))


def _index(path):
    return json.loads((path / "index.json").read_text())


@pytest.fixture(autouse=True)
def _fresh_process(monkeypatch):
    """Each test as a new process: no shard verified yet."""
    monkeypatch.setattr(shard_store, "_VERIFIED", set(), raising=False)
    monkeypatch.setattr(shard_store, "_WARNED", set(), raising=False)


def test_the_index_records_each_shards_size_and_checksum(tmp_path):
    cache = _cache(tmp_path)
    for shard in _index(tmp_path)["shards"]:
        data = (tmp_path / shard["file"]).read_bytes()
        assert shard["bytes"] == len(data)
        assert shard["checksum"] == f"crc32:{zlib.crc32(data):08x}"
    part = LatentCache(tmp_path, part=3)
    part.add(["p"], torch.zeros(1, 4, 16, 16), torch.ones(1, 4, 16, 16))
    (entry,) = json.loads((tmp_path / "index.rank3.json").read_text())["shards"]
    assert entry["checksum"].startswith("crc32:") and entry["bytes"] > 0
    LatentCache(tmp_path).merge_parts()
    assert _index(tmp_path)["shards"][-1] == entry
    assert len(cache.shards) == 2


def test_a_shard_changed_in_place_is_refused_before_arrow_reads_it(tmp_path, monkeypatch):
    from datasets import Dataset

    cache = _cache(tmp_path)
    shard = tmp_path / cache.shards[1]["file"]
    _overwrite_middle(shard)
    opened = []
    real = Dataset.from_file
    monkeypatch.setattr(
        Dataset, "from_file", staticmethod(lambda p, *a, **k: opened.append(p) or real(p, *a, **k))
    )
    with pytest.raises(CorruptCacheError) as refused:
        LatentCache(tmp_path).verify()
    message = str(refused.value)
    assert str(shard) in message and "checksum" in message, message
    assert "kedro run --pipeline cache" in message, message  # the command that rebuilds it
    assert str(shard) not in opened  # never handed to Arrow
    with pytest.raises(CorruptCacheError, match=shard.name):
        LatentCache(tmp_path).load(["s1-0"])


def test_a_changed_size_is_refused_without_reading(tmp_path):
    cache = _cache(tmp_path, shards=1)
    shard = tmp_path / cache.shards[0]["file"]
    with shard.open("ab") as file:
        file.write(b"\0" * 10)
    with pytest.raises(CorruptCacheError, match=rf"{shard.name}.*bytes"):
        LatentCache(tmp_path).verify()


def test_each_shard_is_hashed_once_per_process(tmp_path, monkeypatch):
    _cache(tmp_path, shards=3)
    shard_store._VERIFIED.clear()  # a new process: the writer's own hashes are not known here
    hashed = []
    real = shard_store._file_checksum
    monkeypatch.setattr(shard_store, "_file_checksum", lambda p: hashed.append(p) or real(p))
    LatentCache(tmp_path).verify()
    cache = LatentCache(tmp_path)
    rows = cache.rows(sorted(cache.image_ids()))
    rows.__getitems__(list(range(len(rows))))
    cache.load(["s0-1", "s2-3"])
    LatentCache(tmp_path).verify()
    assert len(hashed) == 3 and len(set(hashed)) == 3


def test_a_shard_changed_after_it_was_verified_is_checked_again(tmp_path):
    cache = _cache(tmp_path, shards=1)
    cache.verify()
    _overwrite_middle(tmp_path / cache.shards[0]["file"])
    with pytest.raises(CorruptCacheError, match="checksum"):
        LatentCache(tmp_path).verify()


def test_an_old_cache_without_checksums_is_read_with_a_warning_then_gets_them(tmp_path, caplog):
    _cache(tmp_path, cls=EmbeddingCache)
    index = _index(tmp_path)
    for shard in index["shards"]:
        del shard["checksum"], shard["bytes"]
    (tmp_path / "index.json").write_text(json.dumps(index))
    with caplog.at_level(logging.WARNING, logger=shard_store.__name__):
        old = EmbeddingCache(tmp_path)
        old.verify()
        old.load(["s0-0"])
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings  # once per cache, not per shard or read
    assert "no checksums" in warnings[0] and "kedro run --pipeline synthesize" in warnings[0]

    begin_extension(EmbeddingCache(tmp_path), FP)  # the next synthesize run records them
    for shard in _index(tmp_path)["shards"]:
        data = (tmp_path / shard["file"]).read_bytes()
        assert shard["checksum"] == f"crc32:{zlib.crc32(data):08x}"


def test_the_cache_run_drops_a_damaged_shard_so_its_images_are_encoded_again(tmp_path, caplog):
    cache = _cache(tmp_path, shards=3)
    bad = tmp_path / cache.shards[1]["file"]
    _overwrite_middle(bad)
    missing = tmp_path / cache.shards[2]["file"]
    missing.unlink()
    with caplog.at_level(logging.WARNING, logger=shard_store.__name__):
        repaired = begin_extension(LatentCache(tmp_path), FP)
    assert repaired.image_ids() == {f"s0-{i}" for i in range(16)}  # the rest: to encode again
    assert not bad.exists() and [s["file"] for s in _index(tmp_path)["shards"]] == [
        cache.shards[0]["file"]
    ]
    logged = " ".join(r.getMessage() for r in caplog.records)
    assert bad.name in logged and missing.name in logged


def test_an_old_shard_is_read_in_full_before_its_checksum_is_trusted(tmp_path):
    """A shard with no checksum whose string offsets point a gigabyte past its data opens with
    Arrow (which reads lazily); the cache run validates it in full and drops it instead of
    recording a checksum for it."""
    import numpy as np

    cache = LatentCache(tmp_path)
    cache.reset(FP)
    cache.add(["aa", "bb"], torch.zeros(2, 1, 2, 2), torch.ones(2, 1, 2, 2))
    cache.add(["cc", "dd"], torch.zeros(2, 1, 2, 2), torch.ones(2, 1, 2, 2))
    bad = tmp_path / cache.shards[0]["file"]
    offsets = np.array([0, 2, 4], dtype=np.int32).tobytes()
    huge = np.array([0, 2, 1 << 30], dtype=np.int32).tobytes()
    bad.write_bytes(bad.read_bytes().replace(offsets, huge))
    index = _index(tmp_path)
    for shard in index["shards"]:
        del shard["checksum"], shard["bytes"]
    (tmp_path / "index.json").write_text(json.dumps(index))
    shard_store._VERIFIED.clear()

    repaired = begin_extension(LatentCache(tmp_path), FP)
    assert repaired.image_ids() == {"cc", "dd"} and not bad.exists()
    (kept,) = _index(tmp_path)["shards"]
    assert kept["checksum"].startswith("crc32:")
