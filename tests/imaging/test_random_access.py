"""Random access by position: the same bytes the streaming pass gives, in any order."""

from __future__ import annotations

import gzip
import pickle
import random

import pandas as pd
import pytest
from imaging_factory import BLUE, GREEN, RED, write_tree
from test_imaging_sources import img2dataset_shard, manifest_of, png, write_tar

from vlv_pipeline.imaging import FolderSource, ParquetSource, WebDatasetSource
from vlv_pipeline.imaging.random_access import byte_reader


def streamed(source, refs) -> dict[str, bytes]:
    return {r.ref: r.data for r in source.iter_records(only=set(refs))}


def check_any_order(source, refs):
    expected = streamed(source, refs)
    reader = byte_reader(source, refs)
    assert len(reader) == len(refs)
    order = list(range(len(refs)))
    random.Random(0).shuffle(order)
    for i in order:
        assert reader.read(i) == expected[refs[i]]
    again = pickle.loads(pickle.dumps(reader))  # what a DataLoader worker receives
    assert [again.read(i) for i in order] == [expected[refs[i]] for i in order]


def test_folder_items_by_position(tmp_path):
    root = write_tree(
        tmp_path / "images",
        {"train/a.png": png(RED), "train/b.png": png(BLUE), "test/c.png": png(GREEN)},
    )
    source = FolderSource(root)
    check_any_order(source, list(manifest_of(source)["source"]))
    (root / "train" / "a.png").unlink()
    with pytest.raises(ValueError, match="cannot read 'train/a.png'"):
        byte_reader(source, ["train/a.png"]).read(0)


def test_tar_shards_are_read_in_place_by_offset(tmp_path):
    img2dataset_shard(tmp_path / "shards" / "00000.tar")
    members = [(f"{k:04d}.png", png((k, 0, 0), (32 + k, 32))) for k in range(20)]
    write_tar(tmp_path / "shards" / "00001.tar", members + [("0000.txt", b"caption")])
    source = WebDatasetSource(tmp_path / "shards")
    refs = list(manifest_of(source)["source"])
    assert len(refs) == 22
    check_any_order(source, refs)
    # shard names may hold '/', when a glob spans folders
    write_tar(tmp_path / "more" / "00001.tar", [("x.png", png(BLUE))])
    spanning = WebDatasetSource(str(tmp_path / "*" / "00001.tar"))
    check_any_order(spanning, ["more/00001.tar/x.png", "shards/00001.tar/0003.png"])


def test_tar_reader_names_what_it_cannot_index(tmp_path):
    shard = img2dataset_shard(tmp_path / "00000.tar")
    source = WebDatasetSource(shard)
    with pytest.raises(ValueError, match=r"not in their shard.*000000009\.png"):
        byte_reader(source, ["00000.tar/000000009.png"])
    with pytest.raises(ValueError, match="in none of its shards"):
        byte_reader(source, ["elsewhere.tar/000000000.png"])
    packed = tmp_path / "gz" / "00000.tar"
    packed.parent.mkdir()
    packed.write_bytes(gzip.compress(shard.read_bytes()))
    gz_source = WebDatasetSource(packed)
    assert streamed(gz_source, ["00000.tar/000000000.png"])  # streaming reads it...
    with pytest.raises(ValueError, match="needs plain \\(uncompressed\\) tar"):
        byte_reader(gz_source, ["00000.tar/000000000.png"])  # ...random access says why not


def test_parquet_rows_across_row_groups(tmp_path):
    path = tmp_path / "p.parquet"
    images = [png((k * 10, 0, 0), (32 + k, 32)) for k in range(10)]
    pd.DataFrame({"image": images}).to_parquet(path, row_group_size=3)
    source = ParquetSource(path)
    refs = list(manifest_of(source)["source"])
    assert len(refs) == 10
    check_any_order(source, refs)
    with pytest.raises(ValueError, match="has 10 rows"):
        byte_reader(source, ["12"])


def test_ingest_records_where_tar_members_lie_so_training_need_not_scan(tmp_path, monkeypatch):
    from vlv_pipeline.imaging.random_access import TarReader, manifest_locations
    from vlv_pipeline.imaging.screen_table import screen_images
    from vlv_pipeline.params.ingest import IngestParams
    from vlv_pipeline.pipelines.ingest.nodes import build_manifest

    members = [(f"{k:04d}.png", png((k, 0, 0), (32 + k, 32))) for k in range(6)]
    write_tar(tmp_path / "shards" / "00000.tar", members)
    source = WebDatasetSource(tmp_path / "shards")
    params = IngestParams(min_side=8)
    manifest = build_manifest(screen_images(source, params), params)
    assert manifest["offset"].notna().all() and (manifest["length"] > 0).all()
    blob = (tmp_path / "shards" / "00000.tar").read_bytes()
    expected = streamed(source, list(manifest["source"]))
    for ref, offset, length in manifest[["source", "offset", "length"]].itertuples(index=False):
        assert blob[offset : offset + length] == expected[ref]  # the member's bytes, in place

    def no_scan(*args):
        raise AssertionError("the manifest's locations should spare the scan")

    monkeypatch.setattr(TarReader, "_scan", no_scan)
    reader = byte_reader(source, list(manifest["source"]), manifest_locations(manifest))
    assert [reader.read(i) for i in range(len(reader))] == [expected[r] for r in manifest["source"]]
    # an older manifest (no offsets) and a folder's manifest (null offsets) still work; a
    # folder's items have their size, which caps their read-back
    assert manifest_locations(manifest.drop(columns=["offset", "length"])) is None
    folder = FolderSource(write_tree(tmp_path / "f", {"a.png": png(RED)}))
    kept = build_manifest(screen_images(folder, params), params)
    assert kept["offset"].isna().all() and manifest_locations(kept) == [(None, len(png(RED)))]
    assert manifest_locations(kept.assign(length=pd.NA)) == [None]


def test_a_compressed_shard_records_no_location(tmp_path):
    shard = img2dataset_shard(tmp_path / "00000.tar")
    packed = tmp_path / "gz" / "00000.tar"
    packed.parent.mkdir()
    packed.write_bytes(gzip.compress(shard.read_bytes()))
    records = list(WebDatasetSource(packed).iter_records())
    assert records[0].data and all(r.location is None for r in records)
    assert list(WebDatasetSource(shard).iter_records())[0].location is not None


class _Checked:
    """Item i: whether the reader's bytes for i are the expected ones (for the workers)."""

    def __init__(self, reader, expected):
        self.reader, self.expected = reader, expected

    def __len__(self):
        return len(self.expected)

    def __getitem__(self, i):
        return int(self.reader.read(i) != self.expected[i])


def test_workers_forked_after_the_parent_read_a_shard_still_read_their_own_bytes(tmp_path):
    """A forked worker inherits the parent's open shard and, with it, one shared file
    position: seek-then-read raced between workers (about 1 read in 100 came back wrong)."""
    import numpy as np
    import torch

    rng = np.random.default_rng(0)
    payloads = [rng.bytes(20000) for _ in range(300)]
    write_tar(tmp_path / "s" / "00000.tar", [(f"{k:09d}.jpg", p) for k, p in enumerate(payloads)])
    refs = [f"00000.tar/{k:09d}.jpg" for k in range(len(payloads))]
    reader = byte_reader(WebDatasetSource(tmp_path / "s"), refs)
    assert reader.read(0) == payloads[0]  # the parent opens the shard before the fork
    loader = torch.utils.data.DataLoader(
        _Checked(reader, payloads), batch_size=8, shuffle=True, num_workers=2
    )
    wrong = sum(int(batch.sum()) for _ in range(4) for batch in loader)
    assert wrong == 0
