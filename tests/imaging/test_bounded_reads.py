"""What a read costs is known before the read (issue 26, items 2 and 9; review).

- A parquet cell's length is known only once its page is decompressed, and a page of 256 MiB
  of zeros compresses into kilobytes. Screening sizes every page from its header before
  Arrow reads the row group: a group with a page over the cap is refused unread, and other
  groups are read a few rows at a time, so a batch stays under the cap.
- Later stages read back only what screening kept, under the same cap (the size screening
  recorded for the item, or the default cap for a manifest without sizes): a kept file
  swapped for a 3 GiB sparse file, or for a link to a large file out of the folder, is
  refused from its size at once, naming the file, and never read whole.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
import tracemalloc
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from imaging_factory import BLUE, GREEN, RED, encode, noise_png, write_tree
from PIL import Image

from vlv_pipeline.imaging import FolderSource, ParquetSource, WebDatasetSource, iter_images
from vlv_pipeline.imaging.random_access import byte_reader, manifest_locations
from vlv_pipeline.imaging.reading import DEFAULT_MAX_FILE_BYTES
from vlv_pipeline.imaging.screen_table import screen_images
from vlv_pipeline.params.ingest import IngestParams

MIB = 1 << 20
CELL = 256 * MIB  # a compressed cell four times the default cap


def png(colour, size=(32, 32)) -> bytes:
    return encode(Image.new("RGB", size, colour), "PNG")


def sparse(path: Path, size: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.truncate(size)
    return path


def kept(source, **params) -> pd.DataFrame:
    table = screen_images(source, IngestParams(min_side=8, **params))
    return table[table["reason"].isna()].reset_index(drop=True)


# Runs in a child: screens (or reads back) a source and reports how far its peak resident
# memory rose above what it was once everything was imported. The peak is the child's own
# VmHWM: ru_maxrss survives exec on Linux, so a child of a large pytest process would start
# at its parent's high-water mark and hide what it used itself.
_CHILD = textwrap.dedent(
    """
    import json, sys
    from vlv_pipeline.imaging.random_access import byte_reader
    from vlv_pipeline.imaging.parquet_source import ParquetSource

    def peak_mib():
        with open("/proc/self/status") as status:
            line = next(x for x in status if x.startswith("VmHWM:"))
        return int(line.split()[1]) / 1024

    what, path = sys.argv[1], sys.argv[2]
    source = ParquetSource(path)
    start = peak_mib()
    if what == "screen":
        out = [[r.ref, r.rejected and str(r.rejected[0]), r.rejected and r.rejected[1]]
               for r in source.iter_records()]
    else:
        try:
            byte_reader(source, ["0"]).read(0)
            out = "read"
        except ValueError as error:
            out = str(error)
    print(json.dumps({"out": out, "start_mib": start, "rise_mib": peak_mib() - start}))
    """
)


def in_child(what: str, path: Path) -> dict:
    env = dict(os.environ, KEDRO_DISABLE_TELEMETRY="true")
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, what, str(path)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def write_bomb(path: Path, size: int = CELL) -> Path:
    """A zstd parquet file of a few KB whose one cell is ``size`` bytes of zeros."""
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.table({"image": pa.array([bytes(size)], pa.binary())})
    pq.write_table(table, path, compression="zstd")
    del table
    assert path.stat().st_size < 64 * 1024
    return path


# ------------------------------------------------- item 9: parquet, before reading


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="measures VmHWM (Linux)")
def test_a_compressed_huge_cell_is_refused_without_being_decompressed(tmp_path):
    bomb = write_bomb(tmp_path / "bomb.parquet")
    got = in_child("screen", bomb)
    # before: 780 MiB (the page, Arrow's array, then the check); now: nothing decompressed
    assert got["rise_mib"] < CELL / MIB / 8, f"screening rose by {got['rise_mib']:.0f} MiB"
    assert [row[:2] for row in got["out"]] == [["0", "too_large"]]
    detail = got["out"][0][2]
    assert "row group 0" in detail and "'image'" in detail
    assert "smaller row groups" in detail and "ingest.max_file_bytes" in detail


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="measures VmHWM (Linux)")
def test_a_swapped_parquet_bomb_is_refused_by_training_without_being_decompressed(tmp_path):
    path = tmp_path / "data" / "p.parquet"
    path.parent.mkdir()
    pd.DataFrame({"image": [png(RED)]}).to_parquet(path)
    assert len(kept(ParquetSource(path))) == 1
    write_bomb(path)  # the file ingest screened, swapped for a bomb
    got = in_child("read", path)
    assert got["rise_mib"] < CELL / MIB / 8, f"the read-back rose by {got['rise_mib']:.0f} MiB"
    assert "row 0" in got["out"] and "too_large" in got["out"]


def test_the_pages_a_group_may_hold_and_the_batches_it_is_read_in(tmp_path, monkeypatch):
    """Normal sources (many small images per row group) stream in batches as before; a
    group bigger than the cap whose pages are small is read a few rows at a time; a group
    with one page over the cap gives each of its rows a too_large verdict that says why,
    and the groups around it are still read."""
    images = [noise_png((48, 48), seed=k) for k in range(12)]  # ~7 KB each
    path = tmp_path / "p.parquet"
    pd.DataFrame({"image": images, "caption": [f"c{k}" for k in range(12)]}).to_parquet(
        path, row_group_size=4
    )
    sizes: list[int] = []
    real = pq.ParquetFile.iter_batches

    def spy(self, batch_size=65536, **kwargs):
        for batch in real(self, batch_size=batch_size, **kwargs):
            sizes.append(batch.num_rows)
            yield batch

    monkeypatch.setattr(pq.ParquetFile, "iter_batches", spy)
    source = ParquetSource(path, caption_column="caption")
    table = screen_images(source, IngestParams(min_side=8)).set_index("source")
    assert table["reason"].isna().all() and len(table) == 12
    assert table["caption"].tolist() == [f"c{k}" for k in range(12)]
    assert sizes == [4, 4, 4]  # one batch per group: no slower than before
    # a cap under a group's size, over each image, and a page per image: a few rows at a time
    paged = tmp_path / "paged.parquet"
    table = pa.table({"image": images, "caption": [f"c{k}" for k in range(12)]})
    pq.write_table(
        table, paged, row_group_size=4, use_dictionary=False, data_page_size=1, write_batch_size=1
    )
    sizes.clear()
    cap = 2 * max(map(len, images)) + 4096
    source = ParquetSource(paged, caption_column="caption")
    small = screen_images(source, IngestParams(min_side=8, max_file_bytes=cap))
    assert small["reason"].isna().all() and len(small) == 12
    assert max(sizes) < 4 and sum(sizes) == 12
    # a group whose page is over the cap: its rows refused unread, the others read
    big = noise_png((256, 256))
    mixed = tmp_path / "mixed.parquet"
    pd.DataFrame({"image": [png(RED), png(BLUE), big, png(GREEN)]}).to_parquet(
        mixed, row_group_size=2
    )
    got = screen_images(
        ParquetSource(mixed), IngestParams(min_side=8, max_file_bytes=len(big) // 2)
    )
    got = got.set_index("source")
    assert got["reason"].fillna("kept").to_dict() == {
        "0": "kept",
        "1": "kept",
        "2": "too_large",
        "3": "too_large",
    }
    assert "row group 1" in got.loc["3", "detail"]


def test_a_page_header_that_cannot_be_parsed_refuses_its_group_not_the_run(tmp_path):
    path = tmp_path / "p.parquet"
    pd.DataFrame({"image": [png(RED), png(BLUE), png(GREEN)]}).to_parquet(path, row_group_size=2)
    chunk = pq.ParquetFile(path).metadata.row_group(1).column(0)
    start = min(chunk.dictionary_page_offset or chunk.data_page_offset, chunk.data_page_offset)
    with open(path, "r+b") as f:  # the second group's first page header: garbage
        f.seek(start)
        f.write(b"\xff" * 8)
    table = screen_images(ParquetSource(path), IngestParams(min_side=8)).set_index("source")
    assert table["reason"].fillna("kept").to_dict() == {"0": "kept", "1": "kept", "2": "corrupt"}
    assert "page header" in table.loc["2", "detail"]


def test_a_sparse_parquet_file_whose_footer_claims_gigabytes_is_refused_at_once(tmp_path):
    """Arrow reads a parquet footer whole, and its length is the file's last bytes: a 3 GiB
    sparse file (nothing on disk) made it read 3 GiB of zeros (17 s, 3 GiB resident)."""
    path = tmp_path / "sparse.parquet"
    with open(path, "wb") as f:
        f.write(b"PAR1")
        f.truncate(3 << 30)
        f.seek((3 << 30) - 8)
        f.write(((3 << 30) - 1000).to_bytes(4, "little") + b"PAR1")
    start = time.perf_counter()
    with pytest.raises(ValueError, match="sparse.parquet: its footer claims 3221224472 bytes"):
        list(ParquetSource(path).iter_records())
    with pytest.raises(ValueError, match="footer claims"):
        byte_reader(ParquetSource(path), ["0"])
    assert time.perf_counter() - start < 5


# ------------------------------------------- item 2: read-backs keep the byte cap


@pytest.fixture
def ingested(tmp_path):
    root = write_tree(tmp_path / "mine", {"a.png": png(RED), "b.png": png(BLUE)})
    source = FolderSource(root)
    return source, root, kept(source)


def refused_quickly(work, match: str) -> None:
    tracemalloc.start()
    start = time.perf_counter()
    try:
        with pytest.raises(ValueError, match=match):
            work()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert time.perf_counter() - start < 5
    assert peak < 8 * MIB, f"the read-back allocated {peak / MIB:.0f} MiB"


def test_a_kept_file_swapped_for_a_3_gib_sparse_file_is_refused_unread(ingested):
    source, root, manifest = ingested
    (root / "b.png").unlink()
    sparse(root / "b.png", 3 << 30)
    refused_quickly(lambda: list(iter_images(source, manifest)), "'b.png' is now too_large")
    refs = list(manifest["source"])
    refused_quickly(lambda: byte_reader(source, refs).read(1), "cannot read 'b.png': too_large")
    refused_quickly(  # with the sizes the manifest records
        lambda: byte_reader(source, refs, manifest_locations(manifest)).read(1),
        "cannot read 'b.png': too_large",
    )


def test_a_kept_file_swapped_for_a_link_out_of_the_folder_is_refused_unread(ingested, tmp_path):
    source, root, manifest = ingested
    outside = sparse(tmp_path / "elsewhere" / "big.bin", 3 << 30)
    (root / "a.png").unlink()
    (root / "a.png").symlink_to(outside)
    refused_quickly(lambda: list(iter_images(source, manifest)), "'a.png' is now too_large")
    refused_quickly(
        lambda: byte_reader(source, list(manifest["source"])).read(0),
        "cannot read 'a.png': too_large",
    )


def test_read_backs_are_capped_at_the_size_screening_recorded(ingested, tmp_path):
    """A kept item is read back no further than its recorded size: a link to a small file
    out of the folder is refused from its size, and never opened."""
    source, root, manifest = ingested
    assert manifest["length"].tolist() == [len(png(RED)), len(png(BLUE))]
    secret = write_tree(tmp_path / "elsewhere", {"secret.txt": b"x" * 5000})
    (root / "a.png").unlink()
    (root / "a.png").symlink_to(secret / "secret.txt")
    with pytest.raises(ValueError, match="'a.png' is now too_large: 5000 bytes"):
        list(iter_images(source, manifest))
    reader = byte_reader(source, list(manifest["source"]), manifest_locations(manifest))
    with pytest.raises(ValueError, match="cannot read 'a.png': too_large: 5000 bytes"):
        reader.read(0)
    assert reader.read(1) == png(BLUE)


def test_a_kept_file_over_the_default_cap_is_still_read_back(tmp_path):
    """Screening under a raised ingest.max_file_bytes keeps larger files: the manifest
    records their size, and that size, not the default cap, bounds their read-back."""
    from vlv_pipeline.imaging.reading import read_back, read_back_cap

    assert read_back(None).max_bytes == DEFAULT_MAX_FILE_BYTES  # a manifest without sizes
    assert read_back(100 * MIB).max_bytes == 100 * MIB
    assert read_back_cap([100 * MIB, None, 5]) == 100 * MIB
    assert read_back_cap([5, None]) == DEFAULT_MAX_FILE_BYTES
    big = noise_png((64, 64))
    root = write_tree(tmp_path / "mine", {"big.png": big})
    source = FolderSource(root)
    manifest = kept(source, max_file_bytes=len(big))
    assert manifest["length"].tolist() == [len(big)]
    assert len(list(iter_images(source, manifest))) == 1
    assert byte_reader(source, ["big.png"], manifest_locations(manifest)).read(0) == big


def test_a_shard_swapped_for_a_fifo_or_a_larger_member_is_refused_by_training(tmp_path):
    from test_read_policy import sparse_member_tar, within

    shards = tmp_path / "shards"
    sparse_member_tar(shards / "00000.tar", [("000.png", png(RED)), ("001.png", png(BLUE))])
    source = WebDatasetSource(shards)
    refs = list(kept(source)["source"])
    # scanned (no recorded location): a member over the cap is refused, unread
    sparse_member_tar(shards / "00000.tar", [("000.png", png(RED)), ("001.png", 3 << 30)])
    refused_quickly(lambda: byte_reader(source, refs).read(1), "001.png.*too_large")
    reader = byte_reader(source, refs, [(1536, 10), (2560, 10)])  # before the swap
    os.unlink(shards / "00000.tar")
    os.mkfifo(shards / "00000.tar")  # opened for reading, it would block forever
    with pytest.raises(ValueError, match="00000.tar.*not a regular file"):
        within(20, lambda: reader.read(0))
