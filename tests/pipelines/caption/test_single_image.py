"""`kedro run --pipeline caption --params caption.source=photo.jpg`: one image file, screened
as a folder's entry is (issue 29, section 3)."""

import json

import numpy as np
import pytest
from kedro.runner import SequentialRunner
from PIL import Image
from stage2_factory import tiny_captioner
from test_caption import _catalog, _models

from vlv_pipeline.imaging.file_source import FileSource
from vlv_pipeline.imaging.screen_table import NoImagesKeptError
from vlv_pipeline.params.evaluate import CaptionParams
from vlv_pipeline.pipelines.caption import create_pipeline
from vlv_pipeline.pipelines.caption.nodes import open_user_images


def _photo(path):
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 255, (120, 90, 3), dtype=np.uint8)).save(path)
    return path


def test_one_file_is_captioned_under_its_name(tiny_world, tiny_sd, tmp_path):
    captioner, _ = tiny_captioner(tiny_world, tiny_sd, tmp_path)
    _models(tmp_path, lazy=False)["caption_trained_captioner"].save(captioner)
    photo = _photo(tmp_path / "holiday.jpg")
    assert isinstance(open_user_images(CaptionParams(source=str(photo))), FileSource)
    catalog = _catalog(tmp_path, CaptionParams(source=str(photo), batch_size=2))
    SequentialRunner().run(create_pipeline(), catalog)
    written = json.loads((tmp_path / "captions.json").read_text())
    assert written.pop("rejected") == {}
    assert list(written) == ["holiday.jpg"] and isinstance(written["holiday.jpg"], str)


def test_a_linked_file_is_refused_unless_links_are_followed(tmp_path):
    photo = _photo(tmp_path / "holiday.jpg")
    (tmp_path / "link.jpg").symlink_to(photo)
    catalog = _catalog(tmp_path, CaptionParams(source=str(tmp_path / "link.jpg")))
    with pytest.raises(NoImagesKeptError, match=r"symlink=1.*ingest\.follow_links"):
        SequentialRunner().run(_screening(), catalog)


def test_a_file_that_is_no_image_says_why(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    catalog = _catalog(tmp_path, CaptionParams(source=str(tmp_path / "notes.txt")))
    with pytest.raises(NoImagesKeptError, match=r"file source .*unsupported_extension=1"):
        SequentialRunner().run(_screening(), catalog)


def _screening():
    return create_pipeline().only_nodes("open_user_images", "screen_user_images")
