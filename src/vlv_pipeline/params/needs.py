"""What a parameter block needs before its run starts, as data.

Each parameter model with needs answers ``needs(block)`` (``block``: the dotted name the run
knows it by, ``evaluate`` or ``study_points.shared.evaluate``, used in the messages) with a
list of the records below; the preflight (``vlv_pipeline.preflight``) checks each kind with
one checker: a model on disk or in the Hugging Face cache, an API key in its credentials
entry, a file or folder, a user's image source, the published checkpoint, the fid_clip
judge's packages and weights. Nothing here touches the disk, the network or the hub.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = [
    "FileNeed",
    "JudgeNeed",
    "KeyNeed",
    "ModelNeed",
    "Need",
    "PublishedCheckpointNeed",
    "SourceNeed",
    "component_needs",
]


@dataclass(frozen=True)
class ModelNeed:
    """A parameter naming a model: ``key`` (dotted), its value ``ref`` (a hub id or a local
    directory), the spec's ``subfolder``, and whether the run loads its ``weights`` (not for
    a tokenizer, nor a block that reads configs only)."""

    key: str
    ref: str
    subfolder: str | None = None
    weights: bool = True


@dataclass(frozen=True)
class KeyNeed:
    """An API key for the server at ``base_url`` (none needed on this machine). ``entries``:
    where the node looks for it, in order, each ``(credentials entry, row)``: the key is
    ``<entry>.api_key``, or with a row ``<entry>.<row>.api_key``; any one will do."""

    what: str
    base_url: str
    fix: str
    entries: tuple[tuple[str, str | None], ...]


@dataclass(frozen=True)
class FileNeed:
    """A file (``kind`` file) or folder (``kind`` dir) the run reads and no pipeline makes.
    Keys naming the same path make one finding, naming each key."""

    key: str
    path: str | None
    fix: str
    kind: Literal["file", "dir"] = "file"
    problem: str = "not there"


@dataclass(frozen=True)
class SourceNeed:
    """A user's images for pipeline ``block`` (``caption``, ``reconstruct``): its
    ``source`` set and there, read as ``kind``."""

    block: str
    source: str | None
    kind: str


@dataclass(frozen=True)
class PublishedCheckpointNeed:
    """``import_published`` reads the published captioner's weights from a local file."""

    key: str
    checkpoint: str | None


@dataclass(frozen=True)
class JudgeNeed:
    """The ``fid_clip`` judge of ``block``: torchmetrics with torch-fidelity installed, and
    torch-fidelity's Inception weights in the torch hub cache (its CLIP model is a
    ``ModelNeed``)."""

    block: str


Need = ModelNeed | KeyNeed | FileNeed | SourceNeed | PublishedCheckpointNeed | JudgeNeed


def component_needs(key: str, spec, weights: bool = True) -> list[ModelNeed]:
    """A ``ComponentSpec`` (or anything with ``pretrained``/``subfolder``) naming a model:
    its ``ModelNeed`` (none for a component built from ``init``). A tokenizer's weights are
    never loaded."""
    pretrained = getattr(spec, "pretrained", None)
    if spec is None or not isinstance(pretrained, str):
        return []
    subfolder = getattr(spec, "subfolder", None)
    weights = weights and "tokenizer" not in key
    return [ModelNeed(f"{key}.pretrained", pretrained, subfolder, weights)]
