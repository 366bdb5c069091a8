"""Errors that are the user's to fix are the project's own types (issue 26, item 15 follow-up).

A bad parameter, a missing input, a file the user handed over: each is raised as an
``errors.UserError`` subclass that keeps its old builtin base (``ValueError``,
``FileNotFoundError``...), so ``kedro run`` prints its message alone, and code (and tests)
catching the builtin still do. The `kedro run` cases below skip the preflight
(``VLV_SKIP_PREFLIGHT=1``, as a user may) so that the nodes' own checks are the ones that
speak; each stops within seconds.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_end_to_end import copy_project

KEDRO = str(Path(sys.executable).with_name("kedro"))


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = copy_project(tmp_path_factory.mktemp("user_errors") / "project")
    (root / "conf/local").mkdir()
    env = {
        **os.environ,
        "KEDRO_DISABLE_TELEMETRY": "true",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "VLV_SKIP_PREFLIGHT": "1",  # the nodes' own checks, not the preflight's
    }
    for name in ("VLV_TRACEBACK", "KEDRO_LOGGING_CONFIG"):
        env.pop(name, None)
    return root, env


@pytest.mark.parametrize(
    ("args", "pieces"),
    [
        (  # a parameter not set (caption/nodes.py: open_user_images)
            ["--pipelines", "caption", "--nodes", "open_user_images"],
            ["caption.source is not set", "--params caption.source=PATH"],
        ),
        (  # a folder the user named that is not there (imaging/folder_source.py)
            [
                "--pipelines",
                "caption",
                "--nodes",
                "open_user_images,screen_user_images",
                "--params",
                "caption.source=/nonexistent/vlv/photos",
            ],
            ["image folder '/nonexistent/vlv/photos' does not exist"],
        ),
        (  # an input no pipeline has made yet (caption/nodes.py: choose_captioner)
            ["--pipelines", "caption", "--nodes", "choose_captioner"],
            ["caption.model is 'trained'", "run `kedro run --pipeline stage2` first"],
        ),
        (  # a parameter not set (import_published/nodes.py)
            ["--pipelines", "import_published"],
            ["import_published.checkpoint is not set", "hf download"],
        ),
    ],
    ids=["caption-no-source", "caption-no-folder", "caption-no-model", "import-no-checkpoint"],
)
def test_a_users_mistake_in_a_node_ends_in_one_short_message(project, args, pieces):
    root, env = project
    run = subprocess.run(
        [KEDRO, "run", *args], cwd=root, env=env, capture_output=True, text=True, timeout=300
    )
    out = run.stdout + run.stderr
    assert run.returncode == 1, out[-3000:]
    assert "Traceback" not in out, out[-3000:]
    assert "an unexpected error" not in out, out[-3000:]
    assert "Error: " in run.stderr, out[-3000:]
    message = run.stderr[run.stderr.index("Error: ") :]
    for piece in pieces:
        assert piece in message, message
    assert len(message.splitlines()) <= 3, message  # Kedro's own log lines come before it


def _raised(call):
    with pytest.raises(Exception) as info:
        call()
    return info.value


def test_representative_user_errors_are_user_errors_and_keep_their_builtin(tmp_path):
    from vlv_pipeline.errors import (
        InputError,
        MissingInputError,
        ParameterError,
        SetupError,
        UserError,
    )
    from vlv_pipeline.imaging.folder_source import FolderSource
    from vlv_pipeline.imaging.source_kinds import open_source
    from vlv_pipeline.models.registry import load_component
    from vlv_pipeline.params.evaluate import CaptionParams
    from vlv_pipeline.pipelines.caption.nodes import open_user_images

    assert issubclass(InputError, UserError) and issubclass(InputError, ValueError)
    assert issubclass(MissingInputError, UserError)
    assert issubclass(MissingInputError, FileNotFoundError)
    assert issubclass(SetupError, UserError) and issubclass(SetupError, RuntimeError)

    cases = [
        (lambda: open_user_images(CaptionParams()), ParameterError, ValueError),
        (lambda: open_source("zip", tmp_path), ParameterError, ValueError),
        (
            lambda: list(FolderSource(tmp_path / "nowhere").iter_records()),
            MissingInputError,
            FileNotFoundError,
        ),
        (
            lambda: load_component("unet", {"pretrained": str(tmp_path / "no_model")}),
            MissingInputError,
            FileNotFoundError,
        ),
        (
            lambda: load_component("causal_lm", {"init": {"vocab_size": 8}}),
            ParameterError,
            ValueError,
        ),
    ]
    for call, kind, builtin in cases:
        error = _raised(call)
        assert isinstance(error, kind) and isinstance(error, builtin), repr(error)


def test_a_pretrained_path_that_is_a_file_is_a_user_error(tmp_path):
    from vlv_pipeline.errors import UserError
    from vlv_pipeline.models.registry import load_component

    (tmp_path / "model.safetensors").write_bytes(b"")
    error = _raised(
        lambda: load_component("vae", {"pretrained": str(tmp_path / "model.safetensors")})
    )
    assert isinstance(error, UserError) and isinstance(error, NotADirectoryError)


def test_damaged_or_refused_weights_are_user_errors():
    from vlv_pipeline.errors import UserError
    from vlv_pipeline.models.tensor_files import DamagedWeightsError
    from vlv_pipeline.training.checkpoint_safety import CheckpointRefusedError

    for error in (DamagedWeightsError, CheckpointRefusedError):
        assert issubclass(error, UserError) and issubclass(error, ValueError)


def test_saving_into_the_users_own_images_is_a_user_error(tmp_path):
    from kedro.io import DatasetError
    from PIL import Image

    from vlv_pipeline.datasets.image_source import ImageSourceDataset
    from vlv_pipeline.errors import SaveError

    dataset = ImageSourceDataset(kind="folder", path=str(tmp_path))
    error = _raised(lambda: dataset.save({"a.png": Image.new("RGB", (8, 8))}))
    assert isinstance(error, SaveError) and isinstance(error, DatasetError), repr(error)


def test_a_missing_cache_entry_says_its_message_unquoted():
    from vlv_pipeline.errors import MissingEntryError, UserError

    error = MissingEntryError("3 image(s) are not in the latent cache: run it")
    assert isinstance(error, KeyError) and isinstance(error, UserError)
    assert str(error) == "3 image(s) are not in the latent cache: run it"  # KeyError quotes


# --------------------------------------------------------------------------- item 2


def _all_rejected(folder: Path) -> Path:
    folder.mkdir()
    (folder / "a.png").write_bytes(b"")
    (folder / "b.txt").write_text("not an image")
    return folder


def test_nothing_kept_in_the_caption_pipeline_names_caption_source(tmp_path):
    from vlv_pipeline.imaging.folder_source import FolderSource
    from vlv_pipeline.imaging.screen_table import NoImagesKeptError
    from vlv_pipeline.params.ingest import IngestParams
    from vlv_pipeline.pipelines.caption.nodes import screen_user_images

    folder = _all_rejected(tmp_path / "photos")
    with pytest.raises(NoImagesKeptError) as info:
        screen_user_images(FolderSource(folder), IngestParams(min_side=8))
    text = str(info.value)
    assert text.startswith(f"caption kept no images from folder source '{folder}'"), text
    assert "caption.source" in text and "ingest kept" not in text
    assert "ingest.*" in text  # the caption pipeline screens with ingest's parameters


def test_nothing_kept_in_ingest_names_its_catalog_entry(tmp_path):
    from vlv_pipeline.imaging.folder_source import FolderSource
    from vlv_pipeline.imaging.screen_table import NoImagesKeptError, screen_images
    from vlv_pipeline.params.ingest import IngestParams

    folder = _all_rejected(tmp_path / "raw")
    with pytest.raises(NoImagesKeptError) as info:
        screen_images(FolderSource(folder), IngestParams(min_side=8))
    text = str(info.value)
    assert text.startswith(f"ingest kept no images from folder source '{folder}'"), text
    assert "raw_images" in text and "caption.source" not in text
