"""The `pairs_dataset` caption source: caption pairs someone already made (the authors' 6M
Gemini pairs), read from a local copy written here in the layouts such a dataset comes in."""

from __future__ import annotations

import io
import logging
import os
from pathlib import Path, PurePosixPath

import datasets
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from pydantic import ValidationError

from vlv_pipeline.captioners.pairs_dataset import PairsDataset, data_files
from vlv_pipeline.errors import InputError, MissingInputError
from vlv_pipeline.params.synthesize import SynthesizeParams
from vlv_pipeline.pipelines.synthesize import nodes

FEATURES = datasets.Features(
    {
        "image": datasets.Image(),
        "caption": datasets.Value("string"),
        "key": datasets.Value("string"),
    }
)


def _params(path, **pairs) -> SynthesizeParams:
    return SynthesizeParams(
        fraction=1.0,
        captioner={"backend": "pairs_dataset", "pairs_dataset": {"path": str(path), **pairs}},
    )


def _png(shade: int, size: int = 8) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), (shade, 90, 30)).save(buf, "PNG")
    return buf.getvalue()


def _rows(source, manifest: pd.DataFrame) -> dict:
    """The pairs dataset's rows for the train images at even positions (their own file bytes,
    as ingest read them) and two images the manifest does not have."""
    train = manifest[manifest["split"] == "train"].sort_values("image_id").reset_index(drop=True)
    chosen = train.iloc[::2]
    images = [(Path(source.path) / ref).read_bytes() for ref in chosen["source"]]
    keys = [PurePosixPath(ref).name.split(".")[0] for ref in chosen["source"]]
    return {
        "image": [*images, _png(1), _png(2)],
        "caption": [f"gemini says {k}" for k in keys] + ["elsewhere 1", "elsewhere 2"],
        "key": [*keys, "nobody-1", "nobody-2"],
        "_ids": chosen["image_id"].tolist(),
    }


def _expected(rows) -> dict[str, str]:
    return dict(zip(rows["_ids"], rows["caption"], strict=False))


def _hub_dataset(rows) -> datasets.Dataset:
    return datasets.Dataset.from_dict(
        {
            "image": [{"bytes": b, "path": None} for b in rows["image"]],
            "caption": rows["caption"],
            "key": rows["key"],
        },
        features=FEATURES,
    )


def _check(pairs: pd.DataFrame, rows, captioner="pairs_dataset") -> None:
    assert list(pairs.columns) == nodes.PAIR_COLUMNS
    assert dict(zip(pairs["image_id"], pairs["caption"], strict=True)) == _expected(rows)
    assert pairs["image_id"].is_monotonic_increasing  # in the selection's order
    assert set(pairs["captioner"]) == {captioner} and set(pairs["prompt"]) == {""}


def test_hub_parquet_files_with_image_structs_match_by_sha256(tiny_world, tmp_path, caplog):
    """A hub download: data/train-0000k-of-00002.parquet, the image as the Image feature."""
    source, manifest = tiny_world
    rows = _rows(source, manifest)
    ds = _hub_dataset(rows)
    root = tmp_path / "LAION-6M-VLV"
    for k in range(2):  # two files, as a sharded upload
        ds.shard(2, k, contiguous=True).to_parquet(
            root / "data" / f"train-0000{k}-of-00002.parquet"
        )
    params = _params(root, captioner="gemini-2.0-flash")
    selection = nodes.select_images(manifest, params)
    with caplog.at_level(logging.INFO):
        pairs = nodes.synthesize_captions(source, selection, params, {})
    _check(pairs, rows, captioner="gemini-2.0-flash")
    # half the train images have a pair: the others are named, not failed
    assert f"{len(rows['_ids'])} of {len(selection)}" in caplog.text


def test_a_save_to_disk_folder_and_a_dataset_dict(tiny_world, tmp_path):
    source, manifest = tiny_world
    rows = _rows(source, manifest)
    ds = _hub_dataset(rows)
    ds.save_to_disk(tmp_path / "disk")
    datasets.DatasetDict({"train": ds, "test": ds.select([0])}).save_to_disk(tmp_path / "dict")
    selection = nodes.select_images(manifest, SynthesizeParams(fraction=1.0))
    for path in (tmp_path / "disk", tmp_path / "dict"):
        _check(nodes.synthesize_captions(source, selection, _params(path), {}), rows)
    assert [p.name for p in data_files(tmp_path / "dict", "train")] == ["data-00000-of-00001.arrow"]
    with pytest.raises(InputError, match="no split 'val'.*test, train"):
        data_files(tmp_path / "dict", "val")


def test_the_official_layout_plain_bytes_in_parquet_files(tiny_world, tmp_path):
    """The official stage-2 script reads every *.parquet of a folder, columns image, caption."""
    source, manifest = tiny_world
    rows = _rows(source, manifest)
    table = pd.DataFrame({"image": rows["image"], "caption": rows["caption"]})
    (tmp_path / "pairs").mkdir()
    table.iloc[:3].to_parquet(tmp_path / "pairs" / "part-0.parquet")
    table.iloc[3:].to_parquet(tmp_path / "pairs" / "part-1.parquet")
    selection = nodes.select_images(manifest, SynthesizeParams(fraction=1.0))
    _check(nodes.synthesize_captions(source, selection, _params(tmp_path / "pairs"), {}), rows)


@pytest.mark.parametrize("match", ["key", "source"])
def test_datasets_without_images_match_by_key_or_source(tiny_world, tmp_path, match):
    source, manifest = tiny_world
    rows = _rows(source, manifest)
    train = manifest.set_index("image_id")
    keys = (
        rows["key"]
        if match == "key"
        else [train.loc[i, "source"] for i in rows["_ids"]] + ["x/1.png", "x/2.png"]
    )
    path = tmp_path / "pairs.parquet"
    pd.DataFrame({"url_key": keys, "caption": rows["caption"]}).to_parquet(path)
    params = _params(path, match=match, key_column="url_key", image_column=None)
    selection = nodes.select_images(manifest, params)
    _check(nodes.synthesize_captions(source, selection, params, {}), rows)


def test_what_the_read_policy_refuses_is_not_read_and_the_rest_goes_on(
    tiny_world, tmp_path, caplog
):
    source, manifest = tiny_world
    rows = _rows(source, manifest)
    root = tmp_path / "pairs"
    root.mkdir()
    table = pd.DataFrame({"image": rows["image"], "caption": rows["caption"]})
    table.to_parquet(root / "a.parquet")
    # a cell over the cap, in a row group of its own: the group's page is never decompressed
    big = pd.DataFrame({"image": [os.urandom(9000)], "caption": ["too big"]})
    big.to_parquet(root / "b.parquet")
    # a linked data file: refused unless follow_links
    (tmp_path / "elsewhere.parquet").write_bytes((root / "a.parquet").read_bytes())
    (root / "c.parquet").symlink_to(tmp_path / "elsewhere.parquet")
    params = _params(root, max_file_bytes=4096)
    selection = nodes.select_images(manifest, params)
    with caplog.at_level(logging.WARNING):
        pairs = nodes.synthesize_captions(source, selection, params, {})
    _check(pairs, rows)
    assert "too_large" in caplog.text and "pairs_dataset.max_file_bytes" in caplog.text
    assert "symlink" in caplog.text and "pairs_dataset.follow_links" in caplog.text
    assert "ingest." not in caplog.text  # the settings named are this backend's own
    linked = PairsDataset(**_params(root, follow_links=True).captioner.pairs_dataset.model_dump())
    assert [p.name for p in linked.files()] == ["a.parquet", "b.parquet", "c.parquet"]


def test_an_image_given_by_path_is_read_inside_the_data_files_folder(tiny_world, tmp_path):
    source, manifest = tiny_world
    rows = _rows(source, manifest)
    root = tmp_path / "pairs"
    (root / "images").mkdir(parents=True)
    cells = []
    for n, data in enumerate(rows["image"]):
        (root / "images" / f"{n}.png").write_bytes(data)
        cells.append({"bytes": None, "path": f"images/{n}.png"})
    cells[-1] = {"bytes": None, "path": "../outside.png"}  # never read
    (tmp_path / "outside.png").write_bytes(_png(3))
    schema = pa.schema(
        [
            ("image", pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
            ("caption", pa.string()),
        ]
    )
    pq.write_table(
        pa.table({"image": cells, "caption": rows["caption"]}, schema), root / "p.parquet"
    )
    selection = nodes.select_images(manifest, SynthesizeParams(fraction=1.0))
    _check(nodes.synthesize_captions(source, selection, _params(root), {}), rows)


def test_bad_settings_and_inputs_say_what_to_fix(tiny_world, tmp_path):
    source, manifest = tiny_world
    selection = nodes.select_images(manifest, SynthesizeParams(fraction=1.0))
    with pytest.raises(MissingInputError, match="pairs_dataset.path .*nowhere"):
        nodes.synthesize_captions(source, selection, _params(tmp_path / "nowhere"), {})
    (tmp_path / "empty").mkdir()
    with pytest.raises(MissingInputError, match="no .parquet files below it"):
        nodes.synthesize_captions(source, selection, _params(tmp_path / "empty"), {})
    path = tmp_path / "other.parquet"
    pd.DataFrame({"img": [_png(5)], "text": ["a caption"]}).to_parquet(path)
    with pytest.raises(InputError, match=r"no column\(s\) \['image', 'caption'\].*img, text"):
        nodes.synthesize_captions(source, selection, _params(path), {})
    with pytest.raises(InputError, match="none of the 16 selected images"):
        nodes.synthesize_captions(
            source, selection, _params(path, image_column="img", caption_column="text"), {}
        )
    with pytest.raises(ValidationError, match="match: key needs key_column"):
        _params(path, match="key")
    with pytest.raises(ValidationError, match="match: sha256 needs image_column"):
        _params(path, image_column=None)


def test_a_cell_over_the_cap_in_an_arrow_file_is_skipped_unread(tiny_world, tmp_path, caplog):
    source, manifest = tiny_world
    rows = _rows(source, manifest)
    big = {"image": [os.urandom(6000)], "caption": ["big"], "key": ["big"], "_ids": []}
    both = {k: rows[k] + big[k] for k in ("image", "caption", "key")}
    _hub_dataset(both).save_to_disk(tmp_path / "disk")
    selection = nodes.select_images(manifest, SynthesizeParams(fraction=1.0))
    with caplog.at_level(logging.WARNING):
        pairs = nodes.synthesize_captions(
            source, selection, _params(tmp_path / "disk", max_file_bytes=4096), {}
        )
    _check(pairs, rows)
    assert "row 10: too_large: a cell of 'image' of 6000 bytes > " in caplog.text
    assert "pairs_dataset.max_file_bytes 4096: not read" in caplog.text
