"""The `reconstruct` pipeline's parts: parameters in every environment, registration, names,
the FID rule, sheets, the captioner choice, the preflight's checks (issue 29, section 1)."""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd
import pytest
from kedro.config import OmegaConfigLoader
from kedro.io import DataCatalog, MemoryDataset, Version
from kedro.pipeline import Pipeline
from PIL import Image
from pydantic import ValidationError

from vlv_pipeline import preflight, settings
from vlv_pipeline.datasets.image_folder import ImageFolderDataset
from vlv_pipeline.datasets.model_directory import ModelDirectoryDataset
from vlv_pipeline.errors import SetupError
from vlv_pipeline.models.captioning import NoCaptionerError
from vlv_pipeline.params.evaluate import CaptionParams, EvaluateParams
from vlv_pipeline.params.reconstruct import ReconstructParams
from vlv_pipeline.pipeline_registry import register_pipelines
from vlv_pipeline.pipelines.reconstruct import create_pipeline, nodes, sheets

ROOT = Path(__file__).resolve().parents[3]


def _params(**values) -> ReconstructParams:
    return ReconstructParams(**{"probe": "p", **values})


@pytest.mark.parametrize("env", ["base", "paper", "rehearsal"])
def test_every_environment_has_a_valid_reconstruct_block_and_its_catalog(env):
    loader = OmegaConfigLoader(str(ROOT / "conf"), env=env, **settings.CONFIG_LOADER_ARGS)
    params = ReconstructParams(**loader["parameters"]["reconstruct"])
    assert "t2i" not in loader["parameters"]["reconstruct"]  # the T2I: params:t2i alone
    assert params.render_t2i is None  # the captions render on that model too
    catalog = loader["catalog"]
    for name in ("reconstructions", "reconstruct_sheets", "reconstruct_metrics"):
        assert catalog[name]["versioned"] is True
    assert catalog["reconstruct_encoder"]["filepath"].endswith("/06_models/vlv_encoder")
    if env == "paper":  # the official Image_inference.sh's settings
        s = params.sampling
        assert (s.guidance, s.steps, s.seed, params.size, params.resolution) == (
            2.0,
            50,
            42,
            384,
            384,
        )
        assert (params.judge, params.fid_min_images) == ("fid_clip", 2048)
    if env == "base":
        assert (params.judge, params.fid_min_images) == ("probe", 256)  # the probe's 256-d


def test_reconstruct_is_registered_but_not_in_the_default_run():
    pipelines = register_pipelines()
    names = {n.name for n in pipelines["reconstruct"].nodes}
    assert "render_reconstructions" in names
    assert not names & {n.name for n in pipelines["__default__"].nodes}
    assert not names & {n.name for n in pipelines["vlv"].nodes}


def test_the_pipelines_inputs_and_outputs():
    pipeline = create_pipeline()
    assert pipeline.inputs() == {
        "params:reconstruct",
        "params:t2i",  # the T2I model: renders the embeddings (and captions unless render_t2i)
        "params:ingest",
        "reconstruct_encoder",
        "caption_trained_captioner",
        "caption_published_captioner",
    }
    assert {
        "reconstructions",
        "reconstruct_table",
        "reconstruct_metrics",
        "reconstruct_sheets",
        "reconstruct_grid",
    } <= pipeline.all_outputs()


def test_parameters_say_what_does_not_go_together():
    with pytest.raises(ValidationError, match="encoder captioner needs a captioner"):
        _params(encoder="captioner", model="none")
    with pytest.raises(ValidationError, match="judge probe needs `probe`"):
        ReconstructParams()
    with pytest.raises(ValidationError, match="scheduler"):
        _params(sampling={"scheduler": "NoSuchScheduler"})
    caption = _params(source="a", kind="file", resolution=384, model="published").caption_params()
    assert isinstance(caption, CaptionParams)
    assert (caption.source, caption.kind, caption.resolution, caption.model) == (
        "a",
        "file",
        384,
        "published",
    )


@pytest.mark.parametrize(
    ("ref", "name"),
    [
        ("a.jpg", "from_embeddings/a.jpg.png"),
        ("sub/a.png", "from_embeddings/sub/a.png.png"),
        ("17", "from_embeddings/17.png"),
        ("00000.tar/000000042.jpg", "from_embeddings/00000.tar/000000042.jpg.png"),
        ("../escape.jpg", "from_embeddings/abc.png"),
        ("/etc/passwd", "from_embeddings/abc.png"),
    ],
)
def test_each_render_is_named_by_its_ref_inside_the_folder(ref, name):
    assert nodes.render_name("from_embeddings", ref, "abc") == name


def test_fid_is_computed_only_from_enough_images_with_a_feature_judge():
    params = _params(fid_min_images=100)
    assert nodes.fid_needed(100, params) is None
    why = nodes.fid_needed(99, params)
    assert why.startswith("99 image(s) reconstructed, fewer than reconstruct.fid_min_images (100)")
    assert "reconstruct.judge is pixels" in nodes.fid_needed(10**6, _params(judge="pixels"))


def test_a_large_folder_with_the_fid_judge_stops_before_any_model_is_loaded(monkeypatch, tmp_path):
    """Without torchmetrics (this machine), screening that kept enough images stops the run
    with what to install; below the threshold it goes on."""
    import builtins

    real = builtins.__import__

    def no_torchmetrics(name, *args, **kwargs):
        if name.startswith("torchmetrics"):
            raise ModuleNotFoundError("No module named 'torchmetrics'")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_torchmetrics)
    for k in range(3):
        Image.new("RGB", (32, 32), (k * 80, 0, 0)).save(tmp_path / f"{k}.png")
    images = nodes.open_reconstruct_images(_params(source=str(tmp_path)))
    from vlv_pipeline.params.ingest import IngestParams

    params = _params(source=str(tmp_path), judge="fid_clip", fid_min_images=3)
    with pytest.raises(SetupError, match=r"pip install 'torchmetrics\[image\]' torch-fidelity"):
        nodes.screen_reconstruct_images(images, IngestParams(), params)
    few = _params(source=str(tmp_path), judge="fid_clip", fid_min_images=4)
    assert len(nodes.screen_reconstruct_images(images, IngestParams(), few)) == 3


def test_a_sheet_shows_its_panels_side_by_side_with_the_caption_under_them():
    panels = [(label, Image.new("RGB", (16, 16), "red")) for label in ("original", "a", "b")]
    caption = " ".join(["a long caption"] * 60)
    sheet = sheets.sheet(panels, caption, "photo.jpg (seed 1)", side=128)
    assert sheet.width == 8 + 3 * (128 + 8)
    assert sheet.height > 128 + 5 * 18  # the caption wraps over several lines
    big = sheets.sheet([("original", Image.new("RGB", (300, 300)))], "x", side=128)
    assert big.width == 8 + 300 + 8  # never shrunk


class Lazy:
    where = "data/06_models/vlv_captioner"

    def __init__(self, error=None, model=None):
        self.error, self.model = error, model

    def __call__(self):
        if self.error is not None:
            raise self.error
        return self.model


def test_the_captioner_is_chosen_as_caption_chooses_and_may_be_missing(caplog):
    import torch

    broken = Lazy(FileNotFoundError("gone"))  # a bug, not "no captioner saved": raised
    with pytest.raises(FileNotFoundError):
        nodes.choose_reconstruct_captioner(broken, broken, _params())
    from vlv_pipeline.errors import MissingInputError

    gone = Lazy(MissingInputError("no such directory"))
    with caplog.at_level(logging.WARNING, logger="vlv_pipeline.pipelines.reconstruct.nodes"):
        chosen = nodes.choose_reconstruct_captioner(gone, gone, _params())
    assert chosen.model is None and "run `kedro run --pipeline stage2` first" in chosen.why_not
    assert "reconstruct.model is 'trained'" in caplog.text
    with pytest.raises(NoCaptionerError):  # the encoder is the captioner's: it must be there
        nodes.choose_reconstruct_captioner(gone, gone, _params(encoder="captioner"))
    none = nodes.choose_reconstruct_captioner(gone, gone, _params(model="none"))
    assert none.model is None and "reconstruct.model is none" in none.why_not
    there = Lazy(model=torch.nn.Linear(1, 1))
    assert nodes.choose_reconstruct_captioner(there, gone, _params()).model is there.model


def test_an_image_folder_is_written_whole_and_versioned(tmp_path):
    dataset = ImageFolderDataset(filepath=str(tmp_path / "renders"), version=Version(None, None))
    assert not dataset.exists()
    dataset.save(iter([("a/b.png", Image.new("RGB", (4, 4))), ("c.png", b"raw bytes")]))
    folder = dataset.load()
    assert folder.names() == ["a/b.png", "c.png"] and "a/b.png" in folder
    assert folder.open("a/b.png").size == (4, 4)

    def failing():
        yield "x.png", Image.new("RGB", (4, 4))
        raise RuntimeError("rendering failed")

    again = ImageFolderDataset(filepath=str(tmp_path / "renders"), version=Version(None, None))
    with pytest.raises(Exception, match="rendering failed"):
        again.save(failing())
    versions = [p for p in (tmp_path / "renders").iterdir()]
    assert len(versions) == 1  # the failed save left no version and no temporary
    for bad in ("../x.png", "/abs.png", "a//b.png"):
        with pytest.raises(Exception, match="would leave the folder"):
            ImageFolderDataset(filepath=str(tmp_path / bad.strip("/.") or "z")).save([(bad, b"")])


# --------------------------------------------------------------------------- preflight


def _catalog(tmp_path: Path, **params) -> DataCatalog:
    def model(name, cls, lazy=True):
        return ModelDirectoryDataset(
            filepath=str(tmp_path / "data/06_models" / name),
            load_class=cls,
            version=Version(None, None),
            lazy=lazy,
        )

    block = {"source": None, "probe": str(tmp_path), **params}
    return DataCatalog(
        {
            "reconstruct_encoder": model(
                "vlv_encoder", "vlv_pipeline.models.vlv_encoder.VLVEncoder"
            ),
            "caption_trained_captioner": model(
                "vlv_captioner", "vlv_pipeline.models.captioner.VLVCaptioner"
            ),
            "caption_published_captioner": model(
                "published_captioner", "vlv_pipeline.models.captioner.VLVCaptioner"
            ),
            "params:reconstruct": MemoryDataset(block),
            "params:ingest": MemoryDataset({}),
        }
    )


def _findings(tmp_path, **params) -> list[preflight.Finding]:
    pipeline = create_pipeline()
    registry: dict[str, Pipeline] = {"reconstruct": pipeline}
    return preflight.check(pipeline, _catalog(tmp_path, **params), registry, None)


def test_the_preflight_wants_the_source_and_the_encoder_not_the_captioner(tmp_path):
    lines = [f.line() for f in _findings(tmp_path)]
    assert not any("captioner" in line for line in lines)  # optional: left out if missing
    assert any(line.startswith("reconstruct_encoder (") for line in lines)
    assert (
        "reconstruct.source: not set -> `kedro run --pipeline reconstruct --params "
        "reconstruct.source=PATH` (a folder of images or one image file)" in lines
    )
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(b"")
    lines = [f.line() for f in _findings(tmp_path, source=str(photo))]
    assert not any(line.startswith("reconstruct.source") for line in lines)
    missing = [f.line() for f in _findings(tmp_path, source=str(tmp_path / "nothing"))]
    assert any(
        "reconstruct.source = " in line and "no folder of images there" in line for line in missing
    )


def test_the_preflight_wants_the_captioner_when_its_encoder_is_used(tmp_path):
    lines = [f.line() for f in _findings(tmp_path, encoder="captioner", model="published")]
    assert not any(line.startswith("reconstruct_encoder") for line in lines)  # not read
    assert any(line.startswith("caption_published_captioner") for line in lines)
    assert not any(line.startswith("caption_trained_captioner") for line in lines)


def test_the_preflight_leaves_reconstructs_fid_judge_to_its_node():
    reconstruct = ReconstructParams(judge="fid_clip", source=".")
    assert preflight.check_parameters({"reconstruct": reconstruct}) == []
    evaluate = EvaluateParams(judge="fid_clip", render_t2i=".")
    assert preflight.check_parameters({"evaluate": evaluate})  # evaluate's is checked here
    # reconstruct has no T2I key of its own that could disagree with stage 1's
    with pytest.raises(ValidationError, match="t2i"):
        ReconstructParams(judge="fid_clip", source=".", t2i="b")


def test_a_table_row_per_input_even_without_captions(tmp_path):
    screened = pd.DataFrame(
        {
            "source": ["a.png", "b.txt"],
            "image_id": ["i1", None],
            "reason": [None, "unsupported_extension"],
            "detail": [None, "extension .txt is not an image type"],
        }
    )
    chosen = nodes.ChosenCaptioner(None, "reconstruct.model is none")
    captions = nodes.caption_reconstruct_images(chosen, None, screened, _params())
    assert captions.why_not == "reconstruct.model is none" and captions.texts() == {}
    assert captions.table["rejected"].tolist()[1] == "unsupported_extension"
