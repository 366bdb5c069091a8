"""The `caption` pipeline on a user's folder: any size and format, ingest's verdicts for bad files."""

import numpy as np
import pytest
from kedro.io import DataCatalog, MemoryDataset
from kedro.runner import SequentialRunner
from PIL import Image
from stage2_factory import tiny_captioner

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


def test_caption_pipeline_captions_good_files_and_reports_bad_ones(tiny_world, tiny_sd, tmp_path):
    captioner, _ = tiny_captioner(tiny_world, tiny_sd, tmp_path)
    folder = _user_folder(tmp_path / "mine")
    catalog = DataCatalog(
        {
            "vlv_captioner": MemoryDataset(captioner, copy_mode="assign"),
            "params:caption": MemoryDataset(CaptionParams(source=str(folder), batch_size=2)),
            "params:ingest": MemoryDataset(IngestParams(min_side=8)),
            "user_images": MemoryDataset(copy_mode="assign"),
            "user_captions": MemoryDataset(),
        }
    )
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


def test_no_source_says_how_to_give_one():
    with pytest.raises(ValueError, match="--params caption.source=PATH"):
        open_user_images(CaptionParams())
