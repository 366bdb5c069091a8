"""The preflight's findings, its one message, and the helpers every check shares: where a
dataset lies, which registered pipeline writes it, what the hub cache holds, the command to
run."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from vlv_pipeline.distributed import rank, world_size
from vlv_pipeline.errors import UserError

WEIGHT_SUFFIXES = (".safetensors", ".bin")
NOT_CACHED = "not a local directory and not in the Hugging Face cache"
NO_WEIGHTS = "in the Hugging Face cache without its weights (configs only)"


# --------------------------------------------------------------------------- findings


@dataclass(frozen=True)
class Finding:
    """One missing piece: what, why, and what provides it. ``download``: a download does.
    ``mismatch``: it is there, but made for another setting (models/provenance.py)."""

    what: str
    problem: str
    fix: str
    download: bool = False
    mismatch: bool = False

    def line(self) -> str:
        return f"{self.what}: {self.problem} -> {self.fix}"


class MissingComponentsError(click.ClickException, UserError, RuntimeError):
    """The run cannot start: its message lists each missing piece and what provides it.

    A ``click.ClickException``, so ``kedro run`` prints ``Error: <message>`` and exits 1 with
    no traceback; in a ``KedroSession`` it is an ordinary exception. Ranks other than 0 stop
    silently (rank 0 says why)."""

    def __init__(self, message: str, findings: Iterable[Finding] = ()) -> None:
        super().__init__(message)
        self.findings = list(findings)
        self.shown = False

    def show(self, file=None) -> None:
        if rank() == 0 and not self.shown:
            super().show(file)
            self.shown = True


# --------------------------------------------------------------------------- helpers


def hub_offline() -> bool:
    """The hub is off limits: HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) is truthy."""
    from vlv_pipeline.models.registry import _hub_offline

    return _hub_offline()


def hub_cache_problem(repo: str, subfolder: str | None = None, weights: bool = True) -> str | None:
    """What the local Hugging Face cache lacks of ``repo`` (its ``subfolder``), or None: one
    of the files a ``save_pretrained`` directory starts with, and with ``weights`` a
    ``*.safetensors``/``*.bin`` file beside or below it (a download of the configs only, e.g.
    ``--include "*.json"``, is not enough to load the model). Reads the disk only."""
    from huggingface_hub import constants, try_to_load_from_cache

    from vlv_pipeline.datasets.model_directory import MARKER_FILES

    prefix = f"{subfolder.strip('/')}/" if subfolder else ""
    for name in (*MARKER_FILES, "preprocessor_config.json"):
        try:
            found = try_to_load_from_cache(repo, prefix + name, cache_dir=constants.HF_HUB_CACHE)
        except Exception:  # noqa: BLE001 - not a valid repo id: not in the cache either
            break
        if isinstance(found, str):
            folder = Path(found).parent
            if not weights or any(
                p.suffix in WEIGHT_SUFFIXES for p in folder.rglob("*") if p.is_file()
            ):
                return None
            return NO_WEIGHTS
    return NOT_CACHED


def shown(path: str | os.PathLike) -> str:
    """``path`` relative to the working directory when it lies under it."""
    path = Path(path)
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except (ValueError, OSError):
        return str(path)


def location(dataset: Any) -> Path | None:
    """The file or folder a dataset reads (None for in-memory ones)."""
    for attr in ("_filepath", "_path"):
        value = getattr(dataset, attr, None)
        if value is not None:
            return Path(str(value))
    try:
        described = dataset._describe()
    except Exception:  # noqa: BLE001 - a dataset that cannot describe itself has no location
        return None
    value = described.get("filepath") or described.get("path")
    return Path(str(value)) if value else None


def under(path: Path, root: Path) -> bool:
    try:
        path.resolve().relative_to(root.resolve())
    except (ValueError, OSError):
        return False
    return True


def run_command(env: str | None, pipeline: str | None = None, extra: str = "") -> str:
    """``kedro run [--env ENV] [--pipeline NAME]``; the default env (local) goes unsaid."""
    words = ["kedro run"]
    if env and env not in ("local", "base"):
        words.append(f"--env {env}")
    if pipeline:
        words.append(f"--pipeline {pipeline}")
    if extra:
        words.append(extra)
    return " ".join(words)


def plain(value: Any) -> Any:
    """Parameters as plain dicts (Kedro may hand over validated pydantic models)."""
    if hasattr(value, "model_dump"):
        return value.model_dump()
    return value


class Producers:
    """Which registered pipelines write a dataset (or the folder a path lies in).

    Composite pipelines (``__default__``, ``vlv``) are left out when a smaller registered
    pipeline writes the same thing. Built lazily: only a run with a gap asks."""

    def __init__(self, registry: Mapping[str, Any], catalog: Any) -> None:
        self._registry = registry
        self._catalog = catalog

    def of(self, dataset: str) -> list[str]:
        """The pipelines writing ``dataset``, or else another dataset at its location (a
        second catalog entry for the same directory, e.g. a lazy one)."""
        found = self._writers(dataset)
        if not found:
            entry = dataset_in(self._catalog, dataset)
            where = None if entry is None else location(entry)
            if where is not None:
                found = self.of_path(where)
        return found

    def _writers(self, dataset: str) -> list[str]:
        writers = {
            name: {n.name for n in pipe.nodes}
            for name, pipe in self._registry.items()
            if dataset in pipe.all_outputs()
        }
        return sorted(
            name
            for name, nodes in writers.items()
            if not any(other != name and set(o) < nodes for other, o in writers.items())
        )

    def of_path(self, path: Path) -> list[str]:
        """The pipelines writing a dataset whose location holds ``path``."""
        found: set[str] = set()
        for pipe in self._registry.values():
            for name in pipe.all_outputs():
                dataset = dataset_in(self._catalog, name)
                where = None if dataset is None else location(dataset)
                if where is not None and under(path, where):
                    found.update(self._writers(name))
        return sorted(found)


def dataset_in(catalog: Any, name: str) -> Any:
    try:
        return catalog.get(name)
    except Exception:  # noqa: BLE001 - a broken entry: the run reports it itself
        return None


def commands(env: str | None, pipelines: list[str]) -> str:
    return " or ".join(f"`{run_command(env, p)}`" for p in pipelines)


def message(findings: list[Finding], command: str, offline: bool) -> str:
    """The one message: the command, each missing piece with what provides it."""
    missing = sum(1 for f in findings if not f.mismatch)
    other = len(findings) - missing
    counts = []
    if missing:
        counts.append(f"{missing} {'piece is' if missing == 1 else 'pieces are'} missing")
    if other:
        counts.append(
            f"{other} {'model was' if other == 1 else 'models were'} made for another setting"
        )
    lines = [f"`{command}` cannot start: {' and '.join(counts)} (nothing was run)."]
    lines += [f"  - {f.line()}" for f in findings]
    if offline and any(f.download for f in findings):
        lines.append(
            "The hub is offline (HF_HUB_OFFLINE=1): download where the network is reachable, "
            "or unset HF_HUB_OFFLINE to let the run download."
        )
    return "\n".join(lines)


def every_rank(findings: list[Finding]) -> list[Finding]:
    """Under ``accelerate launch``: every rank's findings (rank 0's first, then what only
    some ranks lack, e.g. in a node-local cache, naming them), so every rank stops together."""
    if world_size() == 1:
        return findings
    from vlv_pipeline.distributed import each_rank

    where: dict[Finding, list[int]] = {}
    for number, found in enumerate(each_rank(lambda: findings)):
        for finding in found:
            where.setdefault(finding, []).append(number)
    return [
        f
        if 0 in ranks
        else Finding(f"{f.what} ({_ranks(ranks)})", f.problem, f.fix, f.download, f.mismatch)
        for f, ranks in where.items()
    ]


def _ranks(numbers: list[int]) -> str:
    """``rank 3`` or ``ranks 8-15, 24``."""
    spans: list[list[int]] = []
    for n in sorted(numbers):
        if spans and n == spans[-1][1] + 1:
            spans[-1][1] = n
        else:
            spans.append([n, n])
    text = ", ".join(f"{a}-{b}" if b > a else str(a) for a, b in spans)
    return f"rank {text}" if len(numbers) == 1 else f"ranks {text}"
