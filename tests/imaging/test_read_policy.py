"""What a source may read (issue 26, items 3, 9 and 10).

Files inside the named folder and nothing else by default (links and parquet paths that
leave the folder get their own verdict); no file over ``max_file_bytes`` is read; every
entry under a folder gets a row, and a FIFO is never opened.
"""

from __future__ import annotations

import io
import os
import tarfile
import threading
import time
import tracemalloc
from pathlib import Path

import pandas as pd
import pytest
from imaging_factory import BLUE, GREEN, RED, encode, noise_png, write_tree
from PIL import Image

from vlv_pipeline.imaging import FolderSource, ParquetSource, WebDatasetSource, iter_images
from vlv_pipeline.imaging.screen_table import screen_images
from vlv_pipeline.params.ingest import IngestParams

MIB = 1 << 20


def png(colour, size=(32, 32)) -> bytes:
    return encode(Image.new("RGB", size, colour), "PNG")


def screened(source, **params) -> pd.DataFrame:
    """The screening table (ingest's and caption's first step), indexed by ref."""
    return screen_images(source, IngestParams(min_side=8, **params)).set_index("source")


def reasons(table: pd.DataFrame) -> dict[str, str | None]:
    return {ref: (None if pd.isna(r) else r) for ref, r in table["reason"].items()}


def sparse(path: Path, size: int) -> Path:
    """A file of ``size`` bytes that takes no disk (and would take ``size`` of memory)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.truncate(size)
    return path


def within(seconds: float, work):
    """``work()``'s result, failing (not hanging) if it takes longer: a blocked read of a
    FIFO would never return, so it runs in a daemon thread."""
    out: dict = {}

    def run():
        try:
            out["value"] = work()
        except BaseException as error:  # noqa: BLE001 - re-raised below
            out["error"] = error

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still running after {seconds}s (blocked on a FIFO?)"
    if "error" in out:
        raise out["error"]
    return out["value"]


# ------------------------------------------------------- item 3: reads stay inside


def test_links_out_of_the_folder_are_refused_unread_with_their_own_verdict(tmp_path):
    outside = write_tree(tmp_path / "outside", {"photo.png": png(RED)})
    root = write_tree(tmp_path / "mine", {"ok.png": png(BLUE)})
    (root / "x.png").symlink_to("/etc/passwd")
    (root / "photo.png").symlink_to(outside / "photo.png")
    (root / "more").symlink_to(outside, target_is_directory=True)
    table = screened(FolderSource(root))
    assert reasons(table) == {
        "more": "symlink",
        "ok.png": None,
        "photo.png": "symlink",
        "x.png": "symlink",
    }
    for ref in ("more", "photo.png", "x.png"):
        assert pd.isna(table.loc[ref, "image_id"])  # never read, never hashed
        assert "ingest.follow_links" in table.loc[ref, "detail"]
    assert "/etc/passwd" in table.loc["x.png", "detail"]


def test_follow_links_reads_linked_files_and_folders(tmp_path):
    outside = write_tree(tmp_path / "outside", {"photo.png": png(RED), "deep/g.png": png(GREEN)})
    root = write_tree(tmp_path / "mine", {"ok.png": png(BLUE)})
    (root / "photo.png").symlink_to(outside / "photo.png")
    (root / "more").symlink_to(outside, target_is_directory=True)
    table = screened(FolderSource(root), follow_links=True)
    assert reasons(table) == {
        "more/deep/g.png": None,
        "more/photo.png": None,
        "ok.png": None,
        "photo.png": "duplicate",  # of more/photo.png, read first
    }
    # what ingest kept through a link, later stages read back through it
    manifest = table[table["reason"].isna()].reset_index()
    assert len(dict(iter_images(FolderSource(root), manifest))) == 3


def test_parquet_paths_outside_its_folder_are_refused_unless_allowed(tmp_path):
    write_tree(tmp_path / "outside", {"o.png": png(RED), "p.png": png(GREEN)})
    data = write_tree(tmp_path / "data", {"in.png": png(BLUE), "sub/in2.png": png((9, 9, 9))})
    (data / "ln.png").symlink_to("in.png")  # a link, though it stays inside
    path = data / "images.parquet"
    cells = [
        "in.png",
        "../outside/o.png",
        str(tmp_path / "outside" / "p.png"),
        "sub/../sub/in2.png",
        "ln.png",
    ]
    pd.DataFrame({"image": cells}).to_parquet(path)
    table = screened(ParquetSource(path))
    assert reasons(table) == {
        "0": None,
        "1": "outside_source",
        "2": "outside_source",
        "3": None,
        "4": "symlink",
    }
    for ref in ("1", "2"):
        assert "ingest.allow_outside_paths" in table.loc[ref, "detail"]
        assert cells[int(ref)] in table.loc[ref, "detail"]
        assert pd.isna(table.loc[ref, "image_id"])
    allowed = screened(ParquetSource(path), allow_outside_paths=True, follow_links=True)
    assert reasons(allowed) == {"0": None, "1": None, "2": None, "3": None, "4": "duplicate"}


def test_hf_struct_paths_obey_the_same_policy(tmp_path):
    write_tree(tmp_path / "outside", {"o.png": png(RED)})
    data = write_tree(tmp_path / "data", {"in.png": png(BLUE)})
    path = data / "hf.parquet"
    cells = [{"bytes": None, "path": "in.png"}, {"bytes": None, "path": "../outside/o.png"}]
    pd.DataFrame({"image": cells}).to_parquet(path)
    assert reasons(screened(ParquetSource(path))) == {"0": None, "1": "outside_source"}


# --------------------------------------------------- item 9: a cap before reading


def test_the_default_cap_is_64_mib():
    assert IngestParams().max_file_bytes == 64 * MIB


def test_a_file_over_the_cap_is_too_large_and_never_read(tmp_path):
    root = write_tree(tmp_path / "mine", {"ok.png": png(BLUE)})
    sparse(root / "huge.jpg", 64 * MIB + 1)  # just over the default cap
    tracemalloc.start()
    try:
        table = screened(FolderSource(root))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert reasons(table) == {"huge.jpg": "too_large", "ok.png": None}
    detail = table.loc["huge.jpg", "detail"]
    assert str(64 * MIB + 1) in detail and "ingest.max_file_bytes" in detail
    assert peak < 8 * MIB, f"screening allocated {peak / MIB:.0f} MiB"


def test_a_3_gib_sparse_file_is_refused_at_once(tmp_path):
    root = write_tree(tmp_path / "mine", {"ok.png": png(BLUE)})
    sparse(root / "huge.jpg", 3 << 30)
    start = time.perf_counter()
    table = screened(FolderSource(root))
    assert time.perf_counter() - start < 5
    assert reasons(table) == {"huge.jpg": "too_large", "ok.png": None}


def test_the_cap_is_a_parameter(tmp_path):
    big = noise_png((64, 64))
    root = write_tree(tmp_path / "mine", {"big.png": big, "small.png": png(RED)})
    table = screened(FolderSource(root), max_file_bytes=len(big) - 1)
    assert reasons(table) == {"big.png": "too_large", "small.png": None}
    assert reasons(screened(FolderSource(root), max_file_bytes=len(big))) == {
        "big.png": None,
        "small.png": None,
    }


def sparse_member_tar(path: Path, members: list[tuple[str, bytes | int]]) -> Path:
    """A tar shard; an ``int`` member is GNU-sparse: that many bytes long, none stored."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members:
            if isinstance(data, int):  # PAX GNU sparse 1.0: a map of one empty extent
                stored = (b"1\n%d\n0\n" % data).ljust(512, b"\0")
                info = tarfile.TarInfo(f"GNUSparseFile.0/{name}")
                info.pax_headers = {
                    "GNU.sparse.major": "1",
                    "GNU.sparse.minor": "0",
                    "GNU.sparse.name": name,
                    "GNU.sparse.realsize": str(data),
                }
                data = stored
            else:
                info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


@pytest.mark.parametrize("size", [64 * MIB + 1, 3 << 30])
def test_a_sparse_tar_member_over_the_cap_is_too_large_and_never_read(tmp_path, size):
    shard = sparse_member_tar(
        tmp_path / "shards" / "00000.tar",
        [("000.png", png(RED)), ("000.txt", b"red"), ("001.jpg", size), ("002.png", png(BLUE))],
    )
    assert shard.stat().st_size < 20_000
    tracemalloc.start()
    start = time.perf_counter()
    try:
        table = screened(WebDatasetSource(shard.parent))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert time.perf_counter() - start < 5
    assert reasons(table) == {
        "00000.tar/000.png": None,
        "00000.tar/001.jpg": "too_large",
        "00000.tar/002.png": None,
    }
    assert str(size) in table.loc["00000.tar/001.jpg", "detail"]
    assert peak < 8 * MIB


def test_parquet_cells_over_the_cap_are_too_large(tmp_path):
    data = tmp_path / "data"
    sparse(data / "huge.png", 64 * MIB + 1)
    big = noise_png((64, 64))
    path = data / "p.parquet"
    pd.DataFrame({"image": [png(RED), big]}).to_parquet(path)
    table = screened(ParquetSource(path), max_file_bytes=len(big) - 1)
    assert reasons(table) == {"0": None, "1": "too_large"}
    assert str(len(big)) in table.loc["1", "detail"]
    both = data / "paths.parquet"
    pd.DataFrame({"image": ["huge.png", "missing.png", None]}).to_parquet(both)
    rows = ParquetSource(both).iter_records()
    got = {r.ref: (r.rejected[0] if r.rejected else None) for r in rows}
    assert got == {"0": "too_large", "1": "unreadable", "2": "empty_file"}


# ---------------------------------- item 10: every entry gets a row; FIFOs unopened


def hostile_entries(root: Path) -> Path:
    write_tree(root, {"ok.png": png(BLUE), ".hidden/x.png": png(RED), "sub/g.png": png(GREEN)})
    (root / "loop.png").symlink_to("loop.png")
    (root / "dangling.png").symlink_to("missing.png")
    os.mkfifo(root / "fifo.png")
    (root / "..%2f..%2fetc%2fpasswd").write_bytes(png(RED))
    (root / "sub" / "up").symlink_to("..", target_is_directory=True)
    return root


def test_every_entry_of_a_folder_gets_a_row_and_a_fifo_is_never_opened(tmp_path):
    root = hostile_entries(tmp_path / "mine")
    table = within(20, lambda: screened(FolderSource(root)))
    assert reasons(table) == {
        "..%2f..%2fetc%2fpasswd": "hidden",
        ".hidden": "hidden",
        "dangling.png": "symlink",
        "fifo.png": "not_a_file",
        "loop.png": "symlink",
        "ok.png": None,
        "sub/g.png": None,
        "sub/up": "symlink",
    }
    assert "FIFO" in table.loc["fifo.png", "detail"]
    assert table["detail"].fillna("").str.len().loc[table["reason"].notna()].gt(0).all()


def test_followed_loops_and_dangling_links_are_broken_links(tmp_path):
    root = hostile_entries(tmp_path / "mine")
    (root / "pipe.png").symlink_to("fifo.png")
    table = within(20, lambda: screened(FolderSource(root), follow_links=True))
    got = reasons(table)
    assert got["loop.png"] == got["dangling.png"] == got["sub/up"] == "broken_link"
    assert got["fifo.png"] == got["pipe.png"] == "not_a_file"
    assert "loop" in table.loc["loop.png", "detail"]
    assert "missing.png" in table.loc["dangling.png", "detail"]
    assert "loop" in table.loc["sub/up", "detail"]


def test_a_fifo_in_a_parquet_path_or_a_shard_folder_is_never_opened(tmp_path):
    data = write_tree(tmp_path / "data", {"in.png": png(BLUE)})
    os.mkfifo(data / "fifo.png")
    path = data / "p.parquet"
    pd.DataFrame({"image": ["in.png", "fifo.png"]}).to_parquet(path)
    table = within(20, lambda: screened(ParquetSource(path)))
    assert reasons(table) == {"0": None, "1": "not_a_file"}
    shards = tmp_path / "shards"
    sparse_member_tar(shards / "00000.tar", [("000.png", png(RED))])
    os.mkfifo(shards / "00001.tar")
    table = within(20, lambda: screened(WebDatasetSource(shards)))
    assert reasons(table) == {"00000.tar/000.png": None, "00001.tar": "not_a_file"}


def test_a_name_that_is_not_utf8_gets_a_row_and_the_table_still_saves(tmp_path):
    root = write_tree(tmp_path / "mine", {"ok.png": png(BLUE)})
    with open(os.path.join(os.fsencode(root), b"caf\xe9.png"), "wb") as f:
        f.write(png(RED))
    table = screened(FolderSource(root))
    assert reasons(table) == {"caf\\xe9.png": "bad_name", "ok.png": None}
    table.reset_index().to_parquet(tmp_path / "rows.parquet")  # no surrogate left to fail on


def test_later_stages_never_open_a_fifo_nor_read_outside_the_folder(tmp_path):
    """Training and the later stages read back what ingest kept: a kept file replaced by a
    FIFO is an error, not a hang, and a tampered ref cannot leave the folder."""
    from vlv_pipeline.imaging.random_access import byte_reader

    root = write_tree(tmp_path / "mine", {"a.png": png(RED), "b.png": png(BLUE)})
    write_tree(tmp_path, {"secret.png": png(GREEN)})
    source = FolderSource(root)
    manifest = screen_images(source, {"min_side": 8}).query("reason.isna()")
    (root / "b.png").unlink()
    os.mkfifo(root / "b.png")
    with pytest.raises(ValueError, match="'b.png' is now not_a_file"):
        within(20, lambda: list(iter_images(source, manifest)))
    with pytest.raises(ValueError, match="cannot read 'b.png': not_a_file"):
        within(20, lambda: byte_reader(source, ["b.png"]).read(0))
    with pytest.raises(ValueError, match="not a path inside the folder"):
        byte_reader(source, ["../secret.png"]).read(0)
