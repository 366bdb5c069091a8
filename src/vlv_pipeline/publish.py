"""Publish a model directory to the Hugging Face Hub (optional; nothing else needs the Hub).

    python -m vlv_pipeline publish data/06_models/vlv_captioner --repo-id you/vlv-shapes
    kedro publish DIR --repo-id you/name [--private] [--dry-run] [--prune] [--token T]

``DIR`` is a model directory a run saved (a VLV encoder's or a captioner's) or the versioned
folder the catalog writes (its latest version). It is checked first (``check_folder``), and
only what was checked is uploaded:

- a ``save_pretrained`` directory (``config.json``) with its model card (``README.md`` with
  Hugging Face's metadata header: ``models/model_card.py``);
- weights in safetensors only, every one's header readable; no pickle (``.bin``, ``.pt``,
  ``.pth``, ``.pkl``, ``.ckpt``);
- nothing else: no training state (``checkpoint-*`` or ``checkpoints`` folders, optimizer,
  scheduler or random states, ``trainer_state.json``, logs), no hidden file (a save's
  temporary or backup), no link, no file of another kind (``ALLOWED_SUFFIXES``).

The upload (``huggingface_hub``'s ``HfApi.create_repo``, then ``upload_folder``) names each
checked file in ``allow_patterns``, so a file that appears after the check stays home. The
token is ``--token``, else ``HF_TOKEN``, else the one ``hf auth login`` stored. ``--prune``
deletes the repo's files this folder does not have (``delete_patterns``), so a repo that
held an older model holds exactly this one. ``--dry-run`` checks and lists, and uploads
nothing.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from vlv_pipeline.errors import MissingInputError, ParameterError, UserError
from vlv_pipeline.models.model_card_parts import CARD, PLACEHOLDER_LICENCES

ALLOWED_SUFFIXES = (".json", ".safetensors", ".txt", ".model", ".jinja")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt", ".pickle")
# training state that a model directory must not carry (names, lower case)
_STATE_FOLDERS = ("checkpoints", "logs", "runs", "optimizer", "wandb", "mlruns")
_STATE_PREFIXES = (
    "optimizer",
    "scheduler",
    "rng_state",
    "random_states",
    "trainer_state",
    "training_args",
    "events.out.tfevents",
)
_GLOB = set("*?[]")


class PublishError(UserError, ValueError):
    """A folder that cannot be published as it is, or an upload the Hub refused."""


@dataclass(frozen=True)
class Checked:
    """A folder that passed ``check_folder``: its path and every file to upload (relative,
    POSIX, sorted); ``notes`` are what the user should know (not blocking)."""

    folder: Path
    files: list[str]
    notes: list[str]


def _resolve(where: str | os.PathLike) -> Path:
    """The model directory ``where`` names: itself, or a versioned folder's latest version."""
    from vlv_pipeline.inference import _latest_version

    path = Path(where).expanduser()
    if not path.exists():
        raise MissingInputError(f"no model directory at {path}")
    if not path.is_dir() or path.is_symlink():
        raise PublishError(f"{path} is not a folder: give a model directory")
    if (path / "config.json").is_file():
        return path
    latest = _latest_version(path)
    if latest is None:
        raise PublishError(
            f"{path} is not a model directory (no config.json) nor a versioned folder of them "
            f"(<version>/{path.name}/config.json)"
        )
    return latest


def _folder_refusal(name: str, entry: Path) -> str | None:
    """Why the folder ``entry`` (named ``name``) must not be uploaded, or None."""
    if name.startswith("."):
        return "a hidden folder (a save's temporary or backup, or a tool's cache)"
    if entry.is_symlink():
        return "a link (only plain files are published)"
    if name.lower() in _STATE_FOLDERS or name.lower().startswith("checkpoint-"):
        return "training state (a checkpoint or log folder)"
    return None


def _file_refusal(relative: str, entry: Path) -> str | None:
    """Why the file ``entry`` (``relative`` to the folder) must not be uploaded, or None."""
    name = entry.name.lower()
    if name.startswith("."):
        return "a hidden file (a save's temporary, or a tool's)"
    if entry.is_symlink():
        return "a link (only plain files are published)"
    if name.startswith(_STATE_PREFIXES):
        return "training state (optimizer, scheduler or random state, trainer state, logs)"
    if name.endswith(PICKLE_SUFFIXES):
        return "pickle weights (this project publishes safetensors only)"
    if _GLOB & set(relative):
        return "a name with a glob character (*?[]) that the upload's patterns would misread"
    if not entry.is_file():
        return "not a plain file"
    if relative == CARD or name.endswith(ALLOWED_SUFFIXES):
        return None
    return f"a stray file (a model directory holds {', '.join(ALLOWED_SUFFIXES)} files and {CARD})"


def _card_notes(folder: Path) -> list[str]:
    from huggingface_hub import ModelCard

    try:
        card = ModelCard.load(folder / CARD, ignore_metadata_errors=True)
    except Exception as error:  # noqa: BLE001 - any parse failure: the card is unusable
        raise PublishError(f"{folder / CARD} does not read as a model card: {error}") from None
    if not card.data.to_dict():
        raise PublishError(
            f"{folder / CARD} has no metadata header (a '---' YAML block first): the Hub "
            "shows such a card without its library, tags, licence or results"
        )
    notes = []
    if card.data.license_name in PLACEHOLDER_LICENCES or not card.data.license:
        notes.append(
            f"the card's licence is not set ({card.data.license_name or 'none'}): edit "
            f"`license` in {folder / CARD} if you mean to publish under known terms"
        )
    return notes


def check_folder(where: str | os.PathLike) -> Checked:
    """``where``'s model directory and the files to upload, or a ``PublishError`` naming
    every file that must not go (module docstring)."""
    from vlv_pipeline.models.tensor_files import damaged_files

    folder = _resolve(where)
    if not (folder / CARD).is_file():
        raise PublishError(
            f"{folder} has no model card ({CARD}): models this project saves since model cards "
            "carry one; save it again (rerun its pipeline), or write a card with Hugging "
            "Face's metadata header"
        )
    files: list[str] = []
    refused: list[tuple[str, str]] = []
    for root, folders, names in os.walk(folder):  # links to folders are listed, not entered
        here = Path(root)
        for name in sorted(folders):
            why = _folder_refusal(name, here / name)
            if why:
                refused.append(((here / name).relative_to(folder).as_posix() + "/", why))
                folders.remove(name)  # nothing inside it is looked at, nor uploaded
        for name in sorted(names):
            relative = (here / name).relative_to(folder).as_posix()
            why = _file_refusal(relative, here / name)
            if why:
                refused.append((relative, why))
            else:
                files.append(relative)
    files.sort()
    if refused:
        listed = "; ".join(f"{path}: {why}" for path, why in refused[:10])
        more = f" (and {len(refused) - 10} more)" if len(refused) > 10 else ""
        raise PublishError(
            f"{folder} holds what must not be published: {listed}{more}. Remove them, or "
            "publish the model directory the pipeline saved"
        )
    if not any(f.endswith(".safetensors") for f in files):
        raise PublishError(f"{folder} holds no safetensors weights")
    damaged = damaged_files(folder)
    if damaged:
        names = ", ".join(str(p.relative_to(folder)) for p in damaged)
        raise PublishError(f"{folder}: damaged safetensors file(s) {names}; save the model again")
    return Checked(folder, files, _card_notes(folder))


def _token(given: str | None) -> str:
    from huggingface_hub import get_token

    token = given or get_token()  # HF_TOKEN, else the token `hf auth login` stored
    if not token:
        raise ParameterError(
            "no Hugging Face token: run `hf auth login`, set HF_TOKEN, or pass --token (a "
            "token with write access to the repo)"
        )
    return token


def publish(
    where: str | os.PathLike,
    repo_id: str,
    *,
    private: bool = False,
    token: str | None = None,
    prune: bool = False,
    message: str | None = None,
    dry_run: bool = False,
) -> tuple[Checked, str | None]:
    """Check ``where`` and upload it to the model repo ``repo_id`` (created if needed);
    returns what was checked and the commit's URL (None on a dry run)."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError, HFValidationError, OfflineModeIsEnabled
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as error:
        raise ParameterError(f"--repo-id {repo_id!r}: {error}") from None
    if "/" not in repo_id:
        raise ParameterError(f"--repo-id {repo_id!r}: give it as <user or organisation>/<name>")
    checked = check_folder(where)
    if dry_run:
        return checked, None
    api = HfApi(token=_token(token))
    try:
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        commit = api.upload_folder(
            repo_id=repo_id,
            repo_type="model",
            folder_path=str(checked.folder),
            allow_patterns=checked.files,
            delete_patterns="*" if prune else None,
            commit_message=message or f"Upload {checked.folder.name} (vlv-pipeline)",
        )
    except OfflineModeIsEnabled:
        raise PublishError("HF_HUB_OFFLINE is set: unset it to publish") from None
    except HfHubHTTPError as error:
        raise PublishError(f"the Hub refused the upload to {repo_id}: {error}") from None
    return checked, getattr(commit, "commit_url", None) or str(commit)
