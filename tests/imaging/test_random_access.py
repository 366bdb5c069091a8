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
