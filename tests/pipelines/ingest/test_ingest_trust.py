"""Ingest on a hostile folder and shard (issue 26, items 3, 9, 10): the run finishes, every
entry is in the saved rejects with its verdict, nothing outside the folder is read."""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
import threading
from pathlib import Path

import pandas as pd
import pytest
from ingest_factory import png
from kedro.io import DataCatalog, MemoryDataset
from kedro.runner import SequentialRunner
from kedro_datasets.pandas import ParquetDataset

from vlv_pipeline.datasets.image_source import ImageSourceDataset
from vlv_pipeline.params.ingest import IngestParams
from vlv_pipeline.pipelines.ingest import create_pipeline

PASSWD = Path("/etc/passwd")


def run_ingest(tmp_path: Path, kind: str, path: Path, **params) -> tuple[pd.DataFrame, ...]:
    catalog = DataCatalog(
        {
            "raw_images": ImageSourceDataset(kind=kind, path=str(path)),
            "params:ingest": MemoryDataset(IngestParams(min_side=8, **params)),
            "image_manifest": ParquetDataset(filepath=str(tmp_path / "manifest.parquet")),
            "ingest_rejects": ParquetDataset(filepath=str(tmp_path / "rejects.parquet")),
        }
    )
    done = threading.Event()

    def run():
        SequentialRunner().run(create_pipeline(), catalog)
        done.set()

    thread = threading.Thread(target=run, daemon=True)  # a FIFO opened would block forever
    thread.start()
    thread.join(30)
    assert done.is_set(), "ingest did not finish (blocked on a FIFO, or failed: see the log)"
    return catalog.load("image_manifest"), catalog.load("ingest_rejects")


def test_ingest_gives_every_hostile_entry_a_saved_verdict(tmp_path):
    root = tmp_path / "images"
    (root / "sub").mkdir(parents=True)
    (root / "ok.png").write_bytes(png((255, 0, 0)))
    (root / "sub" / "b.png").write_bytes(png((0, 0, 255)))
    (root / "z_copy.png").write_bytes(png((255, 0, 0)))
    (root / "x.png").symlink_to(PASSWD)
    (root / "loop.png").symlink_to("loop.png")
    (root / "dangling.png").symlink_to("nowhere.png")
    os.mkfifo(root / "fifo.png")
    (root / "..%2f..%2fetc%2fpasswd").write_bytes(b"x")
    with open(root / "huge.jpg", "wb") as f:
        f.truncate(3 << 30)
    with open(os.path.join(os.fsencode(root), b"\xff.png"), "wb") as f:
        f.write(png((0, 255, 0)))
    manifest, rejects = run_ingest(tmp_path, "folder", root)
    assert sorted(manifest["source"]) == ["ok.png", "sub/b.png"]
    got = dict(zip(rejects["source"], rejects["reason"], strict=True))
    assert got == {
        "..%2f..%2fetc%2fpasswd": "hidden",
        "\\xff.png": "bad_name",
        "dangling.png": "symlink",
        "fifo.png": "not_a_file",
        "huge.jpg": "too_large",
        "loop.png": "symlink",
        "x.png": "symlink",
        "z_copy.png": "duplicate",
    }
    assert rejects["detail"].str.len().gt(0).all()
    if PASSWD.is_file():  # the linked file was never read: its hash is nowhere
        digest = hashlib.sha256(PASSWD.read_bytes()).hexdigest()
        assert digest not in set(manifest["image_id"])


def test_ingest_of_a_shard_with_a_sparse_3_gib_member(tmp_path):
    shard = tmp_path / "shards" / "00000.tar"
    shard.parent.mkdir()
    size = 3 << 30
    with tarfile.open(shard, "w", format=tarfile.PAX_FORMAT) as tar:
        for name in ("000.png", "002.png"):
            data = png((255, 0, 0) if name == "000.png" else (0, 0, 255))
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        stored = (b"1\n%d\n0\n" % size).ljust(512, b"\0")  # GNU sparse 1.0, nothing stored
        info = tarfile.TarInfo("GNUSparseFile.0/001.jpg")
        info.pax_headers = {
            "GNU.sparse.major": "1",
            "GNU.sparse.minor": "0",
            "GNU.sparse.name": "001.jpg",
            "GNU.sparse.realsize": str(size),
        }
        info.size = len(stored)
        tar.addfile(info, io.BytesIO(stored))
    assert shard.stat().st_size < 20_000
    manifest, rejects = run_ingest(tmp_path, "webdataset", shard.parent)
    assert sorted(manifest["source"]) == ["00000.tar/000.png", "00000.tar/002.png"]
    assert rejects.to_dict("list")["reason"] == ["too_large"]
    assert str(size) in rejects["detail"][0]


@pytest.mark.parametrize("follow", [False, True])
def test_links_are_read_only_when_asked(tmp_path, follow):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "photo.png").write_bytes(png((0, 255, 0)))
    root = tmp_path / "images"
    root.mkdir()
    (root / "ok.png").write_bytes(png((255, 0, 0)))
    (root / "photo.png").symlink_to(outside / "photo.png")
    manifest, rejects = run_ingest(tmp_path, "folder", root, follow_links=follow)
    if follow:
        assert sorted(manifest["source"]) == ["ok.png", "photo.png"] and rejects.empty
    else:
        assert list(manifest["source"]) == ["ok.png"]
        assert list(rejects["reason"]) == ["symlink"]


def test_a_folder_of_links_only_says_which_parameter_reads_them(tmp_path):
    from vlv_pipeline.imaging.folder_source import FolderSource
    from vlv_pipeline.imaging.screen_table import NoImagesKeptError, screen_images

    outside = tmp_path / "photo.png"
    outside.write_bytes(png((0, 255, 0)))
    root = tmp_path / "links"
    root.mkdir()
    (root / "photo.png").symlink_to(outside)
    with pytest.raises(NoImagesKeptError, match=r"symlink=1\).*ingest\.follow_links is true"):
        screen_images(FolderSource(root), IngestParams(min_side=8))
