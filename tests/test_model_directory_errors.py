"""A model directory the run reads that is not there, not a model, or holds pickle weights, and
a versioned one never saved, are the user's to fix: ``kedro run`` prints one short message
(no traceback) naming the folder and what to do (issue 26, review of items 6 and 17). The
preflight is off (``VLV_SKIP_PREFLIGHT=1``, as a user may) so that the loader speaks."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from test_end_to_end import copy_project

KEDRO = str(Path(sys.executable).with_name("kedro"))
# world_tokenizer (unversioned), which `--env rehearsal --pipelines rehearsal` reads first
TOKENIZER = Path("data/rehearsal/01_raw/shapes/tokenizer")


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = copy_project(tmp_path_factory.mktemp("model_directory_errors") / "project")
    (root / "conf/local").mkdir()
    env = {
        **os.environ,
        "KEDRO_DISABLE_TELEMETRY": "true",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "VLV_SKIP_PREFLIGHT": "1",
    }
    for name in ("VLV_TRACEBACK", "KEDRO_LOGGING_CONFIG"):
        env.pop(name, None)
    return root, env


def _tokenizer_folder(root: Path, files: dict[str, bytes]) -> None:
    folder = root / TOKENIZER
    shutil.rmtree(folder, ignore_errors=True)
    for name, data in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)


@pytest.mark.parametrize(
    ("args", "files", "pieces"),
    [
        (
            ["--env", "rehearsal", "--pipelines", "rehearsal"],
            None,
            [f"{TOKENIZER}' does not exist", "Run the pipeline that saves it"],
        ),
        (
            ["--env", "rehearsal", "--pipelines", "rehearsal"],
            {"notes.txt": b"hi"},
            ["is not a save_pretrained directory", "notes.txt"],
        ),
        (
            ["--env", "rehearsal", "--pipelines", "rehearsal"],
            {"tokenizer_config.json": b"{}", "weights.bin": b"pickle"},
            ["pickle weights ['weights.bin']", "safe_serialization=True"],
        ),
        (  # a versioned model directory never saved (NoSavedVersionError, worded for the user)
            ["--pipelines", "evaluate", "--nodes", "reconstruct"],
            None,
            ["Did not find any versions", "vlv_encoder", "the pipeline that saves it"],
        ),
        (  # any other versioned dataset never saved: Kedro's own VersionNotFoundError
            ["--pipelines", "stage1", "--nodes", "load_stage1_data"],
            None,
            ["Did not find any versions", "image_manifest"],
        ),
    ],
    ids=["missing", "not-a-model", "pickle-weights", "no-version", "kedro-no-version"],
)
def test_an_unusable_model_directory_ends_in_one_short_message(project, args, files, pieces):
    root, env = project
    if files is None:
        shutil.rmtree(root / TOKENIZER, ignore_errors=True)
    else:
        _tokenizer_folder(root, files)
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
    assert len(message.splitlines()) <= 3, message


def test_the_loaders_errors_are_user_errors_and_dataset_errors(tmp_path):
    from kedro.io import DatasetError

    from vlv_pipeline.datasets.model_directory import ModelDirectoryDataset
    from vlv_pipeline.errors import ModelDirectoryError, UserError

    assert issubclass(ModelDirectoryError, UserError)
    assert issubclass(ModelDirectoryError, DatasetError)
    dataset = ModelDirectoryDataset(
        filepath=tmp_path / "nowhere", load_class="transformers.AutoTokenizer"
    )
    with pytest.raises(ModelDirectoryError, match="does not exist"):
        dataset.load()
