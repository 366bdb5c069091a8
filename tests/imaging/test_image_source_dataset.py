"""ImageSourceDataset: a read-only Kedro dataset that loads an ImageSource."""

from __future__ import annotations

import pytest
from imaging_factory import RED, encode, write_tree
from kedro.io import DataCatalog, DatasetError
from PIL import Image

from vlv_pipeline.datasets.image_source import ImageSourceDataset
from vlv_pipeline.imaging import FolderSource, ParquetSource, WebDatasetSource


def test_load_describe_exists(tmp_path):
    root = write_tree(tmp_path / "images", {"train/a.png": encode(Image.new("RGB", (9, 9)), "PNG")})
    dataset = ImageSourceDataset(kind="folder", path=str(root))
    assert dataset.exists()
    source = dataset.load()
    assert isinstance(source, FolderSource)
    assert [r.ref for r in source.iter_records()] == ["train/a.png"]
    assert dataset._describe() == {"kind": "folder", "path": str(root)}
    assert "folder" in repr(dataset)
    assert not ImageSourceDataset(kind="folder", path=str(tmp_path / "missing")).exists()
    with_missing_table = ImageSourceDataset(
        kind="folder", path=str(root), captions=str(tmp_path / "labels.parquet")
    )
    assert not with_missing_table.exists()


def test_save_raises(tmp_path):
    dataset = ImageSourceDataset(kind="webdataset", path=str(tmp_path))
    with pytest.raises(DatasetError, match="read-only"):
        dataset.save(dataset.load())


def test_from_catalog_config_with_kind_specific_options(tmp_path):
    catalog = DataCatalog.from_config(
        {
            "pairs": {
                "type": "vlv_pipeline.datasets.image_source.ImageSourceDataset",
                "kind": "parquet",
                "path": str(tmp_path / "pairs.parquet"),
                "image_column": "jpg",
                "caption_column": "txt",
            },
            "shards": {
                "type": "vlv_pipeline.datasets.image_source.ImageSourceDataset",
                "kind": "webdataset",
                "path": str(tmp_path / "{0..3}.tar"),
            },
        }
    )
    pairs = catalog.load("pairs")
    assert isinstance(pairs, ParquetSource) and pairs.image_column == "jpg"
    assert pairs.describe()["caption_column"] == "txt"
    assert isinstance(catalog.load("shards"), WebDatasetSource)
    assert not catalog.exists("shards")


def test_bad_kind_or_option_fails_at_creation(tmp_path):
    with pytest.raises(ValueError, match="unknown image source kind"):
        ImageSourceDataset(kind="s3", path=str(tmp_path))
    with pytest.raises(ValueError, match="captions"):
        ImageSourceDataset(kind="parquet", path=str(tmp_path), captions="x.csv")


def test_loaded_source_streams_bytes(tmp_path):
    root = write_tree(tmp_path / "images", {"a.png": encode(Image.new("RGB", (9, 9), RED), "PNG")})
    (record,) = ImageSourceDataset(kind="folder", path=str(root)).load().iter_records()
    assert Image.open(__import__("io").BytesIO(record.data)).getpixel((0, 0)) == RED


def test_writable_folder_is_replaced_whole(tmp_path):
    root = tmp_path / "images"
    dataset = ImageSourceDataset(kind="folder", path=str(root), writable=True)
    calls = []

    def lazy(colour):
        calls.append(colour)
        return Image.new("RGB", (8, 8), colour)

    dataset.save({"train/a.png": lambda: lazy(RED), "test/b.png": Image.new("RGB", (8, 8))})
    assert calls == [RED]
    assert sorted(r.ref for r in dataset.load().iter_records()) == ["test/b.png", "train/a.png"]
    dataset.save({"train/c.png": Image.new("RGB", (8, 8))})  # a smaller rewrite: no stale files
    assert [r.ref for r in dataset.load().iter_records()] == ["train/c.png"]
    assert [p.name for p in tmp_path.iterdir()] == ["images"]


def test_a_failing_write_keeps_the_old_folder(tmp_path):
    root = tmp_path / "images"
    dataset = ImageSourceDataset(kind="folder", path=str(root), writable=True)
    dataset.save({"train/a.png": Image.new("RGB", (8, 8))})

    def broken():
        raise RuntimeError("renderer died")

    with pytest.raises(DatasetError, match="renderer died"):
        dataset.save({"train/b.png": Image.new("RGB", (8, 8)), "train/c.png": broken})
    assert [r.ref for r in dataset.load().iter_records()] == ["train/a.png"]
    assert [p.name for p in tmp_path.iterdir()] == ["images"]
    with pytest.raises(DatasetError, match="bad image path"):
        dataset.save({"../escape.png": Image.new("RGB", (8, 8))})


def test_read_only_source_refuses_to_save_and_says_why(tmp_path):
    dataset = ImageSourceDataset(kind="folder", path=str(tmp_path))
    with pytest.raises(DatasetError, match="read-only image source"):
        dataset.save({"a.png": Image.new("RGB", (8, 8))})
    with pytest.raises(ValueError, match="kind: folder"):
        ImageSourceDataset(kind="parquet", path=str(tmp_path / "x.parquet"), writable=True)


def test_writable_webdataset_writes_img2dataset_shards(tmp_path):
    """What the rehearsal environment's world renders: shards ingest and training read."""
    import io
    import json
    import tarfile

    from vlv_pipeline.params.world import WorldParams
    from vlv_pipeline.world.generate import generate_labels, render_images

    world = WorldParams(image_size=24, counts={"train": 5, "val": 0, "test": 2})
    labels = generate_labels(world)
    dataset = ImageSourceDataset(
        kind="webdataset", path=str(tmp_path / "shards"), writable=True, samples_per_shard=3
    )
    dataset.save(render_images(labels, world))
    assert sorted(p.name for p in (tmp_path / "shards").iterdir()) == [
        "00000.tar",
        "00001.tar",
        "00002.tar",
    ]
    with tarfile.open(tmp_path / "shards" / "00000.tar") as tar:
        assert tar.getnames()[:3] == ["000000000.jpg", "000000000.txt", "000000000.json"]
        meta = json.loads(tar.extractfile("000000000.json").read())
    assert meta["key"] == "000000000" and meta["caption"] == labels["caption"][0]
    records = list(dataset.load().iter_records())
    assert len(records) == 7 and all(r.data for r in records)
    assert [r.caption for r in records] == labels["caption"].tolist()
    assert Image.open(io.BytesIO(records[0].data)).size == (24, 24)
    with pytest.raises(ValueError, match="writable: true needs kind: folder or webdataset"):
        ImageSourceDataset(kind="parquet", path=str(tmp_path / "x.parquet"), writable=True)
