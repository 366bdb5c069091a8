"""Publishing a model directory to the Hub (publish.py), offline: the folder it would upload
is checked, and the Hub's API is recorded, never called."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from shapes_captioner import save_captioner, shapes_captioner

from vlv_pipeline.cli import cli
from vlv_pipeline.publish import PublishError, check_folder, publish

ROOT = Path(__file__).resolve().parents[1]
CARD = """---
library_name: vlv-pipeline
license: other
license_name: vlv-pipeline-shapes-world
pipeline_tag: image-to-text
---

# VLV captioner
"""
# what a captioner directory holds (models/captioner.py): the files the upload must name
EXPECTED = [
    "README.md",
    "config.json",
    "decoder/decoder.json",
    "decoder/llm/config.json",
    "decoder/llm/generation_config.json",
    "decoder/llm/model.safetensors",
    "decoder/psi.safetensors",
    "encoder/config.json",
    "encoder/diffusion_pytorch_model.safetensors",
    "provenance.json",
    "teacher.json",
    "text_encoder/config.json",
    "text_encoder/model.safetensors",
]


@pytest.fixture(autouse=True)
def _offline(monkeypatch, tmp_path):
    """No network, no token of the machine's: HF_HUB_OFFLINE, and an empty HF_HOME."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A captioner saved as the catalog saves ``vlv_captioner`` (versioned), with its card."""
    captioner = shapes_captioner()
    captioner.model_card = CARD
    captioner.provenance = {"format": 1, "model": "vlv_captioner", "made_by": "stage2"}
    folder = tmp_path_factory.mktemp("models") / "vlv_captioner"
    return folder, save_captioner(captioner, folder)


@pytest.fixture
def directory(saved, tmp_path):
    """A copy of the saved captioner directory, to spoil."""
    return Path(shutil.copytree(saved[1], tmp_path / "vlv_captioner"))


@pytest.fixture
def hub(monkeypatch):
    """HfApi's create_repo and upload_folder, recorded (nothing leaves the machine)."""
    from huggingface_hub import HfApi

    calls = []

    def create_repo(self, repo_id, **kwargs):
        calls.append(("create_repo", repo_id, kwargs, self.token))
        return f"https://huggingface.co/{repo_id}"

    def upload_folder(self, **kwargs):
        calls.append(("upload_folder", kwargs["repo_id"], kwargs, self.token))
        return "https://huggingface.co/you/vlv/commit/0"

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    return calls


def _tokenizer_files(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in (folder / "tokenizer").iterdir())


def test_the_checked_folder_is_what_is_uploaded(saved, hub, monkeypatch):
    folder, directory = saved
    monkeypatch.setenv("HF_TOKEN", "hf_test")
    checked, url = publish(folder, "you/vlv", private=True)  # the versioned folder: its latest
    files = sorted(EXPECTED + _tokenizer_files(directory))
    assert checked.folder == directory and checked.files == files
    assert url == "https://huggingface.co/you/vlv/commit/0"
    (create, repo, create_args, token), (upload, _, upload_args, _) = hub
    assert (create, repo, token) == ("create_repo", "you/vlv", "hf_test")
    assert create_args == {"private": True, "exist_ok": True, "repo_type": "model"}
    assert upload == "upload_folder"
    assert upload_args["folder_path"] == str(directory)
    assert upload_args["allow_patterns"] == files  # each checked file by name, nothing else
    assert upload_args["delete_patterns"] is None and upload_args["repo_type"] == "model"
    assert any("licence is not set" in note for note in checked.notes)


def test_prune_makes_the_repo_hold_this_folder_only(directory, hub):
    publish(directory, "you/vlv", token="hf_given", prune=True)
    assert hub[1][2]["delete_patterns"] == "*" and hub[0][3] == "hf_given"


@pytest.mark.parametrize(
    ("spoil", "refused"),
    [
        (lambda d: (d / "README.md").unlink(), "has no model card"),
        (lambda d: (d / "README.md").write_text("# no header\n"), "no metadata header"),
        (lambda d: (d / "decoder/psi.bin").write_bytes(b"x"), "decoder/psi.bin: pickle weights"),
        (lambda d: (d / "checkpoint-2").mkdir(), "checkpoint-2/: training state"),
        (
            lambda d: (d / "optimizer.safetensors").write_bytes(b"x"),
            "optimizer.safetensors: training",
        ),
        (lambda d: (d / "trainer_state.json").write_text("{}"), "trainer_state.json: training"),
        (lambda d: (d / "notes.log").write_text("x"), "notes.log: a stray file"),
        (lambda d: (d / ".README.md.tmp-x-1-2").write_text("x"), "a hidden file"),
        (lambda d: (d / "link.json").symlink_to(d / "config.json"), "link.json: a link"),
        (lambda d: (d / "text_encoder/model.safetensors").write_bytes(b"\0" * 4), "damaged"),
    ],
)
def test_a_folder_that_must_not_go_is_refused_by_name(directory, hub, spoil, refused):
    spoil(directory)
    with pytest.raises(PublishError, match=refused):
        publish(directory, "you/vlv", token="hf_test")
    assert hub == []  # nothing was sent


def test_no_token_no_upload(directory, hub):
    with pytest.raises(ValueError, match="no Hugging Face token: run `hf auth login`"):
        publish(directory, "you/vlv")
    assert hub == []


@pytest.mark.parametrize("where", ["nowhere", "config.json"])
def test_a_missing_or_wrong_path_is_refused(directory, where):
    with pytest.raises((FileNotFoundError, PublishError)):
        check_folder(directory / where)


def test_a_bad_repo_id_is_refused_before_anything(directory, hub):
    with pytest.raises(ValueError, match="--repo-id"):
        publish(directory, "no spaces allowed", token="hf_test")
    with pytest.raises(ValueError, match="<user or organisation>/<name>"):
        publish(directory, "justaname", token="hf_test")
    assert hub == []


def test_the_command_publishes_and_says_where(directory, hub, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_test")
    result = CliRunner().invoke(cli, ["publish", str(directory), "--repo-id", "you/vlv"])
    assert result.exit_code == 0, result.output
    assert "to you/vlv: https://huggingface.co/you/vlv/commit/0" in result.output
    assert hub[1][2]["folder_path"] == str(directory)
    (directory / "model.pt").write_bytes(b"x")
    refused = CliRunner().invoke(cli, ["publish", str(directory), "--repo-id", "you/vlv"])
    assert refused.exit_code == 1
    assert refused.output.startswith("Error: ") and "model.pt: pickle weights" in refused.output
    assert "Traceback" not in refused.output


def test_python_m_vlv_pipeline_publish_dry_run_lists_the_files(directory):
    env = {**os.environ, "KEDRO_DISABLE_TELEMETRY": "true", "HF_HUB_OFFLINE": "1"}
    run = subprocess.run(
        [sys.executable, "-m", "vlv_pipeline", "publish", str(directory), "--repo-id", "you/vlv"]
        + ["--dry-run"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert f"{directory}: {len(EXPECTED) + len(_tokenizer_files(directory))} files" in run.stdout
    assert "  decoder/psi.safetensors" in run.stdout
