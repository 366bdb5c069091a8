"""The evaluation set: the split or a COCO sample, written down as eval_set_ids."""

from __future__ import annotations

import json
import logging

import pytest
from kedro.io import Version
from pydantic import ValidationError
from table1_factory import coco_params, world_as_coco

from vlv_pipeline.datasets.atomic import JSONDataset
from vlv_pipeline.datasets.previous import LatestJSONDataset
from vlv_pipeline.errors import MissingInputError
from vlv_pipeline.params.evaluate import EvaluateParams
from vlv_pipeline.pipelines.evaluate import nodes


@pytest.fixture(scope="module")
def coco_set(tiny_world, tmp_path_factory):
    return world_as_coco(tiny_world, tmp_path_factory.mktemp("coco") / "coco")


def test_a_coco_sample_is_the_evaluation_set(tiny_world, tiny_sd, coco_set):
    source, manifest = tiny_world
    params = coco_params(tiny_sd, *coco_set, sample=5)
    data = nodes.load_eval_data(source, manifest, params)
    assert len(data.image_ids) == 5 and data.image_ids == sorted(data.image_ids, key=int)
    assert data.files == [f"COCO_val2014_{int(i):012d}.jpg" for i in data.image_ids]
    # the reference is the image's first caption: the world's own, which names its scene
    world = dict(
        zip(manifest.sort_values("image_id")["caption"], range(len(manifest)), strict=True)
    )
    assert all(r in world for r in data.references)
    assert data.images().shape == (5, 3, 16, 16)
    # the same file, size and seed: the same images (a rerun, another captioner)
    again = nodes.load_eval_data(source, manifest, params)
    assert again.image_ids == data.image_ids
    other = nodes.load_eval_data(source, manifest, coco_params(tiny_sd, *coco_set, sample=8))
    assert set(data.image_ids) <= set(other.image_ids)  # a larger sample holds the smaller


def test_a_coco_set_needs_its_files_and_a_resolution(tiny_world, tiny_sd, tmp_path, coco_set):
    source, manifest = tiny_world
    annotations, images = coco_set
    with pytest.raises(MissingInputError, match="no COCO captions file"):
        nodes.load_eval_data(source, manifest, coco_params(tiny_sd, tmp_path / "none.json", images))
    with pytest.raises(ValidationError, match="source coco needs `resolution`"):
        coco_params(tiny_sd, annotations, images, resolution=None)


def test_the_set_is_written_down_and_a_changed_source_is_reported(
    tiny_world, tiny_sd, coco_set, caplog
):
    source, manifest = tiny_world
    params = coco_params(tiny_sd, *coco_set, sample=4)
    data = nodes.load_eval_data(source, manifest, params)
    record = nodes.eval_set_ids(data, None, params)
    assert record["source"] == "coco" and (record["sample"], record["seed"]) == (4, 0)
    assert record["image_ids"] == data.image_ids and record["files"] == data.files
    json.dumps(record)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert nodes.eval_set_ids(data, record, params) == record
        assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
        earlier = {**record, "image_ids": ["999", *record["image_ids"][1:]]}
        nodes.eval_set_ids(data, earlier, params)
    assert "not comparable" in caplog.text
    split = EvaluateParams(render_t2i=str(tiny_sd), images=3)
    split_data = nodes.load_eval_data(source, manifest, split)
    written = nodes.eval_set_ids(split_data, record, split)
    assert written["source"] == "split" and written["split"] == "test" and written["images"] == 3
    assert written["files"] == split_data.files and len(written["files"]) == 3


def test_the_previous_ids_read_as_the_latest_version_or_none(tmp_path, caplog):
    path = str(tmp_path / "eval_set_ids.json")
    previous = LatestJSONDataset(filepath=path)
    assert previous.load() is None and previous.exists()
    for version, ids in (("2026-01-01T00.00.00.000Z", ["1"]), ("2026-01-02T00.00.00.000Z", ["2"])):
        JSONDataset(filepath=path, version=Version(None, version)).save({"image_ids": ids})
    assert previous.load() == {"image_ids": ["2"]}
    (tmp_path / "eval_set_ids.json/2026-01-03T00.00.00.000Z").mkdir()
    (tmp_path / "eval_set_ids.json/2026-01-03T00.00.00.000Z/eval_set_ids.json").write_text("{")
    with caplog.at_level(logging.WARNING):
        assert previous.load() is None
    assert "does not read" in caplog.text
    with pytest.raises(Exception, match="its own catalog entry writes it"):
        previous.save({"image_ids": []})
