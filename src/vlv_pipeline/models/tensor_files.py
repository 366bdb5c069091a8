"""Reading safetensors files that users hand over, with errors that name the file.

The safetensors library (and transformers' ``from_pretrained``, which calls it) reports a
truncated or foreign file as "Error while deserializing header: ..." without saying which
file. ``load_tensors`` reads one file; ``naming_damaged(directory)`` wraps a
``from_pretrained`` of a model directory and, when it fails that way, finds the damaged
files (each file's header is checked, no tensor is read). Both raise
``DamagedWeightsError`` naming the file and saying what to do.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from safetensors import SafetensorError

from vlv_pipeline.errors import UserError


class DamagedWeightsError(UserError, ValueError):
    """A safetensors file is truncated, empty or not safetensors at all."""


def _reason(error: BaseException) -> str:
    return str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__


def _damaged(where: object, error: BaseException, what_to_do: str) -> DamagedWeightsError:
    """The error for damaged safetensors file(s) ``where`` (a path, or the paths joined)."""
    return DamagedWeightsError(
        f"{where} is not a readable safetensors file ({_reason(error)}): it may be cut "
        f"short or not safetensors at all; {what_to_do}"
    )


def load_tensors(path: str | Path, *, what_to_do: str, device: str = "cpu") -> dict:
    """``safetensors.torch.load_file(path)``; a damaged file raises ``DamagedWeightsError``
    naming it, followed by ``what_to_do``."""
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device=device)
    except SafetensorError as error:
        raise _damaged(path, error, what_to_do) from None


def damaged_files(directory: str | Path) -> list[Path]:
    """The ``*.safetensors`` files under ``directory`` whose header does not read."""
    from safetensors import safe_open

    bad = []
    root = Path(directory)
    files = [root] if root.is_file() else sorted(root.rglob("*.safetensors"))
    for file in files:
        try:
            with safe_open(str(file), "pt"):
                pass
        except (SafetensorError, OSError):
            bad.append(file)
    return bad


@contextmanager
def naming_damaged(directory: str | Path, *, what_to_do: str) -> Iterator[None]:
    """Around loading a model directory: a safetensors failure inside becomes a
    ``DamagedWeightsError`` that names the damaged file(s) under ``directory``."""
    try:
        yield
    except DamagedWeightsError:
        raise
    except (SafetensorError, OSError) as error:
        bad = damaged_files(directory)
        if not bad and not isinstance(error, SafetensorError):
            raise  # an OSError about something else (a missing file...): as it was
        where = ", ".join(str(b) for b in bad) or f"a safetensors file under {directory}"
        raise _damaged(where, error, what_to_do) from None


def model_dir_hint(directory: str | Path) -> str:
    """What to do about a damaged model directory."""
    return (
        f"the model directory {directory} is damaged: make it again with the pipeline that "
        "wrote it (or restore it from a copy)"
    )
