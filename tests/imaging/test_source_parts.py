"""Sources split into parts: the parts in order are the whole stream, for every kind."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pandas as pd
import pytest
from imaging_factory import hostile_files, write_tree

from vlv_pipeline.distributed import block
from vlv_pipeline.imaging.screen_table import (
    _screen_part,
    mark_duplicates_across_parts,
    summarise,
)
from vlv_pipeline.imaging.screening import Screener
from vlv_pipeline.imaging.source_kinds import open_source
from vlv_pipeline.params.ingest import IngestParams


def _sources(tmp_path: Path) -> dict:
    files = {k: v[0] for k, v in hostile_files().items()}
    folder = write_tree(tmp_path / "folder", files)
    rows = pd.DataFrame({"image": list(files.values()), "caption": list(files)})
    rows.to_parquet(tmp_path / "rows.parquet", row_group_size=4)  # 6 row groups
    shards = tmp_path / "shards"
    shards.mkdir()
    items = list(files.items())
    for number in range(0, len(items), 3):  # 3 images a shard, 7 shards
        with tarfile.open(shards / f"{number // 3:05d}.tar", "w") as tar:
            for i, (name, data) in enumerate(items[number : number + 3]):
                suffix = Path(name).suffix.lower() or ".bin"
                member = tarfile.TarInfo(f"{number + i:06d}{suffix}")
                member.size = len(data)
                tar.addfile(member, io.BytesIO(data))
    return {
        "folder": open_source("folder", folder),
        "parquet": open_source(
            "parquet", tmp_path / "rows.parquet", image_column="image", caption_column="caption"
        ),
        "webdataset": open_source("webdataset", shards),
    }


def test_blocks_cover_the_range_in_order():
    for units in (0, 1, 5, 21):
        for parts in (1, 2, 3, 8):
            blocks = [block(units, (k, parts)) for k in range(parts)]
            assert [i for b in blocks for i in b] == list(range(units))
            assert max(map(len, blocks)) - min(map(len, blocks)) <= 1
    with pytest.raises(ValueError, match="0 <= k < n"):
        block(4, (2, 2))


@pytest.mark.parametrize("kind", ["folder", "parquet", "webdataset"])
@pytest.mark.parametrize("parts", [2, 3, 5])
def test_the_parts_of_a_source_are_its_whole_stream(tmp_path, kind, parts):
    source = _sources(tmp_path)[kind]
    whole = [(r.ref, r.data, r.caption, r.location) for r in source.iter_records()]
    pieces = [
        (r.ref, r.data, r.caption, r.location)
        for k in range(parts)
        for r in source.iter_records(part=(k, parts))
    ]
    assert pieces == whole and len(whole) == len(hostile_files())


@pytest.mark.parametrize("kind", ["folder", "parquet", "webdataset"])
@pytest.mark.parametrize("parts", [2, 3, 5])
def test_parts_screened_apart_then_merged_give_one_process_verdicts(tmp_path, kind, parts):
    """Copies of an image in different parts are each kept by their part; merged, the later
    ones are duplicates of the first, as one process finds (hostile_files has such a pair)."""
    source = _sources(tmp_path)[kind]
    params = IngestParams()
    whole = _screen_part(source, params, None)
    pieces = pd.concat(
        [_screen_part(source, params, (k, parts)) for k in range(parts)], ignore_index=True
    )
    merged = mark_duplicates_across_parts(pieces)
    pd.testing.assert_frame_equal(merged, whole)
    assert (whole["reason"] == "duplicate").sum() == 1
    assert summarise(merged) == summarise(whole)
    screener = Screener(min_side=params.min_side, max_pixels=params.max_pixels, max_aspect_ratio=4)
    for record in source.iter_records():
        screener.screen(record)
    assert summarise(whole) == screener.summary()  # the line ingest logged before
