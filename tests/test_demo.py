"""The demo page's models and answers without a browser (``demo.py``; the page itself in a real
browser: tests/browser/test_demo_page.py): an upload is rendered exactly as the reconstruct
pipeline renders a source of that one file; bad uploads get the caption pipeline's verdicts
and a bug one line, never a traceback; a model not saved yet stops the start with a message
naming what to run (issue 29, section 2)."""

from __future__ import annotations

import dataclasses
import logging
import shutil
import socket

import numpy as np
import pytest
from click.testing import CliRunner
from demo_factory import ROOT, tiny_demo_project
from kedro.framework.session import KedroSession
from kedro.framework.startup import bootstrap_project
from kedro.io import MemoryDataset
from kedro.runner import SequentialRunner
from PIL import Image

from vlv_pipeline import cli, demo
from vlv_pipeline.inference import Captioner


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    bootstrap_project(ROOT)
    return tiny_demo_project(tmp_path_factory.mktemp("demo"))


FEW_STEPS = {"reconstruct": {"sampling": {"steps": 2}}}  # conf/base's 25 make the same point


@pytest.fixture(scope="module")
def models(project):
    return demo.load_models(
        project_path=ROOT, conf_source=str(project.conf), runtime_params=FEW_STEPS
    )


def _conf_with_data(project, root):
    """``project``'s conf with an empty data root under ``root``."""
    conf = root / "conf"
    shutil.copytree(project.conf, conf)
    (conf / "local/globals.yml").write_text(f"data: {root / 'data'}\nt2i: {project.t2i}\n")
    return conf


def test_an_upload_is_captioned_and_rendered_as_the_pipelines_do(project, models, tmp_path):
    from vlv_pipeline.pipelines.reconstruct import create_pipeline

    shown = demo.handle_upload(models, project.image)
    assert shown.error is None
    expected = Captioner.from_pretrained(project.data / "06_models/vlv_captioner")
    assert shown.caption == expected.caption(Image.open(project.image))

    # `kedro run --pipeline reconstruct` on a folder holding this one file
    folder = tmp_path / "mine"
    folder.mkdir()
    shutil.copy(project.image, folder / "shape.png")
    with KedroSession.create(
        project_path=ROOT, conf_source=str(project.conf), runtime_params=FEW_STEPS
    ) as session:
        context = session.load_context()
        catalog, params = context.catalog, context.params
    reconstruct = params["reconstruct"].model_copy(update={"source": str(folder)})
    catalog["params:reconstruct"] = MemoryDataset(reconstruct, copy_mode="assign")
    catalog["params:ingest"] = MemoryDataset(params["ingest"], copy_mode="assign")
    SequentialRunner().run(create_pipeline().to_outputs("reconstructions"), catalog)
    (renders,) = (project.data / "07_model_output/reconstructions").glob("*/reconstructions")
    for name in ("original", "from_embeddings", "from_caption"):
        with Image.open(renders / name / "shape.png.png") as pipeline_image:
            page_image = np.asarray(getattr(shown, name))
            assert np.array_equal(page_image, np.asarray(pipeline_image.convert("RGB"))), name
    assert reconstruct.sampling.steps == models.params.sampling.steps == 2
    assert "encoder (stage 1)" in models.where and "captioner (trained)" in models.where


def test_bad_uploads_get_the_caption_pipelines_verdicts(project, models, tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("not an image")
    shown = demo.handle_upload(models, notes)
    assert shown.error.startswith("Refused: notes.txt is not an image (not_an_image).")
    assert shown.caption is None and shown.from_embeddings is None
    assert str(tmp_path) not in shown.error  # the upload's name, not the server's path

    data = project.image.read_bytes()
    cut = tmp_path / "cut.png"
    cut.write_bytes(data[: len(data) // 2])
    assert "Refused: cut.png is corrupt (corrupt)." in demo.handle_upload(models, cut).error

    small = dataclasses.replace(
        models, captioner=Captioner(project.captioner, ingest={"max_file_bytes": 100})
    )
    error = demo.handle_upload(small, project.image).error
    assert error.startswith("Refused: shape.png is too large (too_large).")
    assert "> max_file_bytes 100" in error

    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    assert "(empty_file)" in demo.handle_upload(models, empty).error
    assert demo.handle_upload(models, None).error == "Upload an image file."


def test_a_bug_shows_one_line_and_logs_its_traceback(project, models, monkeypatch, caplog):
    def broken(*args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(models.t2i, "render", broken)
    with caplog.at_level(logging.ERROR, logger="vlv_pipeline.demo"):
        shown = demo.handle_upload(models, project.image)
    assert shown.error == (
        "Something went wrong with shape.png (RuntimeError); the server's console has the details."
    )
    assert "Traceback" not in shown.error and "a bug" not in shown.error
    assert any(r.exc_info and "a bug" in str(r.exc_info[1]) for r in caplog.records)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_without_models_the_command_says_to_run_make_run(project, tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    conf = _conf_with_data(project, tmp_path)
    runner = CliRunner()
    args = ["--conf-source", str(conf), "--port", str(_free_port())]
    result = runner.invoke(cli.demo, args)
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    assert (
        f"Error: the demo page has no captioner: {tmp_path / 'data/06_models/vlv_captioner'} "
        "holds none (caption.model: trained). Run `make run` (or `kedro run --pipeline stage2`) "
        "first, then start the page again."
    ) in result.output

    # a captioner but no stage-1 encoder: say so, or render from the captioner's encoder
    from kedro.config import OmegaConfigLoader
    from kedro.io import DataCatalog

    loader = OmegaConfigLoader(str(conf), base_env="base", default_run_env="local")
    catalog = DataCatalog.from_config(loader["catalog"], credentials=loader["credentials"])
    catalog.save("vlv_captioner", project.captioner)
    result = runner.invoke(cli.demo, args)
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "Error: the demo page has no stage-1 VLV encoder" in result.output
    assert "Run `make run` (or `kedro run --pipeline stage1`) first" in result.output
    assert "--params reconstruct.encoder=captioner" in result.output
    models = demo.load_models(
        project_path=ROOT,
        conf_source=str(conf),
        runtime_params={"reconstruct": {"encoder": "captioner", "sampling": {"steps": 2}}},
    )
    assert models.encoder is models.captioner.model.encoder
    assert demo.handle_upload(models, project.image).from_embeddings is not None


def test_a_port_in_use_is_named_before_any_model_loads(project, monkeypatch):
    monkeypatch.chdir(ROOT)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = CliRunner().invoke(
            cli.demo, ["--conf-source", str(project.conf), "--port", str(port)]
        )
    assert result.exit_code == 1
    assert f"Error: port {port} on 127.0.0.1 is in use" in result.output
    assert "Loading the models" not in result.output
