"""The `caption` pipeline on a user's folder: any size and format, ingest's verdicts for bad files."""

import json
import os
import threading

import numpy as np
import pandas as pd
import pytest
from kedro.io import DataCatalog, MemoryDataset, Version
from kedro.runner import SequentialRunner
from kedro_datasets.json import JSONDataset
from kedro_datasets.pandas import ParquetDataset
from PIL import Image
from stage2_factory import tiny_captioner

from vlv_pipeline.datasets.model_directory import ModelDirectoryDataset
from vlv_pipeline.models.captioning import official_postprocess
from vlv_pipeline.params.evaluate import CaptionParams
from vlv_pipeline.params.ingest import IngestParams
from vlv_pipeline.pipelines.caption import create_pipeline
from vlv_pipeline.pipelines.caption.nodes import open_user_images


def _user_folder(root):
    rng = np.random.default_rng(0)
    root.mkdir()
    Image.fromarray(rng.integers(0, 255, (300, 200, 3), dtype=np.uint8)).save(root / "big.jpg")
    Image.fromarray(rng.integers(0, 255, (40, 40, 4), dtype=np.uint8), "RGBA").save(root / "a.png")
    Image.fromarray(rng.integers(0, 255, (20, 24), dtype=np.uint8), "L").save(root / "grey.webp")
    (root / "empty.png").write_bytes(b"")
    (root / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (root / "notes.txt").write_text("not an image")
    return root


def _models(tmp_path, lazy=True):
    """The two captioner datasets as the catalog declares them (lazy, versioned)."""
    return {
        f"caption_{name}_captioner": ModelDirectoryDataset(
            filepath=str(tmp_path / f"{name}_captioner"),
            load_class="vlv_pipeline.models.captioner.VLVCaptioner",
            version=Version(None, None),
            lazy=lazy,
        )
        for name in ("trained", "published")
    }


def _catalog(tmp_path, params: CaptionParams) -> DataCatalog:
    return DataCatalog(
        {
            **_models(tmp_path),
            "params:caption": MemoryDataset(params),
            "params:ingest": MemoryDataset(IngestParams(min_side=8)),
            "user_images": MemoryDataset(copy_mode="assign"),
            "user_captioner": MemoryDataset(copy_mode="assign"),
            "user_captions": ParquetDataset(filepath=str(tmp_path / "captions.parquet")),
            "user_captions_json": JSONDataset(filepath=str(tmp_path / "captions.json")),
        }
    )


def test_caption_pipeline_captions_good_files_and_reports_bad_ones(tiny_world, tiny_sd, tmp_path):
    captioner, _ = tiny_captioner(tiny_world, tiny_sd, tmp_path)
    _models(tmp_path, lazy=False)["caption_trained_captioner"].save(captioner)
    folder = _user_folder(tmp_path / "mine")
    catalog = _catalog(tmp_path, CaptionParams(source=str(folder), batch_size=2))
    # no published captioner exists: it is never read when caption.model is trained
    SequentialRunner().run(create_pipeline(), catalog)
    table = catalog["user_captions"].load().set_index("file")
    assert list(table.columns) == ["image_id", "caption", "rejected", "detail"]
    kept = table[table["rejected"].isna()]
    assert {f.split("/")[-1] for f in kept.index} == {"big.jpg", "a.png", "grey.webp"}
    assert kept["caption"].map(lambda c: isinstance(c, str)).all()
    reasons = {f.split("/")[-1]: r for f, r in table["rejected"].dropna().items()}
    assert reasons["empty.png"] == "empty_file" and reasons["broken.jpg"] in {
        "corrupt",
        "not_an_image",
    }
    assert table.loc[table["rejected"].notna(), "caption"].isna().all()
    # the official inference's format: {relative/path: caption}, rejects under their own key
    written = json.loads((tmp_path / "captions.json").read_text())
    rejected = written.pop("rejected")
    assert written == kept["caption"].to_dict()
    assert rejected["empty.png"] == "empty_file: zero bytes"
    assert set(rejected) == {"empty.png", "broken.jpg", "notes.txt"}


def test_a_captioner_not_made_yet_says_which_pipeline_makes_it(tmp_path):
    folder = _user_folder(tmp_path / "mine")
    catalog = _catalog(tmp_path, CaptionParams(source=str(folder), model="published"))
    with pytest.raises(ValueError, match="run `kedro run --pipeline import_published` first"):
        SequentialRunner().run(create_pipeline(), catalog)


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("A cat. A cat. A dog on a mat. A cat", "A cat. A dog on a mat."),
        ("A red circle.", "A red circle."),
        ("no full stop at all", "no full stop at all"),
        ("One. Two. One. Two. Thr", "One. Two."),
    ],
)
def test_the_official_clean_up_cuts_and_drops_repeats(raw, clean):
    assert official_postprocess(raw) == clean


def test_no_source_says_how_to_give_one():
    with pytest.raises(ValueError, match="--params caption.source=PATH"):
        open_user_images(CaptionParams())


def _run_with_a_trained_captioner(tiny_world, tiny_sd, tmp_path, folder, **params):
    captioner, _ = tiny_captioner(tiny_world, tiny_sd, tmp_path)
    _models(tmp_path, lazy=False)["caption_trained_captioner"].save(captioner)
    catalog = _catalog(tmp_path, CaptionParams(source=str(folder), batch_size=2, **params))
    SequentialRunner().run(create_pipeline(), catalog)
    table = catalog["user_captions"].load().set_index("file")
    return table, json.loads((tmp_path / "captions.json").read_text())


def test_a_duplicate_gets_one_verdict_and_the_log_agrees_with_the_outputs(
    tiny_world, tiny_sd, tmp_path, caplog
):
    """Issue 26, item 11: the copy was both captioned and rejected, so the log's counts
    (distinct captions) and the JSON's (rows with a caption) differed."""
    folder = _user_folder(tmp_path / "mine")
    (folder / "copy_of_a.png").write_bytes((folder / "a.png").read_bytes())
    with caplog.at_level("INFO", logger="vlv_pipeline.pipelines.caption.nodes"):
        table, written = _run_with_a_trained_captioner(tiny_world, tiny_sd, tmp_path, folder)
    assert table.loc["copy_of_a.png", "rejected"] == "duplicate"
    assert pd.isna(table.loc["copy_of_a.png", "caption"])  # one verdict: not also captioned
    assert table.loc["copy_of_a.png", "detail"] == "same bytes as a.png"
    assert (table["caption"].notna() ^ table["rejected"].notna()).all()  # exactly one each
    rejected = written.pop("rejected")
    captioned = len(written)
    assert (captioned, len(rejected)) == (3, 4)
    assert rejected["copy_of_a.png"] == "duplicate: same bytes as a.png"
    (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("caption:")]
    assert line.startswith(f"caption: {captioned} images captioned, {len(rejected)} rejected")


def test_a_hostile_folder_is_captioned_to_the_end_with_a_verdict_per_entry(
    tiny_world, tiny_sd, tmp_path
):
    """Issue 26, items 3, 9, 10: a link loop, a FIFO, a link out, a huge sparse file."""
    folder = _user_folder(tmp_path / "mine")
    outside = tmp_path / "outside.png"
    outside.write_bytes((folder / "a.png").read_bytes()[::-1])
    (folder / "loop.png").symlink_to("loop.png")
    (folder / "out.png").symlink_to(outside)
    os.mkfifo(folder / "fifo.png")
    with open(folder / "huge.jpg", "wb") as f:
        f.truncate(3 << 30)
    done: dict = {}

    def run():
        done["result"] = _run_with_a_trained_captioner(tiny_world, tiny_sd, tmp_path, folder)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(120)
    assert "result" in done, "the caption run did not finish (see the log)"
    table, written = done["result"]
    rejected = written.pop("rejected")
    assert set(written) == {"big.jpg", "a.png", "grey.webp"}
    assert {k: v.split(":")[0] for k, v in rejected.items()} == {
        "empty.png": "empty_file",
        "broken.jpg": table.loc["broken.jpg", "rejected"],
        "notes.txt": "unsupported_extension",
        "loop.png": "symlink",
        "out.png": "symlink",
        "fifo.png": "not_a_file",
        "huge.jpg": "too_large",
    }
