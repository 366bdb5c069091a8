"""COCO's captions file and image folder as an evaluation set: loading, validation, sampling,
reading under the sources' policy."""

from __future__ import annotations

import json
import os

import pytest
import torch
from PIL import Image

from vlv_pipeline.benchmarks.coco import (
    CocoPixels,
    coco_policy,
    differs_from,
    ids_record,
    image_paths,
    read_coco_captions,
    sample_ids,
    write_coco_set,
)
from vlv_pipeline.errors import InputError, MissingInputError, ParameterError


def _image(i: int, size=(40, 24)) -> Image.Image:
    return Image.new("RGB", size, (10 * i, 200 - 10 * i, 50))


@pytest.fixture
def coco(tmp_path):
    images = [(_image(i), [f"caption {i} a", f"caption {i} b"]) for i in range(6)]
    annotations, folder = write_coco_set(tmp_path / "coco", images, first_id=100)
    return annotations, folder


def _rewrite(path, change) -> None:
    document = json.loads(path.read_text())
    change(document)
    path.write_text(json.dumps(document))


def test_the_captions_file_is_read_with_each_images_captions_in_annotation_order(coco):
    annotations, _ = coco
    # a caption listed before another of the same image but with a higher annotation id
    _rewrite(annotations, lambda d: d["annotations"].reverse())
    captions = read_coco_captions(annotations)
    assert captions.ids() == list(range(100, 106))
    assert captions.files[103] == "COCO_val2014_000000000103.jpg"
    assert captions.captions[103] == ["caption 3 a", "caption 3 b"]
    assert captions.reference(103) == "caption 3 a"  # the lowest annotation id


def test_an_image_without_captions_is_never_sampled(coco):
    annotations, _ = coco
    _rewrite(
        annotations,
        lambda d: d.update(annotations=[a for a in d["annotations"] if a["image_id"] != 101]),
    )
    assert 101 not in read_coco_captions(annotations).ids()


@pytest.mark.parametrize(
    "change, error, words",
    [
        (lambda d: d.pop("images"), InputError, "key 'images' is missing"),
        (lambda d: d.update(annotations={}), InputError, "key 'annotations' is not a list"),
        (lambda d: d["images"][2].pop("file_name"), InputError, r"images\[2\].file_name"),
        (lambda d: d["images"][1].update(id="7"), InputError, r"images\[1\].id is '7'"),
        (
            lambda d: d["images"][0].update(file_name="../secret.jpg"),
            InputError,
            "not a relative file name",
        ),
        (
            lambda d: d["annotations"][4].update(image_id=999),
            InputError,
            r"annotations\[4\].image_id 999 is not in `images`",
        ),
        (lambda d: d["annotations"][0].update(caption=None), InputError, r"\[0\].caption"),
    ],
)
def test_a_malformed_captions_file_names_the_file_and_the_key(coco, change, error, words):
    annotations, _ = coco
    _rewrite(annotations, change)
    with pytest.raises(error, match=words) as raised:
        read_coco_captions(annotations)
    assert str(annotations) in str(raised.value)


def test_a_missing_or_broken_captions_file_says_what_to_download(tmp_path):
    with pytest.raises(MissingInputError, match="captions_val2014.*annotations_trainval2014.zip"):
        read_coco_captions(tmp_path / "annotations/captions_val2014.json")
    broken = tmp_path / "broken.json"
    broken.write_text('{"images": [')
    with pytest.raises(InputError, match=f"{broken}: not valid JSON"):
        read_coco_captions(broken)
    listed = tmp_path / "list.json"
    listed.write_text("[]")
    with pytest.raises(InputError, match="a list, not an object"):
        read_coco_captions(listed)


def test_sampling_is_seeded_and_a_larger_sample_holds_a_smaller_one(coco):
    captions = read_coco_captions(coco[0])
    three = sample_ids(captions, 3, seed=0)
    assert three == sorted(three) and len(set(three)) == 3
    assert sample_ids(captions, 3, seed=0) == three  # the same file, size and seed
    assert set(three) <= set(sample_ids(captions, 5, seed=0))
    assert {tuple(sample_ids(captions, 3, seed=s)) for s in range(8)} != {tuple(three)}
    with pytest.raises(ParameterError, match="evaluate.coco.sample is 7 but .* has 6 images"):
        sample_ids(captions, 7, seed=0)


def test_images_are_read_normalised_as_ingest_does(coco):
    annotations, folder = coco
    captions = read_coco_captions(annotations)
    ids = sample_ids(captions, 4, seed=1)
    policy = coco_policy(1 << 20, follow_links=False)
    paths = image_paths(folder, [captions.files[i] for i in ids], policy)
    pixels = CocoPixels(paths, resolution=16, policy=policy)
    assert len(pixels) == 4
    item = pixels[0]
    assert item.dtype == torch.uint8 and item.shape == (3, 16, 16)  # 40x24 -> centre crop


def test_a_sampled_image_without_a_file_stops_before_anything_is_read(coco):
    annotations, folder = coco
    captions = read_coco_captions(annotations)
    files = [captions.files[i] for i in captions.ids()]
    os.remove(folder / files[2])
    with pytest.raises(MissingInputError, match=rf"1 have no file \(e.g. {files[2]}\)"):
        image_paths(folder, files, coco_policy(1 << 20, follow_links=False))
    with pytest.raises(MissingInputError, match="no COCO image folder"):
        image_paths(folder / "nope", files, coco_policy(1 << 20, follow_links=False))


def test_links_and_large_files_are_refused_as_every_source_refuses_them(coco, tmp_path):
    annotations, folder = coco
    captions = read_coco_captions(annotations)
    files = [captions.files[i] for i in captions.ids()]
    outside = tmp_path / "outside.jpg"
    _image(9).save(outside)
    os.remove(folder / files[0])
    os.symlink(outside, folder / files[0])
    with pytest.raises(InputError, match="are symbolic links"):
        image_paths(folder, files, coco_policy(1 << 20, follow_links=False))
    with pytest.raises(InputError, match="links to files outside the folder"):
        image_paths(folder, files, coco_policy(1 << 20, follow_links=True))
    os.remove(folder / files[0])
    os.symlink(folder / files[1], folder / files[0])  # a link inside the folder: allowed
    assert len(image_paths(folder, files, coco_policy(1 << 20, follow_links=True))) == 6
    with pytest.raises(InputError, match=r"larger than evaluate.coco.max_file_bytes \(10\)"):
        image_paths(folder, files[1:], coco_policy(10, follow_links=False))


def test_a_file_swapped_for_a_link_after_the_check_is_still_not_read(coco, tmp_path):
    annotations, folder = coco
    captions = read_coco_captions(annotations)
    files = [captions.files[i] for i in captions.ids()]
    policy = coco_policy(1 << 20, follow_links=False)
    pixels = CocoPixels(image_paths(folder, files, policy), 16, policy)
    os.remove(folder / files[3])
    os.symlink(folder / files[1], folder / files[3])
    with pytest.raises(InputError, match=f"{files[3]}: not read \\(symlink"):
        pixels[3]


def test_the_written_set_is_compared_with_the_last_one_drawn_the_same_way(coco):
    captions = read_coco_captions(coco[0])
    record = ids_record(captions, sample_ids(captions, 3, 0), 3, 0)
    assert record["files"] == [captions.files[int(i)] for i in record["image_ids"]]
    assert differs_from(record, None) is None
    assert differs_from(record, dict(record)) is None
    assert (
        differs_from(record, {**record, "seed": 1, "image_ids": ["1"]}) is None
    )  # drawn otherwise
    changed = {**record, "image_ids": ["1", *record["image_ids"][1:]]}
    assert "1 of the 3 images the last run evaluated" in differs_from(record, changed)
