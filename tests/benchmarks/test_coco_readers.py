"""One reader of COCO's captions files: the evaluation set's (``read_coco_captions``) and Table
3's few-shot examples' (``benchmarks.vqa.load_coco_captions``, on top of it) read the same file
the same way, each keeping its own checks and its own advice for a missing file."""

import json

import pytest

from vlv_pipeline.benchmarks.coco import read_coco_captions
from vlv_pipeline.benchmarks.vqa import load_coco_captions
from vlv_pipeline.errors import InputError, MissingInputError


def _captions_file(tmp_path, images=True, **changes):
    document = {
        "annotations": [
            {"id": 7, "image_id": 2, "caption": "a  second\ncaption of two"},
            {"id": 3, "image_id": 2, "caption": " the first   caption of two "},
            {"id": 5, "image_id": 1, "caption": "one"},
            {"id": 9, "image_id": 3, "caption": "   "},  # blank: image 3 has no caption
        ]
    }
    if images:
        document["images"] = [{"id": i, "file_name": f"{i}.jpg"} for i in (1, 2, 3)]
    document.update(changes)
    path = tmp_path / "captions_train2014.json"
    path.write_text(json.dumps(document))
    return path


def test_both_callers_read_one_file_the_same_way(tmp_path):
    path = _captions_file(tmp_path)
    coco = read_coco_captions(path)
    assert coco.ids() == [1, 2] and coco.reference(2) == "the first   caption of two"
    # the examples' reader: the same first captions (lowest id), white space collapsed
    assert load_coco_captions(path) == {1: "one", 2: "the first caption of two"}


def test_the_examples_reader_needs_no_images_list(tmp_path):
    path = _captions_file(tmp_path, images=False)
    assert load_coco_captions(path) == {1: "one", 2: "the first caption of two"}
    with pytest.raises(InputError, match="key 'images' is missing"):
        read_coco_captions(path)  # the evaluation set reads the images' files: it needs them


@pytest.mark.parametrize(
    "change, words",
    [
        ({"annotations": {}}, "key 'annotations' is not a list"),
        ({"annotations": [{"id": 1, "image_id": "2", "caption": "x"}]}, r"\[0\].image_id"),
        ({"annotations": [{"id": "1", "image_id": 2, "caption": "x"}]}, r"\[0\].id is '1'"),
        ({"annotations": [{"id": 1, "image_id": 2, "caption": 4}]}, r"\[0\].caption is 4"),
    ],
)
def test_a_malformed_file_is_named_by_both_callers(tmp_path, change, words):
    for images in (True, False):
        path = _captions_file(tmp_path, images=images, **change)
        for reader in (read_coco_captions, load_coco_captions):
            if reader is read_coco_captions and not images:
                continue
            with pytest.raises(InputError, match=words) as raised:
                reader(path)
            assert str(path) in str(raised.value)


def test_an_annotation_of_an_unlisted_image_is_refused_when_images_are_listed(tmp_path):
    path = _captions_file(tmp_path, annotations=[{"id": 1, "image_id": 9, "caption": "x"}])
    for reader in (read_coco_captions, load_coco_captions):
        with pytest.raises(InputError, match=r"image_id 9 is not in `images`"):
            reader(path)


def test_each_caller_says_what_to_do_about_a_missing_file(tmp_path):
    missing = tmp_path / "nowhere.json"
    with pytest.raises(MissingInputError, match="evaluate.coco.annotations"):
        read_coco_captions(missing)
    with pytest.raises(MissingInputError, match=r"captions_train2014.*train_captions"):
        load_coco_captions(missing)
