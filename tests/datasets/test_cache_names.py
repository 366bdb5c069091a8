"""A cache reads and deletes only shard files inside its own folder, whatever its indexes say
(issue 26, item 4)."""

import json

import pytest
import torch
from kedro.io import DatasetError

from vlv_pipeline.datasets.shard_format import CorruptCacheError
from vlv_pipeline.datasets.shard_store import LatentCache

FP = {"weights_sha256": "a", "resolution": None}
OTHER = {"weights_sha256": "b", "resolution": None}
BAD_NAMES = ["../victim.arrow", "/tmp/victim.arrow", "sub/shard-00.arrow", "..", "index.json"]


def _add(cache, ids):
    n = len(ids)
    cache.add(list(ids), torch.zeros(n, 1, 2, 2), torch.ones(n, 1, 2, 2))


def _part(cache_dir, rank, fingerprint, names):
    shards = [{"file": name, "count": 1} for name in names]
    (cache_dir / f"index.rank{rank}.json").write_text(
        json.dumps({"format": "arrow", "fingerprint": fingerprint, "shards": shards})
    )


@pytest.mark.parametrize("fingerprint", [OTHER, FP], ids=["dropped-part", "merged-part"])
def test_a_tampered_part_index_cannot_make_the_merge_delete_outside_the_cache(
    tmp_path, fingerprint
):
    cache_dir = tmp_path / "cache"
    victim = tmp_path / "victim.arrow"
    victim.write_text("precious")
    LatentCache(cache_dir).reset(FP)
    _add(LatentCache(cache_dir), ["a"])
    index_before = (cache_dir / "index.json").read_text()
    _part(cache_dir, 1, fingerprint, ["../victim.arrow", str(victim)])
    with pytest.raises(DatasetError, match=r"index\.rank1\.json.*'\.\./victim\.arrow'.*inside"):
        LatentCache(cache_dir).merge_parts()
    assert victim.read_text() == "precious"
    assert (cache_dir / "index.json").read_text() == index_before  # nothing merged either
    assert (cache_dir / "index.rank1.json").exists()  # left for the user to look at


@pytest.mark.parametrize("name", BAD_NAMES)
def test_an_index_naming_a_file_outside_the_cache_is_refused_before_any_read(tmp_path, name):
    cache_dir = tmp_path / "cache"
    LatentCache(cache_dir).reset(FP)
    (tmp_path / "victim.arrow").write_text("not a shard")
    index = json.loads((cache_dir / "index.json").read_text())
    index["shards"] = [{"file": name, "count": 1}]
    (cache_dir / "index.json").write_text(json.dumps(index))
    with pytest.raises(CorruptCacheError, match=r"index\.json names shard .*inside.*delete"):
        LatentCache(cache_dir).verify()


def test_a_shard_linked_to_a_file_outside_the_cache_is_refused(tmp_path):
    cache_dir = tmp_path / "cache"
    LatentCache(cache_dir).reset(FP)
    _add(LatentCache(cache_dir), ["a"])
    shard = cache_dir / LatentCache(cache_dir).shards[0]["file"]
    outside = tmp_path / "elsewhere.arrow"
    shard.rename(outside)
    shard.symlink_to(outside)
    with pytest.raises(CorruptCacheError, match=r"inside"):
        LatentCache(cache_dir).verify()


def test_a_cache_folder_that_is_itself_a_link_still_works(tmp_path):
    real = tmp_path / "disk" / "cache"
    real.mkdir(parents=True)
    (tmp_path / "cache").symlink_to(real)
    cache = LatentCache(tmp_path / "cache")
    cache.reset(FP)
    _add(cache, ["a"])
    part = LatentCache(tmp_path / "cache", part=0)
    _add(part, ["b"])
    assert LatentCache(tmp_path / "cache").merge_parts() == 1
    LatentCache(tmp_path / "cache").verify()
    assert LatentCache(tmp_path / "cache").image_ids() == {"a", "b"}


# --------------------------------------------------------------------------- the index's shape
# A hand-edited index gives the cache's error (naming the index and the command that rebuilds
# it), not a TypeError or AttributeError later (issue 26, review of item 4).

BAD_ENTRIES = {
    "bare-name": lambda entry: entry["file"],
    "count-text": lambda entry: {**entry, "count": "1"},
    "count-bool": lambda entry: {**entry, "count": True},
    "no-count": lambda entry: {k: v for k, v in entry.items() if k != "count"},
    "bytes-text": lambda entry: {**entry, "bytes": "12"},
    "bytes-negative": lambda entry: {**entry, "bytes": -1},
    "checksum-number": lambda entry: {**entry, "checksum": 1234},
    "a-list": lambda entry: [entry["file"], 1],
}


@pytest.mark.parametrize("spoil", list(BAD_ENTRIES.values()), ids=list(BAD_ENTRIES))
def test_a_hand_edited_shard_entry_gives_the_cache_error(tmp_path, spoil):
    cache_dir = tmp_path / "cache"
    LatentCache(cache_dir).reset(FP)
    _add(LatentCache(cache_dir), ["a"])
    index = json.loads((cache_dir / "index.json").read_text())
    index["shards"] = [spoil(index["shards"][0])]
    (cache_dir / "index.json").write_text(json.dumps(index))
    with pytest.raises(CorruptCacheError) as refused:
        cache = LatentCache(cache_dir)
        len(cache)
        cache.verify()
        cache.load(["a"])
    message = str(refused.value)
    assert str(cache_dir / "index.json") in message, message
    assert "kedro run --pipeline cache" in message and "delete" in message, message


@pytest.mark.parametrize("index", [[], "text", {"format": "arrow", "fingerprint": 3}])
def test_an_index_that_is_not_an_index_gives_the_cache_error(tmp_path, index):
    cache_dir = tmp_path / "cache"
    cache_dir.mkdir()
    (cache_dir / "index.json").write_text(json.dumps(index))
    with pytest.raises(CorruptCacheError, match=r"index\.json.*kedro run --pipeline cache"):
        LatentCache(cache_dir)


def test_a_shard_entry_without_size_and_checksum_is_still_read(tmp_path):
    """Written before sizes and checksums were recorded: accepted (and warned about)."""
    cache_dir = tmp_path / "cache"
    LatentCache(cache_dir).reset(FP)
    _add(LatentCache(cache_dir), ["a"])
    index = json.loads((cache_dir / "index.json").read_text())
    index["shards"] = [{"file": s["file"], "count": s["count"]} for s in index["shards"]]
    (cache_dir / "index.json").write_text(json.dumps(index))
    assert LatentCache(cache_dir).load(["a"])[0].shape == (1, 1, 2, 2)


def test_a_reset_deletes_only_shard_files(tmp_path):
    cache_dir = tmp_path / "cache"
    LatentCache(cache_dir).reset(FP)
    _add(LatentCache(cache_dir), ["a"])
    shard = cache_dir / LatentCache(cache_dir).shards[0]["file"]
    others = ["shard-notes.txt", "shard-0123.arrow.bak", "shard-XYZ.arrow"]
    for name in others:
        (cache_dir / name).write_text("the user's")
    LatentCache(cache_dir).reset(OTHER)
    assert not shard.exists()
    assert all((cache_dir / name).read_text() == "the user's" for name in others)


def test_a_shard_damaged_after_it_was_opened_names_the_rebuild_command(tmp_path, monkeypatch):
    from vlv_pipeline.datasets.shard_reader import CacheRows

    cache_dir = tmp_path / "cache"
    LatentCache(cache_dir).reset(FP)
    _add(LatentCache(cache_dir), ["a"])
    rows = LatentCache(cache_dir).rows(["a"])

    def damaged(self, number):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(CacheRows, "_table", damaged)
    with pytest.raises(CorruptCacheError) as refused:
        rows[0]
    message = str(refused.value)
    assert "run `kedro run --pipeline cache`: it drops the damaged shard" in message, message
    assert "delete" not in message, message
