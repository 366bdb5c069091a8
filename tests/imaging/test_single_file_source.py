"""A single image file as a source (issue 29: `caption.source=photo.jpg`): the same verdicts
and the same link policy as a folder's entries (issue 26): a link is refused unless
``ingest.follow_links``, a FIFO is never opened, a file over the cap is never read."""

from __future__ import annotations

import hashlib
import os

import pandas as pd
import pytest
from imaging_factory import BLUE, encode
from PIL import Image
from test_read_policy import sparse, within

from vlv_pipeline.errors import InputError, MissingInputError
from vlv_pipeline.imaging import iter_images
from vlv_pipeline.imaging.file_source import FileSource
from vlv_pipeline.imaging.folder_source import FolderSource
from vlv_pipeline.imaging.screen_table import NoImagesKeptError, _screen_part, screen_images
from vlv_pipeline.imaging.source_kinds import open_user_source
from vlv_pipeline.params.ingest import IngestParams


def png(size=(32, 24)) -> bytes:
    return encode(Image.new("RGB", size, BLUE), "PNG")


def verdict(path, **params) -> tuple[str, str | None, str | None]:
    """``(ref, reason, detail)`` of the one row screening gives the file at ``path``."""
    table = _screen_part(FileSource(path), IngestParams(min_side=8, **params), None)
    assert len(table) == 1
    row = table.iloc[0]
    reason = None if pd.isna(row["reason"]) else row["reason"]
    detail = None if pd.isna(row["detail"]) else row["detail"]
    return row["source"], reason, detail


def test_a_good_file_is_kept_under_its_name_and_read_back(tmp_path):
    data = png()
    path = tmp_path / "photo.png"
    path.write_bytes(data)
    table = screen_images(FileSource(path), IngestParams(min_side=8))
    assert table["source"].tolist() == ["photo.png"]
    assert table["reason"].isna().all()
    assert table["image_id"].tolist() == [hashlib.sha256(data).hexdigest()]
    ((image_id, image),) = list(iter_images(FileSource(path), table, 16))
    assert image_id == hashlib.sha256(data).hexdigest() and image.size == (16, 16)


@pytest.mark.parametrize(
    ("name", "content", "reason"),
    [
        ("notes.txt", b"not an image", "unsupported_extension"),
        ("empty.png", b"", "empty_file"),
        ("broken.jpg", b"\xff\xd8\xff\xe0 not really a jpeg", None),  # corrupt / not_an_image
        ("tiny.png", None, "too_small"),
    ],
)
def test_a_bad_file_gets_the_folders_verdict_and_screening_says_nothing_was_kept(
    tmp_path, name, content, reason
):
    path = tmp_path / name
    path.write_bytes(png((4, 4)) if content is None else content)
    ref, got, _ = verdict(path)
    assert ref == name
    if reason is None:
        assert got in {"corrupt", "not_an_image"}
    else:
        assert got == reason
    with pytest.raises(NoImagesKeptError, match=r"file source .*\(caption\.source\)"):
        screen_images(FileSource(path), IngestParams(min_side=8), pipeline="caption")


def test_a_link_is_refused_unless_links_are_followed(tmp_path):
    target = tmp_path / "elsewhere" / "photo.png"
    target.parent.mkdir()
    target.write_bytes(png())
    link = tmp_path / "link.png"
    link.symlink_to(target)
    ref, reason, detail = verdict(link)
    assert (ref, reason) == ("link.png", "symlink")
    assert "ingest.follow_links" in detail
    assert verdict(link, follow_links=True)[1] is None
    # a dangling link, a link loop: broken when followed, refused when not
    (tmp_path / "gone.png").symlink_to(tmp_path / "nothing.png")
    (tmp_path / "loop.png").symlink_to("loop.png")
    for name in ("gone.png", "loop.png"):
        assert verdict(tmp_path / name)[1] == "symlink"
        assert verdict(tmp_path / name, follow_links=True)[1] == "broken_link"


def test_a_fifo_is_never_opened_and_a_huge_file_never_read(tmp_path):
    fifo = tmp_path / "fifo.png"
    os.mkfifo(fifo)
    assert within(10, lambda: verdict(fifo))[1] == "not_a_file"
    huge = sparse(tmp_path / "huge.jpg", 3 << 30)
    ref, reason, detail = within(10, lambda: verdict(huge))
    assert reason == "too_large" and "ingest.max_file_bytes" in detail


def test_a_user_path_opens_a_folder_or_a_file(tmp_path):
    (tmp_path / "photo.png").write_bytes(png())
    assert isinstance(open_user_source("folder", tmp_path), FolderSource)
    single = open_user_source("folder", tmp_path / "photo.png")
    assert isinstance(single, FileSource) and single.exists()
    assert isinstance(open_user_source("file", tmp_path / "photo.png"), FileSource)
    # a dangling link or a FIFO is a file the screening gives a verdict, not a missing folder
    (tmp_path / "gone.png").symlink_to(tmp_path / "nothing.png")
    assert isinstance(open_user_source("folder", tmp_path / "gone.png"), FileSource)
    assert not FileSource(tmp_path / "nothing.png").exists()
    with pytest.raises(MissingInputError, match="does not exist"):
        list(FileSource(tmp_path / "nothing.png").iter_records())
    with pytest.raises(InputError, match="is a folder"):
        list(FileSource(tmp_path).iter_records())
    assert not FileSource(tmp_path).exists()


def test_a_read_back_refuses_a_file_swapped_since_screening(tmp_path):
    path = tmp_path / "photo.png"
    path.write_bytes(png())
    table = screen_images(FileSource(path), IngestParams(min_side=8))
    path.write_bytes(png((40, 40)))
    with pytest.raises(InputError, match="photo.png"):
        list(iter_images(FileSource(path), table, 16))
