"""The `reconstruct` pipeline on conf/base's catalog (every file under tmp_path), tiny replicas
of the real models saved where the catalog reads them: renders, sheets, table, metrics and
grid written through the real datasets, versioned; a bad file keeps its verdict and the run
goes on; FID only from reconstruct.fid_min_images images on (issue 29, section 1)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from kedro.config import OmegaConfigLoader
from kedro.io import DataCatalog, MemoryDataset
from kedro.runner import SequentialRunner
from PIL import Image
from stage2_factory import stage2_inputs

from vlv_pipeline.models.probe import AttributeProbe
from vlv_pipeline.models.seeds import image_seed
from vlv_pipeline.params.ingest import IngestParams
from vlv_pipeline.params.reconstruct import ReconstructParams
from vlv_pipeline.params.t2i import T2IParams
from vlv_pipeline.pipelines.reconstruct import create_pipeline
from vlv_pipeline.pipelines.stage2 import nodes as stage2_nodes

ROOT = Path(__file__).resolve().parents[3]
SIDE = 16  # the tiny T2I model's renders (8 x 8 latents)


@pytest.fixture(scope="module")
def models(tiny_world, tiny_sd, tmp_path_factory):
    """A tiny stage-1 encoder and the captioner trained from it (two steps), and a probe."""
    tmp = tmp_path_factory.mktemp("reconstruct_models")
    params, data, encoder, cache = stage2_inputs(tiny_world, tiny_sd, tmp)
    captioner, _ = stage2_nodes.train_stage2(
        data, encoder, cache, params, T2IParams(model=str(tiny_sd))
    )
    probe = AttributeProbe(image_size=16, width=4, hidden=8)
    probe.save_pretrained(tmp / "probe")
    return encoder, captioner, tmp / "probe"


def photos_and_shapes(root: Path, tiny_world) -> Path:
    """A folder of "photos" (random RGB JPEGs of a few hundred pixels), the shapes world's
    test images (in a subfolder), and one bad file."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True)
    for name, (h, w) in {"beach.jpg": (240, 320), "portrait.jpg": (300, 200)}.items():
        pixels = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / name, quality=90)
    world = Path(tiny_world[0].path) / "test"
    shutil.copytree(world, root / "shapes", ignore=shutil.ignore_patterns("*[2-9].png"))
    (root / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    return root


def catalog_for(tmp: Path, tiny_sd, models, **params) -> DataCatalog:
    """conf/base's catalog with `data` under ``tmp``; the encoder and captioner saved where
    stage 1 and stage 2 save them; typed parameters."""
    conf = tmp / "conf"
    if not conf.exists():
        (conf / "local").mkdir(parents=True)
        shutil.copytree(ROOT / "conf/base", conf / "base", ignore=shutil.ignore_patterns("param*"))
        (conf / "base/globals.yml").write_text(f"data: {tmp / 'data'}\nt2i: {tiny_sd}\n")
    loader = OmegaConfigLoader(str(conf), base_env="base", default_run_env="local")
    catalog = DataCatalog.from_config(loader["catalog"], credentials=loader["credentials"])
    encoder, captioner, probe = models
    if not (tmp / "data/06_models/vlv_encoder").exists():
        catalog.save("vlv_encoder", encoder)
        catalog.save("vlv_captioner", captioner)
    values = {
        "sampling": {"steps": 2, "batch_size": 2},
        "probe": str(probe),
        "batch_size": 2,
        **params,
    }
    catalog["params:reconstruct"] = MemoryDataset(ReconstructParams(**values), copy_mode="assign")
    catalog["params:ingest"] = MemoryDataset(IngestParams(min_side=8), copy_mode="assign")
    catalog["params:t2i"] = MemoryDataset(T2IParams(model=str(tiny_sd)), copy_mode="assign")
    return catalog


def versions(tmp: Path, where: str) -> list[Path]:
    return sorted(p for p in (tmp / "data" / where).glob("*/*") if not p.name.startswith("."))


@pytest.fixture(scope="module")
def run(tiny_world, tiny_sd, models, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("reconstruct")
    folder = photos_and_shapes(tmp / "mine", tiny_world)
    catalog = catalog_for(tmp, tiny_sd, models, source=str(folder))
    SequentialRunner().run(create_pipeline(), catalog)
    return tmp, folder, catalog


def test_every_kept_image_is_rendered_twice_and_the_bad_file_keeps_its_verdict(run):
    tmp, folder, catalog = run
    table = catalog.load("reconstruct_table").set_index("file")
    assert table.loc["broken.jpg", "rejected"] in {"corrupt", "not_an_image"}
    assert pd.isna(table.loc["broken.jpg", "from_embeddings"])
    kept = table[table["rejected"].isna()]
    assert {"beach.jpg", "portrait.jpg"} < set(kept.index)
    assert any(f.startswith("shapes/") for f in kept.index)
    assert kept["caption"].map(lambda c: isinstance(c, str)).all()
    # each kept image: its index in the source's order and evaluate's per-image seed
    assert sorted(kept["index"]) == list(range(len(kept)))
    assert all(s == image_seed(0, i) for s, i in zip(kept["seed"], kept["index"], strict=True))
    (renders,) = versions(tmp, "07_model_output/reconstructions")
    for name in ("original", "from_embeddings", "from_caption"):
        for file in kept.index:
            with Image.open(renders / name / f"{file}.png") as image:
                assert image.size == (SIDE, SIDE) and image.mode == "RGB"
    assert (
        kept[["mse_from_embeddings", "psnr_from_embeddings", "mse_from_caption"]]
        .notna()
        .all()
        .all()
    )
    (sheets,) = versions(tmp, "08_reporting/reconstruct_sheets")
    assert sorted(p.relative_to(sheets).as_posix() for p in sheets.rglob("*.png")) == sorted(
        f"{file}.png" for file in kept.index
    )
    with Image.open(sheets / "beach.jpg.png") as sheet:
        assert sheet.width >= 3 * 256  # three panels, upscaled from 16 px
    (grid,) = versions(tmp, "08_reporting/reconstruct_grid.png")
    assert grid.stat().st_size > 0


def test_the_metrics_say_fid_was_not_computed_below_the_threshold_and_why(run, caplog):
    tmp, _, catalog = run
    metrics = catalog.load("reconstruct_metrics")
    kept = metrics["images"]["reconstructed"]
    assert metrics["images"]["inputs"] == kept + 1 and metrics["images"]["rejected"] == 1
    assert metrics["fid"]["computed"] is False
    assert metrics["fid"]["min_images"] == 256 and metrics["fid"]["images"] == kept
    assert "fewer than reconstruct.fid_min_images (256)" in metrics["fid"]["why_not"]
    assert metrics["captioner"] == "trained" and metrics["from_caption"]["rendered"] is True
    assert set(metrics["pixels"]) == {"from_embeddings", "from_caption"}
    (written,) = versions(tmp, "08_reporting/reconstruct_metrics.json")
    assert json.loads(written.read_text()) == metrics


def test_a_second_run_writes_new_versions_and_leaves_the_first_alone(run, tiny_sd, models, caplog):
    tmp, folder, _ = run
    (first,) = versions(tmp, "07_model_output/reconstructions")
    before = {p: p.read_bytes() for p in first.rglob("*.png")}
    catalog = catalog_for(tmp, tiny_sd, models, source=str(folder), fid_min_images=2)
    with caplog.at_level("INFO", logger="vlv_pipeline.pipelines.reconstruct.scores"):
        SequentialRunner().run(create_pipeline(), catalog)
    assert len(versions(tmp, "07_model_output/reconstructions")) == 2
    assert {p: p.read_bytes() for p in first.rglob("*.png")} == before
    # the same seeds: the same renders
    second = versions(tmp, "07_model_output/reconstructions")[-1]
    assert (second / "from_embeddings/beach.jpg.png").read_bytes() == before[
        first / "from_embeddings/beach.jpg.png"
    ]
    metrics = catalog.load("reconstruct_metrics")  # enough images now: the probe's distance
    assert metrics["fid"]["computed"] is True and "why_not" not in metrics["fid"]
    assert metrics["fid"]["from_embeddings"] >= 0 and metrics["fid"]["from_caption"] >= 0
    assert "attribute probe" in metrics["fid"]["metric"]
    assert "FID not computed" not in caplog.text


def test_an_images_render_does_not_depend_on_the_batch(run, tiny_sd, models, tmp_path):
    _, folder, _ = run
    catalog = catalog_for(
        tmp_path, tiny_sd, models, source=str(folder / "beach.jpg"), model="none",
        sampling={"steps": 2, "batch_size": 1},
    )  # fmt: skip
    SequentialRunner().run(create_pipeline(), catalog)
    (alone,) = versions(tmp_path, "07_model_output/reconstructions")
    assert sorted(p.name for p in alone.rglob("*.png")) == ["beach.jpg.png"] * 2
    table = catalog.load("reconstruct_table")
    assert table["file"].tolist() == ["beach.jpg"] and table["index"].tolist() == [0]
    assert table["from_caption"].isna().all()
    metrics = catalog.load("reconstruct_metrics")
    assert metrics["from_caption"] == {
        "rendered": False,
        "why_not": "reconstruct.model is none: no captioner was asked for",
    }
    # beach.jpg is image 0 in the folder too (sorted): same seed, same render in a batch of 2
    tmp = run[0]
    first = versions(tmp, "07_model_output/reconstructions")[0]
    got = np.asarray(Image.open(alone / "from_embeddings/beach.jpg.png"), dtype=float)
    want = np.asarray(Image.open(first / "from_embeddings/beach.jpg.png"), dtype=float)
    assert np.abs(got - want).max() <= 2  # up to batched kernels' rounding


def test_a_captioner_not_trained_yet_is_left_out_with_a_warning(
    tiny_world, tiny_sd, models, tmp_path, caplog
):
    folder = photos_and_shapes(tmp_path / "mine", tiny_world)
    catalog = catalog_for(tmp_path, tiny_sd, models, source=str(folder), model="published")
    with caplog.at_level("WARNING", logger="vlv_pipeline.pipelines.reconstruct.nodes"):
        SequentialRunner().run(create_pipeline(), catalog)
    assert "run `kedro run --pipeline import_published` first" in caplog.text
    assert "reconstruct.model is 'published'" in caplog.text
    metrics = catalog.load("reconstruct_metrics")
    assert metrics["from_caption"]["rendered"] is False and metrics["captioner"] is None
    (sheets,) = versions(tmp_path, "08_reporting/reconstruct_sheets")
    with Image.open(sheets / "beach.jpg.png") as sheet:
        assert 2 * 256 <= sheet.width < 3 * 256  # original | from embeddings


def test_the_captioners_own_encoder_can_render_and_stage_1s_is_then_never_read(
    run, tiny_sd, models, tmp_path
):
    """reconstruct.encoder: captioner (what a run with the published captioner's encoder
    does): the captioner's encoder makes the embeddings; the stage-1 encoder is not read."""
    _, folder, _ = run
    catalog = catalog_for(
        tmp_path, tiny_sd, models, source=str(folder / "beach.jpg"), encoder="captioner"
    )
    shutil.rmtree(tmp_path / "data/06_models/vlv_encoder")  # never read
    SequentialRunner().run(create_pipeline(), catalog)
    metrics = catalog.load("reconstruct_metrics")
    assert metrics["encoder"] == "captioner" and metrics["images"]["reconstructed"] == 1
    (renders,) = versions(tmp_path, "07_model_output/reconstructions")
    assert (renders / "from_embeddings/beach.jpg.png").is_file()
    assert (renders / "from_caption/beach.jpg.png").is_file()


def test_the_caption_models_call_arguments_are_read_once_a_run(
    run, tiny_sd, models, tmp_path, monkeypatch
):
    """The caption renders' call arguments (``call_kwargs_of``: the model's
    model_index.json) are read once a run, not once a batch."""
    from vlv_pipeline.pipelines.reconstruct import renders

    _, folder, _ = run
    two = tmp_path / "two"
    two.mkdir()
    for name in ("beach.jpg", "portrait.jpg"):
        shutil.copy(folder / name, two / name)
    read = []
    real = renders.call_kwargs_of
    monkeypatch.setattr(renders, "call_kwargs_of", lambda where: read.append(where) or real(where))
    catalog = catalog_for(
        tmp_path, tiny_sd, models, source=str(two), sampling={"steps": 2, "batch_size": 1}
    )
    SequentialRunner().run(create_pipeline(), catalog)
    assert catalog.load("reconstruct_table")["from_caption"].notna().sum() == 2  # two batches
    assert read == [str(tiny_sd)]
