"""Several writers on one shard cache (the ranks of `accelerate launch`), single-process:
part indexes, their merge, and what a rerun keeps of an interrupted run."""

import json

import pytest
import torch

from vlv_pipeline import distributed
from vlv_pipeline.datasets.cache_extension import begin_extension, end_extension, write_shards
from vlv_pipeline.datasets.shard_store import EmbeddingCache, LatentCache

FP = {"weights_sha256": "a", "resolution": None}
OTHER = {"weights_sha256": "b", "resolution": None}


def _add(cache, ids, value=0.0):
    n = len(ids)
    cache.add(list(ids), torch.full((n, 1, 2, 2), value), torch.full((n, 1, 2, 2), value + 1))


def _index(path):
    return json.loads((path / "index.json").read_text())


def test_each_part_records_its_own_shards_and_the_merge_keeps_rank_order(tmp_path):
    main = LatentCache(tmp_path)
    main.reset(FP)
    _add(main, ["old"])
    parts = [LatentCache(tmp_path, part=r) for r in (0, 1)]
    _add(parts[1], ["c", "d"], 3.0)  # rank 1 finishes first: order must not depend on it
    _add(parts[0], ["a"], 1.0)
    _add(parts[0], ["b"], 2.0)
    assert [s["count"] for s in _index(tmp_path)["shards"]] == [1]  # index.json untouched
    assert sorted(p.name for p in main.part_files()) == ["index.rank0.json", "index.rank1.json"]
    assert parts[0].image_ids() == {"old", "a", "b"}  # the index and its own shards
    assert LatentCache(tmp_path).image_ids() == {"old"}  # readers see the index only

    assert LatentCache(tmp_path).merge_parts() == 3
    merged = LatentCache(tmp_path)
    assert not merged.part_files()
    files = [s["file"] for s in merged.shards]
    expected = [s["file"] for s in main.shards] + [s["file"] for s in parts[0].shards[1:]]
    assert files == expected + [s["file"] for s in parts[1].shards[1:]]  # rank order
    mean, std = merged.load(["old", "a", "b", "c", "d"])
    assert mean[:, 0, 0, 0].tolist() == [0, 1, 2, 3, 3] and std[4, 0, 0, 0] == 4
    with pytest.raises(Exception, match="without a part"):
        parts[0].merge_parts()


def test_a_merge_interrupted_before_deleting_the_parts_lists_no_shard_twice(tmp_path):
    LatentCache(tmp_path).reset(FP)
    part = LatentCache(tmp_path, part=0)
    _add(part, ["a"])
    saved = (tmp_path / "index.rank0.json").read_text()
    LatentCache(tmp_path).merge_parts()
    (tmp_path / "index.rank0.json").write_text(saved)  # as if the deletion never happened
    assert LatentCache(tmp_path).merge_parts() == 0
    assert len(LatentCache(tmp_path)) == 1 and not LatentCache(tmp_path).part_files()


def test_a_part_of_another_fingerprint_is_dropped_with_its_shards(tmp_path):
    LatentCache(tmp_path).reset(OTHER)
    stale = LatentCache(tmp_path, part=1)
    _add(stale, ["x"])
    stale_file = tmp_path / stale.shards[0]["file"]
    LatentCache(tmp_path).reset(FP)  # reset alone removes parts and shards
    assert not stale_file.exists() and not LatentCache(tmp_path).part_files()

    LatentCache(tmp_path).reset(OTHER)
    stale = LatentCache(tmp_path, part=1)
    _add(stale, ["x"])
    stale_file = tmp_path / stale.shards[0]["file"]
    index = _index(tmp_path)
    index["fingerprint"] = FP  # the index moved on; the part did not
    (tmp_path / "index.json").write_text(json.dumps(index))
    assert LatentCache(tmp_path).merge_parts() == 0
    assert not stale_file.exists() and len(LatentCache(tmp_path)) == 0


def test_a_rerun_keeps_what_every_rank_of_an_interrupted_run_wrote(tmp_path):
    """begin_extension (one process here) merges the parts a killed 2-rank run left, when they
    were made by the same fingerprint; another fingerprint empties the cache."""
    LatentCache(tmp_path).reset(FP)
    for rank, ids in ((0, ["a", "b"]), (1, ["c"])):
        _add(LatentCache(tmp_path, part=rank), ids)
    cache = begin_extension(LatentCache(tmp_path), FP)
    assert cache.part is None and cache.image_ids() == {"a", "b", "c"}
    assert not cache.part_files()
    _add(cache, ["d"])
    cache = end_extension(cache)
    assert cache.image_ids() == {"a", "b", "c", "d"}

    _add(LatentCache(tmp_path, part=1), ["e"])
    cache = begin_extension(LatentCache(tmp_path), OTHER)
    assert len(cache) == 0 and cache.fingerprint == OTHER and not cache.part_files()
    assert not list(tmp_path.glob("shard-*"))


def test_write_shards_cuts_a_shard_after_the_batch_that_fills_it(tmp_path):
    cache = EmbeddingCache(tmp_path)
    cache.reset(FP)
    batches = []

    def encode(pixels):
        batches.append(len(pixels))
        return pixels * 2, pixels + 1

    items = [(f"i{k}", torch.full((1, 2, 2), float(k))) for k in range(7)]
    assert write_shards(cache, items, encode, batch_size=2, shard_size=3) == 7
    assert batches == [2, 2, 2, 1] and [s["count"] for s in cache.shards] == [4, 3]
    embeddings, conditions = EmbeddingCache(tmp_path).load(["i6", "i0"])
    assert embeddings[:, 0, 0, 0].tolist() == [12, 0] and conditions[0, 0, 0, 0] == 7


def test_share_splits_into_contiguous_blocks_in_rank_order(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "3")
    blocks = []
    for rank in range(3):
        monkeypatch.setenv("RANK", str(rank))
        blocks.append(distributed.share(8))
    assert blocks == [range(0, 3), range(3, 6), range(6, 8)]
    monkeypatch.setenv("RANK", "2")
    assert distributed.share(2) == range(2, 2)  # more ranks than items: an empty block
    monkeypatch.delenv("WORLD_SIZE")
    monkeypatch.delenv("RANK")
    assert distributed.share(5) == range(5)


def test_one_process_never_touches_torch_distributed(monkeypatch, tmp_path):
    monkeypatch.delenv("WORLD_SIZE", raising=False)

    def refuse():
        raise AssertionError("torch.distributed used by a single process")

    monkeypatch.setattr(distributed, "_process_group", refuse)
    assert distributed.each_rank(lambda: 3) == [3]
    assert distributed.together(lambda: 4) == 4
    assert distributed.gather_lists([1, 2]) == [1, 2] and distributed.broadcast("x") == "x"
    distributed.barrier()
    cache = begin_extension(LatentCache(tmp_path), FP)
    _add(cache, ["a"])
    assert end_extension(cache).image_ids() == {"a"}
    with pytest.raises(ValueError, match="boom"):  # an error is the work's own, unwrapped
        distributed.each_rank(lambda: (_ for _ in ()).throw(ValueError("boom")))
