"""A captioner directory as stage 2 saves it loads and captions without Kedro: the README's
lines (``model_card.LOAD_SNIPPET``) run exactly as written, and give the caption that
`kedro run --pipeline caption` gives the same image."""

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from kedro.io import DataCatalog, MemoryDataset, Version
from kedro.runner import SequentialRunner
from kedro_datasets.pandas import ParquetDataset
from PIL import Image
from stage2_factory import tiny_captioner

from vlv_pipeline.datasets.model_directory import ModelDirectoryDataset
from vlv_pipeline.inference import Captioner, ImageRefusedError
from vlv_pipeline.models.captioner import VLVCaptioner
from vlv_pipeline.models.model_card import LOAD_SNIPPET
from vlv_pipeline.params.evaluate import CaptionParams
from vlv_pipeline.params.ingest import IngestParams
from vlv_pipeline.pipelines.caption import create_pipeline

MODELS = "data/06_models/vlv_captioner"  # where the default run saves it, and the lines read


@pytest.fixture(scope="module")
def project(tiny_world, tiny_sd, tmp_path_factory):
    """A project folder: stage 2's captioner saved where the catalog saves it (versioned),
    and a user's folder with a shapes-world image as ``photo.png``, a large JPEG and an RGBA
    PNG."""
    root = tmp_path_factory.mktemp("project")
    captioner, _ = tiny_captioner(tiny_world, tiny_sd, root)
    ModelDirectoryDataset(
        filepath=str(root / MODELS),
        load_class="vlv_pipeline.models.captioner.VLVCaptioner",
        version=Version(None, None),
    ).save(captioner)
    source, manifest = tiny_world
    world_image = source.path + "/" + manifest.sort_values("image_id")["source"].iloc[0]
    mine = root / "mine"
    mine.mkdir()
    shutil.copy(world_image, mine / "photo.png")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (300, 200, 3), dtype=np.uint8)).save(mine / "big.jpg")
    Image.fromarray(rng.integers(0, 255, (40, 30, 4), dtype=np.uint8), "RGBA").save(mine / "a.png")
    return root


@pytest.fixture(scope="module")
def pipeline_run(project):
    """What the caption pipeline run on the user's folder gives: ``{file name: caption}``,
    and ``{file name: (pixels, generation settings)}`` the captioner was handed."""
    catalog = DataCatalog(
        {
            "caption_trained_captioner": ModelDirectoryDataset(
                filepath=str(project / MODELS),
                load_class="vlv_pipeline.models.captioner.VLVCaptioner",
                version=Version(None, None),
                lazy=True,
            ),
            "caption_published_captioner": MemoryDataset(None),  # never read
            "params:caption": MemoryDataset(
                CaptionParams(source=str(project / "mine"), batch_size=2)
            ),
            "params:ingest": MemoryDataset(IngestParams()),
            "user_images": MemoryDataset(copy_mode="assign"),
            "user_captioner": MemoryDataset(copy_mode="assign"),
            "user_captions": ParquetDataset(filepath=str(project / "captions.parquet")),
            "user_captions_json": MemoryDataset(),
        }
    )
    handed = []
    original = VLVCaptioner.caption

    def recording(self, pixel_values, batch_size=64, **generation):
        handed.extend((row, generation) for row in pixel_values)
        return original(self, pixel_values, batch_size, **generation)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(VLVCaptioner, "caption", recording)
        SequentialRunner().run(create_pipeline(), catalog)
    table = catalog["user_captions"].load()
    assert table["rejected"].isna().all()
    names = [f.split("/")[-1] for f in table["file"]]
    assert names == sorted(names)  # a folder is read in name order, as the rows are handed
    return dict(zip(names, table["caption"], strict=True)), dict(zip(names, handed, strict=True))


@pytest.fixture(scope="module")
def pipeline_captions(pipeline_run):
    return pipeline_run[0]


def test_the_readme_lines_caption_as_the_caption_pipeline(
    project, pipeline_captions, monkeypatch, capsys
):
    shutil.copy(project / "mine/photo.png", project / "photo.png")
    monkeypatch.chdir(project)  # the lines name paths from the project's root
    exec(LOAD_SNIPPET, {})  # noqa: S102 - the README's lines, exactly
    assert capsys.readouterr().out == pipeline_captions["photo.png"] + "\n"
    assert len(LOAD_SNIPPET.strip().splitlines()) == 4  # PIL's import, then the three lines


def test_every_kind_of_image_gets_the_pipelines_caption(project, pipeline_captions):
    captioner = Captioner.from_pretrained(project / MODELS)
    mine = project / "mine"
    for name in ("photo.png", "big.jpg", "a.png"):
        # untouched since Image.open (read back from its file), a path, and a batch
        assert captioner.caption(Image.open(mine / name)) == pipeline_captions[name], name
        assert captioner.caption(mine / name) == pipeline_captions[name], name
    names = ["a.png", "photo.png"]
    assert captioner.caption([mine / n for n in names]) == [pipeline_captions[n] for n in names]
    # an image in memory (loaded, converted) is screened and resized as the file would be
    in_memory = Image.open(mine / "photo.png").convert("RGB")
    assert captioner.caption(in_memory) == pipeline_captions["photo.png"]
    assert in_memory.size == Image.open(mine / "photo.png").size  # the caller's image unchanged


def test_the_captioner_is_handed_what_the_pipeline_hands_it(project, pipeline_run):
    """Captions of a tiny model agree easily; its inputs are compared exactly."""
    captioner = Captioner.from_pretrained(project / MODELS)
    handed = []
    with pytest.MonkeyPatch.context() as patch:
        original = VLVCaptioner.caption

        def recording(self, pixel_values, batch_size=64, **generation):
            handed.extend((row, generation) for row in pixel_values)
            return original(self, pixel_values, batch_size, **generation)

        patch.setattr(VLVCaptioner, "caption", recording)
        for name in sorted(pipeline_run[1]):
            captioner.caption(Image.open(project / "mine" / name))
    for name, (pixels, generation) in zip(sorted(pipeline_run[1]), handed, strict=True):
        expected_pixels, expected_generation = pipeline_run[1][name]
        assert torch.equal(pixels, expected_pixels), name
        assert generation == expected_generation


def test_an_image_the_pipeline_refuses_is_refused_with_its_verdict(project, tmp_path):
    captioner = Captioner.from_pretrained(project / MODELS)
    with pytest.raises(ImageRefusedError, match=r"too_small") as refused:
        captioner.caption(Image.new("RGB", (4, 4)))
    assert refused.value.reason == "too_small"
    with pytest.raises(ImageRefusedError, match=r"bad_aspect_ratio"):
        captioner.caption(Image.new("RGB", (100, 10)))
    (tmp_path / "notes.png").write_text("not an image")
    with pytest.raises(ImageRefusedError, match=r"not_an_image"):
        captioner.caption(tmp_path / "notes.png")


def test_a_folder_without_a_captioner_says_what_makes_one(tmp_path):
    (tmp_path / "vlv_captioner").mkdir()
    with pytest.raises(FileNotFoundError, match="kedro run --pipeline stage2"):
        Captioner.from_pretrained(tmp_path / "vlv_captioner")
    with pytest.raises(FileNotFoundError, match="kedro run --pipeline stage2"):
        Captioner.from_pretrained(tmp_path / "nowhere")


def test_a_hub_repo_id_loads_what_was_published(project, pipeline_captions, monkeypatch):
    """``from_pretrained("owner/name")`` reads the repo through huggingface_hub's cache (here
    a stand-in for the download: nothing leaves the machine)."""
    import huggingface_hub

    version = next((project / MODELS).iterdir()) / "vlv_captioner"
    asked = []

    def snapshot_download(repo_id, **kwargs):
        asked.append((repo_id, kwargs))
        return str(version)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    captioner = Captioner.from_pretrained("you/vlv-shapes")
    assert asked == [("you/vlv-shapes", {"repo_type": "model"})]
    photo = Image.open(project / "mine/photo.png")
    assert captioner.caption(photo) == pipeline_captions["photo.png"]


def test_the_readme_shows_the_lines_the_test_runs():
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    assert f"```python\n{LOAD_SNIPPET}```" in readme
