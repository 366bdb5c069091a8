"""A full disk while a versioned file is saved leaves the previous latest version the latest
(issue 26, item 6): every file dataset of the catalog writes a temporary name, then renames."""

from __future__ import annotations

import errno
from pathlib import Path

import pandas as pd
import pytest
import yaml
from kedro.io import AbstractDataset, DatasetError

CONF = Path(__file__).resolve().parents[2] / "conf"
KEDRO_FILE_TYPES = {
    "pandas.ParquetDataset",
    "json.JSONDataset",
    "matplotlib.MatplotlibDataset",
    "pillow.ImageDataset",
    "text.TextDataset",
}
OLD, NEW = "2024-01-01T00.00.00.000Z", "2024-01-02T00.00.00.000Z"


def _entries() -> dict[str, dict]:
    found = {}
    for path in sorted(CONF.glob("*/catalog*.yml")):
        for name, entry in (yaml.safe_load(path.read_text()) or {}).items():
            if isinstance(entry, dict) and "type" in entry:
                found[f"{path.parent.name}/{path.name}:{name}"] = entry
    return found


def _figure(value: float):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(2, 2))
    axes.imshow([[value, 1 - value], [0.5, value]])
    return figure


def _image(value: int):
    from PIL import Image

    return Image.new("RGB", (64, 64), (value, 255 - value, 7))


# catalog entry -> (the object an old save writes, a new one, how a load is compared)
CASES = {
    "image_manifest": (
        pd.DataFrame({"image_id": ["a", "b"], "width": [1, 2]}),
        pd.DataFrame({"image_id": [f"x{i}" for i in range(5000)], "width": range(5000)}),
        lambda loaded: loaded["image_id"].tolist() == ["a", "b"],
    ),
    "eval_metrics": (
        {"bleu": 0.5},
        {"bleu": 0.25, "rows": list(range(5000))},
        lambda loaded: loaded == {"bleu": 0.5},
    ),
    "eval_report": ("<p>old</p>", "<p>new</p>" * 5000, lambda loaded: loaded == "<p>old</p>"),
    "eval_grid": (_figure(0.1), _figure(0.9), None),
    "eval_grid_image": (
        _image(10),
        _image(200),
        lambda loaded: loaded.getpixel((0, 0)) == (10, 245, 7),
    ),
}


def _dataset(name: str, root: Path, save_version: str | None):
    entries = _entries()
    (key,) = [k for k in entries if k.startswith("base/") and k.endswith(f":{name}")]
    config = {**entries[key], "versioned": True}
    config["filepath"] = config["filepath"].replace("${globals:data}", str(root))
    return AbstractDataset.from_config(name, config, save_version=save_version)


@pytest.mark.parametrize("name", list(CASES))
def test_a_full_disk_midway_keeps_the_previous_latest_version(
    tmp_path, monkeypatch, full_disk, name
):
    old, new, same_as_old = CASES[name]
    _dataset(name, tmp_path, OLD).save(old)
    files_before = sorted(p for p in tmp_path.rglob("*"))
    old_bytes = {p: p.read_bytes() for p in files_before if p.is_file()}

    full_disk(room=100)
    with pytest.raises(DatasetError) as failed:
        _dataset(name, tmp_path, NEW).save(new)
    monkeypatch.undo()

    latest = _dataset(name, tmp_path, None)
    assert latest.resolve_load_version() == OLD
    loaded = latest.load() if name != "eval_grid" else None
    assert same_as_old is None or same_as_old(loaded)
    # nothing half-written is visible, not even as a hidden temporary or an empty version
    assert sorted(p for p in tmp_path.rglob("*")) == files_before
    assert {p: p.read_bytes() for p in old_bytes} == old_bytes
    # the project's message: which file, why, what to do
    message = str(failed.value)
    assert message.startswith(f"could not write {tmp_path}") and NEW in message, message
    assert "disk is full" in message and "nothing was saved" in message, message


@pytest.mark.parametrize("name", list(CASES))
def test_an_atomic_save_still_writes_what_kedro_datasets_writes(tmp_path, name):
    old, new, _ = CASES[name]
    _dataset(name, tmp_path, OLD).save(old)
    _dataset(name, tmp_path, NEW).save(new)
    latest = _dataset(name, tmp_path, None)
    assert latest.resolve_load_version() == NEW
    (path,) = [p for p in tmp_path.rglob("*") if p.is_file() and NEW in str(p)]
    assert not path.name.startswith(".") and path.parent.name == NEW
    if name != "eval_grid":
        assert latest.load() is not None
    assert not [p for p in tmp_path.rglob(".*")]  # no temporary left behind


def test_every_file_dataset_in_the_catalogs_saves_atomically():
    plain = {
        key: entry["type"] for key, entry in _entries().items() if entry["type"] in KEDRO_FILE_TYPES
    }
    assert not plain, (
        "these catalog entries save through a kedro-datasets class, which writes in place: use "
        f"vlv_pipeline.datasets.atomic's class of the same name: {plain}"
    )


def test_a_model_directory_that_fails_midway_keeps_the_previous_latest(tmp_path, monkeypatch):
    """ModelDirectoryDataset was already atomic (a hidden folder, renamed): checked here the
    same way, with save_pretrained failing after it wrote a file."""
    from kedro.io import Version

    from vlv_pipeline.datasets.model_directory import ModelDirectoryDataset
    from vlv_pipeline.models.probe import AttributeProbe

    def dataset(save):
        return ModelDirectoryDataset(
            filepath=str(tmp_path / "probe"),
            load_class="vlv_pipeline.models.probe.AttributeProbe",
            version=Version(None, save),
        )

    probe = AttributeProbe(image_size=16, width=4, hidden=8)
    dataset(OLD).save(probe)
    before = sorted(tmp_path.rglob("*"))
    real = AttributeProbe.save_pretrained

    def fails_midway(self, path, **kwargs):
        real(self, path, **kwargs)  # every file written, then the disk fills
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(AttributeProbe, "save_pretrained", fails_midway)
    with pytest.raises(DatasetError, match=r"could not write .*probe.*disk is full"):
        dataset(NEW).save(probe)
    monkeypatch.undo()
    assert sorted(tmp_path.rglob("*")) == before
    latest = dataset(None)
    assert latest.resolve_load_version() == OLD and isinstance(latest.load(), AttributeProbe)
