"""Folder, parquet and webdataset sources; iter_images."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import pandas as pd
import pytest
from imaging_factory import BLUE, GREEN, LIMITS, RED, encode, noise_png, write_tree
from PIL import Image

from vlv_pipeline.imaging import (
    FolderSource,
    ParquetSource,
    ReadPolicy,
    Reason,
    Screener,
    WebDatasetSource,
    iter_images,
    open_source,
)


def png(colour, size=(32, 32)) -> bytes:
    return encode(Image.new("RGB", size, colour), "PNG")


def records(source, **kwargs):
    return {r.ref: r for r in source.iter_records(**kwargs)}


def manifest_of(source) -> pd.DataFrame:
    screener = Screener(**LIMITS)
    kept = [s for s in map(screener.screen, source.iter_records()) if s.kept]
    return pd.DataFrame(
        {"image_id": [s.image_id for s in kept], "source": [s.source for s in kept]}
    )


# ------------------------------------------------------------------------ folder


def test_folder_splits_from_first_component_and_captions_table(tmp_path):
    root = write_tree(
        tmp_path / "images",
        {
            "train/a.png": png(RED),
            "Valid/b.JPG": encode(Image.new("RGB", (32, 32), GREEN), "JPEG"),
            "validation/c.png": png(BLUE, (33, 33)),
            "test/sub/d.png": png(RED, (34, 34)),
            "other/e.png": png(GREEN, (35, 35)),
            "f.png": png(BLUE, (36, 36)),
        },
    )
    table = pd.DataFrame(
        {
            "file": ["train/a.png", "other/e.png", "missing.png"],
            "caption": ["a red square", " green ", "never used"],
            "split": ["train", "test", None],
            "n_shapes": [1, 2, 3],
        }
    )
    table.to_parquet(root / "labels.parquet")  # inside the folder: not an input itself
    recs = records(FolderSource(root, captions=str(root / "labels.parquet")))
    assert list(recs) == [
        "Valid/b.JPG",
        "f.png",
        "other/e.png",
        "test/sub/d.png",
        "train/a.png",
        "validation/c.png",
    ]
    assert {k: r.split for k, r in recs.items()} == {
        "Valid/b.JPG": "val",
        "f.png": None,
        "other/e.png": "test",  # from the table
        "test/sub/d.png": "test",
        "train/a.png": "train",
        "validation/c.png": "val",
    }
    assert recs["train/a.png"].caption == "a red square"
    assert recs["other/e.png"].caption == "green"
    assert recs["f.png"].caption is None
    assert recs["train/a.png"].data == png(RED)


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_folder_captions_as_csv_or_jsonl(tmp_path, fmt):
    root = write_tree(tmp_path / "images", {"x/a.png": png(RED)})
    table = pd.DataFrame({"file": ["x/a.png"], "caption": ["red"]})
    path = tmp_path / f"labels.{fmt}"
    if fmt == "csv":
        table.to_csv(path, index=False)
    else:
        table.to_json(path, orient="records", lines=True)
    (rec,) = FolderSource(root, captions=str(path)).iter_records()
    assert (rec.ref, rec.caption, rec.split) == ("x/a.png", "red", None)


def test_folder_captions_table_errors_name_the_problem(tmp_path):
    root = write_tree(tmp_path / "images", {"a.png": png(RED)})
    pd.DataFrame({"file": ["a.png"], "text": ["x"]}).to_parquet(tmp_path / "t.parquet")
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['caption'\]"):
        list(FolderSource(root, captions=str(tmp_path / "t.parquet")).iter_records())
    pd.DataFrame({"file": ["a.png"], "caption": ["x"], "split": ["holdout"]}).to_parquet(
        tmp_path / "s.parquet"
    )
    with pytest.raises(ValueError, match="unknown split 'holdout'"):
        list(FolderSource(root, captions=str(tmp_path / "s.parquet")).iter_records())


def test_relative_captions_path_is_found_from_cwd_or_above_the_folder(tmp_path, monkeypatch):
    root = write_tree(tmp_path / "project" / "data" / "images", {"a.png": png(RED)})
    table = pd.DataFrame({"file": ["a.png"], "caption": ["red"]})
    table.to_parquet(tmp_path / "project" / "data" / "labels.parquet")
    (tmp_path / "project" / "notebooks").mkdir()
    for cwd in (tmp_path / "project", tmp_path / "project" / "notebooks"):
        monkeypatch.chdir(cwd)
        source = FolderSource(root, captions="data/labels.parquet")
        assert source.exists()
        assert [r.caption for r in source.iter_records()] == ["red"]
    assert not FolderSource(root, captions="data/nope.parquet").exists()


def test_missing_folder_raises_naming_it(tmp_path):
    source = FolderSource(tmp_path / "nope")
    assert not source.exists()
    with pytest.raises(FileNotFoundError, match="nope"):
        list(source.iter_records())


def test_source_is_re_iterable_and_lazy(tmp_path):
    root = write_tree(tmp_path / "images", {"a.png": png(RED), "b.png": png(BLUE)})
    source = FolderSource(root)
    first = source.iter_records()
    assert next(first).ref == "a.png"
    assert [r.ref for r in source] == ["a.png", "b.png"]
    assert [r.ref for r in source] == ["a.png", "b.png"]


# ----------------------------------------------------------------------- parquet


def test_parquet_with_bytes_column_captions_and_splits(tmp_path):
    path = tmp_path / "pairs.parquet"
    pd.DataFrame(
        {
            "img": [png(RED), png(GREEN), None, b"", png(RED)],
            "text": ["red", None, "x", "y", "red again"],
            "part": ["train", "validation", None, "test", "TEST"],
        }
    ).to_parquet(path, row_group_size=2)
    source = ParquetSource(path, image_column="img", caption_column="text", split_column="part")
    source.batch_size = 2
    recs = records(source)
    assert list(recs) == ["0", "1", "2", "3", "4"]
    assert [r.caption for r in recs.values()] == ["red", None, "x", "y", "red again"]
    assert [r.split for r in recs.values()] == ["train", "val", None, "test", "test"]
    assert recs["0"].data == png(RED)
    assert recs["2"].rejected[0] == Reason.EMPTY_FILE
    screener = Screener(**LIMITS)
    reasons = [screener.screen(r).reason for r in recs.values()]
    assert reasons == [None, None, "empty_file", "empty_file", "duplicate"]


def test_parquet_with_paths_relative_to_the_file_and_hf_structs(tmp_path):
    write_tree(tmp_path / "imgs", {"a.png": png(RED), "b.png": png(BLUE)})
    path = tmp_path / "meta" / "index.parquet"
    path.parent.mkdir()
    pd.DataFrame({"image": ["../imgs/a.png", "../imgs/nope.png", "../imgs/b.png"]}).to_parquet(path)
    # outside the parquet file's folder: refused unless allowed (issue 26, item 3)
    refused = list(open_source("parquet", path).iter_records())
    assert [r.rejected[0] for r in refused] == [Reason.OUTSIDE_SOURCE] * 3
    allowed = ReadPolicy(allow_outside=True)
    recs = list(open_source("parquet", path).iter_records(policy=allowed))
    assert recs[0].data == png(RED) and recs[2].data == png(BLUE)
    assert recs[1].data is None and recs[1].rejected[0] == Reason.UNREADABLE
    structs = tmp_path / "hf.parquet"
    pd.DataFrame(
        {"image": [{"bytes": png(GREEN), "path": None}, {"bytes": None, "path": "imgs/a.png"}]}
    ).to_parquet(structs)
    hf = list(ParquetSource(structs).iter_records())
    assert hf[0].data == png(GREEN) and hf[1].data == png(RED)


def test_parquet_missing_column_is_named(tmp_path):
    path = tmp_path / "p.parquet"
    pd.DataFrame({"image": [png(RED)]}).to_parquet(path)
    with pytest.raises(ValueError, match=r"no column\(s\) \['caption'\]"):
        list(ParquetSource(path, caption_column="caption").iter_records())


# -------------------------------------------------------------------- webdataset


def write_tar(path: Path, members: list[tuple[str, bytes]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def img2dataset_shard(path: Path) -> Path:
    return write_tar(
        path,
        [
            ("000000000.png", png(RED)),
            ("000000000.txt", b"a red square\n"),
            ("000000000.json", json.dumps({"url": "http://x", "caption": "ignored"}).encode()),
            ("000000001.jpg", encode(Image.new("RGB", (32, 32), BLUE), "JPEG")),
            ("000000001.json", json.dumps({"caption": "from json"}).encode()),
            ("000000002.png", noise_png((64, 64))[:2000]),
            ("000000002.txt", b"truncated"),
            ("000000003.mp4", b"not a picture"),
            ("000000003.txt", b"video"),
            ("000000004.json", b"{}"),
        ],
    )


def test_webdataset_groups_members_by_key(tmp_path):
    shard = img2dataset_shard(tmp_path / "shards" / "00000.tar")
    recs = records(WebDatasetSource(shard))
    assert list(recs) == [
        "00000.tar/000000000.png",
        "00000.tar/000000001.jpg",
        "00000.tar/000000002.png",
        "00000.tar/000000003.mp4",
        "00000.tar/000000004",
    ]
    assert recs["00000.tar/000000000.png"].caption == "a red square"
    assert recs["00000.tar/000000001.jpg"].caption == "from json"
    assert recs["00000.tar/000000000.png"].data == png(RED)
    assert recs["00000.tar/000000003.mp4"].rejected[0] == Reason.UNSUPPORTED_EXTENSION
    screener = Screener(**LIMITS)
    reasons = {ref: screener.screen(r).reason for ref, r in recs.items()}
    assert list(reasons.values()) == [
        None,
        None,
        "corrupt",
        "unsupported_extension",
        "unsupported_extension",
    ]


def test_webdataset_directory_glob_and_truncated_shard(tmp_path):
    img2dataset_shard(tmp_path / "shards" / "00000.tar")
    write_tar(tmp_path / "shards" / "00001.tar", [("k.png", png(GREEN)), ("k.txt", b"green")])
    (tmp_path / "shards" / "notes.md").write_text("not a shard")
    by_dir = records(WebDatasetSource(tmp_path / "shards"))
    assert "00001.tar/k.png" in by_dir and len(by_dir) == 6
    by_glob = records(WebDatasetSource(str(tmp_path / "shards" / "0000[1].tar")))
    assert list(by_glob) == ["00001.tar/k.png"]
    write_tar(tmp_path / "other" / "00001.tar", [("k.png", png(BLUE))])
    both = records(WebDatasetSource(str(tmp_path / "*" / "00001.tar")))
    assert list(both) == ["other/00001.tar/k.png", "shards/00001.tar/k.png"]

    full = (tmp_path / "shards" / "00000.tar").read_bytes()
    cut = tmp_path / "cut" / "bad.tar"
    cut.parent.mkdir()
    cut.write_bytes(full[:2000])  # ends inside the second member's data
    recs = list(WebDatasetSource(cut).iter_records())
    assert recs[-1].ref == "bad.tar" and recs[-1].rejected[0] == Reason.CORRUPT
    assert recs[0].ref == "bad.tar/000000000.png" and recs[0].data == png(RED)


def test_webdataset_without_shards(tmp_path):
    source = WebDatasetSource(tmp_path / "*.tar")
    assert not source.exists()
    with pytest.raises(FileNotFoundError, match="no tar shards"):
        list(source.iter_records())


# ------------------------------------------------------------------- iter_images


def test_iter_images_yields_exactly_the_manifest_images_normalised(hostile):
    source = FolderSource(hostile.root)
    manifest = manifest_of(source)
    got = dict(iter_images(source, manifest, 20))
    assert set(got) == set(manifest["image_id"]) and len(got) == len(manifest) == 11
    assert all(img.mode == "RGB" and img.size == (20, 20) for img in got.values())
    subset = manifest.iloc[[1, 4]]
    assert [i for i, _ in source.iter_images(subset, 8)] == list(subset["image_id"])


def test_iter_images_over_parquet_and_webdataset(tmp_path):
    shard = img2dataset_shard(tmp_path / "00000.tar")
    wds = WebDatasetSource(shard)
    got = dict(iter_images(wds, manifest_of(wds), None))
    assert len(got) == 2 and {img.size for img in got.values()} == {(32, 32)}
    path = tmp_path / "p.parquet"
    pd.DataFrame({"image": [png(RED), png(BLUE)]}).to_parquet(path)
    pq_source = ParquetSource(path)
    ids = [i for i, _ in iter_images(pq_source, manifest_of(pq_source), 16)]
    assert ids == [hashlib.sha256(png(RED)).hexdigest(), hashlib.sha256(png(BLUE)).hexdigest()]


def test_iter_images_refuses_changed_or_missing_items(tmp_path):
    root = write_tree(tmp_path / "images", {"a.png": png(RED), "b.png": png(BLUE)})
    source = FolderSource(root)
    manifest = manifest_of(source)
    (root / "b.png").write_bytes(png(GREEN))
    with pytest.raises(ValueError, match="'b.png' changed since ingest"):
        list(iter_images(source, manifest))
    (root / "b.png").unlink()
    with pytest.raises(ValueError, match=r"1 manifest image\(s\) not found.*b\.png"):
        list(iter_images(source, manifest))


def test_open_source_rejects_unknown_kinds_and_options(tmp_path):
    with pytest.raises(ValueError, match="unknown image source kind 'zip'"):
        open_source("zip", tmp_path)
    with pytest.raises(ValueError, match=r"does not take option\(s\) \['image_column'\]"):
        open_source("folder", tmp_path, image_column="img")
