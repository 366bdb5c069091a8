import numpy as np
import pytest
from kedro.io import DataCatalog, MemoryDataset
from kedro.runner import SequentialRunner
from PIL import Image

from vlv_pipeline.params.world import WorldParams
from vlv_pipeline.pipelines.world import create_pipeline
from vlv_pipeline.world import CaptionParser, Vocabulary, caption
from vlv_pipeline.world.generate import generate_labels, objects_from_row, render_images


@pytest.fixture
def params():
    return WorldParams(counts={"train": 12, "val": 3, "test": 5})


def test_labels_are_deterministic_and_consistent(params):
    a, b = generate_labels(params), generate_labels(params)
    assert a["caption"].tolist() == b["caption"].tolist()
    assert a["file"].tolist()[:2] == ["train/000000.png", "train/000001.png"]
    assert a["split"].value_counts().to_dict() == {"train": 12, "test": 5, "val": 3}
    parser = CaptionParser(Vocabulary.from_params(params))
    for row in a.itertuples():
        objects = objects_from_row(row.objects)
        assert caption(objects) == row.caption
        assert parser.parse(row.caption).keys() == {o.key() for o in objects}
        assert row.n_objects == len(objects) <= params.max_objects
    other_seed = generate_labels(WorldParams(**{**params.model_dump(), "seed": 1}))
    assert other_seed["caption"].tolist() != a["caption"].tolist()


def test_growing_a_split_keeps_earlier_images(params):
    small = generate_labels(params)
    bigger = generate_labels(
        WorldParams(**{**params.model_dump(), "counts": {"train": 20, "val": 3, "test": 5}})
    )
    assert (
        small.loc[small.split == "train", "caption"].tolist()
        == bigger.loc[bigger.split == "train", "caption"].tolist()[:12]
    )


def test_images_are_rendered_lazily_and_deterministically(params):
    labels = generate_labels(params)
    images = render_images(labels, params)
    assert set(images) == set(labels["file"])
    first = images["train/000000.png"]
    assert callable(first)
    image = first()
    assert isinstance(image, Image.Image) and image.size == (32, 32) and image.mode == "RGB"
    assert np.array_equal(
        np.asarray(image), np.asarray(render_images(labels, params)["train/000000.png"]())
    )


def test_pipeline_runs_on_an_in_memory_catalog(params):
    catalog = DataCatalog(
        {
            "params:world": MemoryDataset(params),
            "world_labels": MemoryDataset(),
            "raw_images": MemoryDataset(copy_mode="assign"),
            "world_tokenizer": MemoryDataset(copy_mode="assign"),
        }
    )
    SequentialRunner().run(create_pipeline(), catalog)
    images = catalog.load("raw_images")
    assert len(images) == 20
    tokenizer = catalog.load("world_tokenizer")
    ids = tokenizer(generate_labels(params)["caption"].tolist()).input_ids
    assert all(tokenizer.unk_token_id not in row for row in ids)


def test_every_image_is_distinct_and_an_impossible_count_says_so():
    tight = dict(max_objects=1, jitter=0.0, counts={"train": 150, "val": 30, "test": 30})
    labels = generate_labels(WorldParams(**tight))
    images = render_images(labels, WorldParams(**tight))
    assert len({np.asarray(images[f]()).tobytes() for f in labels["file"]}) == 210
    # 9 cells x 24 objects = 216 distinct single-object images exist, no more.
    with pytest.raises(ValueError, match="distinct image"):
        generate_labels(WorldParams(**{**tight, "counts": {"train": 200, "val": 10, "test": 10}}))
