"""Checking a model directory's provenance record (``models/provenance.py``) against a run.

**Comparing.** ``differences(record, wanted)`` lists the fields that disagree with what a run
wants (``wanted_settings``: from its parameters). The T2I (and the LLM) agree when their
fingerprints (the parts both sides know) agree, whatever the names; when no part can be
compared (a hub model not downloaded), the names must agree. A field the run does not fix is
not compared. ``describe`` says what differs, in words.

``ProvenanceCheck`` is what a loader (``ModelDirectoryDataset``) runs before loading: it
raises ``ProvenanceError`` (a ``UserError``: the command line prints it alone) naming what
differs and what makes the right model. The preflight (``preflight/``) sets one on every
model directory a run reads, from the run's parameters, and runs the same comparison before
any node. Nothing here imports torch or a model library.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kedro.io.core import DatasetError

from vlv_pipeline.errors import UserError
from vlv_pipeline.models.provenance import RECORD, record_of
from vlv_pipeline.models.provenance_fingerprints import (
    BUILT,
    combined_fingerprint,
    t2i_fingerprint,
)

logger = logging.getLogger(__name__)

__all__ = ["ProvenanceCheck", "ProvenanceError", "differences"]

# fields compared, in the order messages name them; those that stage 1 fixes
FIELDS = ("resolution", "t2i", "encoder", "num_queries", "embedding_width", "llm")
STAGE1_FIELDS = frozenset({"t2i", "encoder", "num_queries", "embedding_width"})


class ProvenanceError(UserError, DatasetError):
    """A model directory made for another setting than the run's (a ``DatasetError`` too, so
    a dataset's ``load`` passes it on as it is)."""


# --------------------------------------------------------------------------- comparing


def _normal(ref: str) -> str:
    path = Path(ref).expanduser()
    return os.path.realpath(path) if path.is_dir() else str(ref).rstrip("/")


def _same(name_a, parts_a, name_b, parts_b) -> bool | None:
    """Whether two references (name, {part: hash}) are the same model: by the parts both
    know, else by name; None when neither can tell."""
    shared = set(parts_a or {}) & set(parts_b or {})
    if shared:
        return all(parts_a[p] == parts_b[p] for p in shared)
    if not name_a or not name_b:
        return None
    return _normal(str(name_a)) == _normal(str(name_b))


def _parts(record: Mapping, prefix: str) -> dict:
    if prefix == "t2i":
        return dict(record.get("t2i_parts") or {})
    value = record.get("llm_fingerprint")
    return {"llm": value} if value else {}


def compare(record: Mapping, wanted: Mapping) -> tuple[list[str], list[str]]:
    """(fields that differ, fields the run fixes that could not be checked)."""
    differ, unknown = [], []
    for name in FIELDS:
        if name in ("t2i", "llm"):
            if not wanted.get(name) and not _parts(wanted, name):
                continue
            same = _same(
                record.get(name), _parts(record, name), wanted.get(name), _parts(wanted, name)
            )
        else:
            if wanted.get(name) is None:
                continue
            same = None if record.get(name) is None else record.get(name) == wanted.get(name)
        if same is False:
            differ.append(name)
        elif same is None:
            unknown.append(name)
    return differ, unknown


def differences(record: Mapping, wanted: Mapping) -> list[str]:
    """The fields of ``record`` that differ from what a run ``wanted``."""
    return compare(record, wanted)[0]


def _shipped(ref: str) -> str:
    """`` (the shipped shapes-world teacher)`` when ``ref`` is the package's own teacher."""
    teacher = Path(__file__).resolve().parents[1] / "assets" / "teacher"
    try:
        if Path(ref).expanduser().resolve() == teacher:
            return " (the shipped shapes-world teacher)"
    except (OSError, RuntimeError):
        pass
    return ""


def _t2i_words(name: Any, parts: Mapping, other: Mapping) -> str:
    if not name:
        shown = ", ".join(f"{p} {parts[p]}" for p in sorted(parts)) or "unknown"
        return f"an unnamed T2I model (architecture: {shown})"
    if other.get("t2i") and _normal(str(other["t2i"])) == _normal(str(name)):
        fingerprint = combined_fingerprint(parts) or ", ".join(
            f"{p} {parts[p]}" for p in sorted(parts)
        )
        return f"{name} (architecture {fingerprint})"
    return f"{name}{_shipped(str(name))}"


def _with(items: list[str]) -> str:
    if not items:
        return ""
    joined = items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]
    return f", with {joined}"


def _side(values: Mapping, fields: list[str], other: Mapping, head: str, at: str) -> str:
    words = head
    if "resolution" in fields:
        words += at.format(values.get("resolution"))
    if "t2i" in fields:
        words += f" against {_t2i_words(values.get('t2i'), _parts(values, 't2i'), other)}"
    items = []
    if "encoder" in fields:
        items.append(f"a {values.get('encoder')} encoder")
    if "num_queries" in fields:
        items.append(f"{values.get('num_queries')} queries")
    if "embedding_width" in fields:
        items.append(f"{values.get('embedding_width')}-wide embeddings")
    if "llm" in fields:
        llm = values.get("llm")
        if not llm:
            items.append(f"an LLM of architecture {values.get('llm_fingerprint')}")
        else:
            items.append(llm if llm.endswith(BUILT) else f"LLM {llm}")
    return words + _with(items)


def describe(record: Mapping, wanted: Mapping, fields: list[str], verb: str = "reads it") -> str:
    """``trained for 32 px images against X, with ...; this run captions at 384 px against
    Y, with ...``: the differing ``fields`` on both sides."""
    made = "imported" if record.get("made_by") == "import_published" else "trained"
    if "resolution" in fields:
        made += " for {} px images".format(record.get("resolution"))
        fields_made = [f for f in fields if f != "resolution"]
    else:
        fields_made = fields
    ours = _side(record, fields_made, wanted, made, "")
    theirs = _side(wanted, fields, record, f"this run {verb}", " at {} px")
    return f"{ours}; {theirs}"


_UNCHECKED = {
    "resolution": "the image size ({} px)",
    "t2i": "the T2I model ({})",
    "encoder": "the encoder ({})",
    "num_queries": "the number of queries ({})",
    "embedding_width": "the embedding width ({})",
    "llm": "the LLM ({})",
}


def _checked(record: Mapping, wanted: Mapping, unknown: list[str]) -> str:
    """What could be checked and agrees, in words (``32 px images, 16 queries``)."""
    words = []
    for name in FIELDS:
        if name in unknown or wanted.get(name) is None or name in ("t2i", "llm"):
            continue
        value = record.get(name)
        words.append(
            {
                "resolution": f"{value} px images",
                "encoder": f"a {value} encoder",
                "num_queries": f"{value} queries",
                "embedding_width": f"{value}-wide embeddings",
            }[name]
        )
    return ", ".join(words) or "nothing"


# --------------------------------------------------------------------------- the check


@dataclass
class ProvenanceCheck:
    """What a loader checks before loading a model directory: ``settings`` maps a model kind
    (``MODELS``, or ``"*"`` for any) to what the run wants of it. ``where`` is the dataset's
    path as shown (its versions lie below it) and ``name`` its catalog name, for messages;
    ``model`` is its kind when it has no record (from its catalog path), ``verb`` says what
    the run does with it, ``fix_chain`` remakes stage 1 and what follows, ``fix_own`` only
    this model, ``alternative`` follows either."""

    where: str
    name: str | None = None
    settings: dict[str, dict] = field(default_factory=dict)
    model: str | None = None
    verb: str = "reads it"
    fix_chain: str = ""
    fix_own: str = ""
    alternative: str = ""

    def what(self, directory: str | os.PathLike, named: bool = True) -> str:
        """``caption_trained_captioner (data/paper/06_models/vlv_captioner, version <v>)``
        (without the name when ``named`` is false: Kedro's catalog puts it first)."""
        where = self.where
        directory = Path(directory)
        if directory.parent.parent.name == Path(where).name:
            where = f"{where}, version {directory.parent.name}"
        return f"{self.name} ({where})" if self.name and named else where

    def wanted(self, record: Mapping) -> dict | None:
        wanted = self.settings.get(record.get("model")) or self.settings.get("*")
        if wanted is None:
            return None
        wanted = dict(wanted)
        if wanted.get("t2i") and "t2i_parts" not in wanted:
            wanted["t2i_parts"] = t2i_fingerprint(wanted["t2i"])["parts"]
        return wanted

    def fix(self, record: Mapping, fields: list[str]) -> str:
        stage1 = STAGE1_FIELDS | ({"resolution"} if record.get("model") == "vlv_encoder" else set())
        trained = record.get("made_by") in ("stage1", "stage2")
        chain = trained and bool(set(fields) & stage1)
        made_by = record.get("made_by")
        fix = (self.fix_chain if chain else self.fix_own) or self.fix_own or self.fix_chain
        if not fix:
            fix = f"make it again for this run's setting (`kedro run --pipeline {made_by}`)"
        if fields == ["resolution"] and self.verb == "captions" and record.get("resolution"):
            # only the side differs: caption at the model's own
            fix += f" (or `--params caption.resolution={record['resolution']}`)"
        return fix + self.alternative

    def problem(
        self, directory: str | os.PathLike, warn: bool = True
    ) -> tuple[str, str, dict] | None:
        """(what differs, the fix, the record) when the directory was made for another
        setting; None when it agrees (or records nothing this run fixes). ``warn``: log what
        could not be checked (the loader does; the preflight leaves that to it)."""
        record = record_of(directory, self.model)
        wanted = None if record is None else self.wanted(record)
        if record is None or wanted is None:
            return None
        differ, unknown = compare(record, wanted)
        if differ:
            return describe(record, wanted, differ, self.verb), self.fix(record, differ), record
        if unknown and warn:
            self._warn(self.what(directory), record, wanted, unknown)
        return None

    def _warn(self, what: str, record: Mapping, wanted: Mapping, unknown: list[str]) -> None:
        missing = ", ".join(_UNCHECKED[n].format(wanted.get(n)) for n in unknown)
        why = (
            f"has no {RECORD} (saved before model directories recorded what they were made for)"
            if record.get("legacy")
            else "records too little to compare"
        )
        logger.warning(
            "%s %s: checked: %s; could not be checked against this run: %s. If it was made "
            "for another setting, make it again: %s",
            what,
            why,
            _checked(record, wanted, unknown),
            missing,
            self.fix(record, list(STAGE1_FIELDS)).strip(),
        )

    def __call__(self, directory: str | os.PathLike, named: bool = True) -> None:
        """Raise ``ProvenanceError`` when ``directory`` was made for another setting; warn when
        what the run fixes could not all be checked. ``named``: start with the dataset's name
        (a lazy load; through the catalog, Kedro's ``DataCatalog.load`` puts it first)."""
        found = self.problem(directory)
        if found is not None:
            problem, fix, _ = found
            raise ProvenanceError(f"{self.what(directory, named)}: {problem} -> {fix}")
