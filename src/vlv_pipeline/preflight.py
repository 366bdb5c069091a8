"""Before any node runs: is every component the chosen pipelines need there?

``PreflightHook`` (settings.py's ``HOOKS``) looks, in ``before_pipeline_run``, at what the run
will need and cannot make itself:

- **datasets**: every free input of the pipeline (a trained model, the image manifest, the
  latent cache, your images...) must exist; a versioned one needs a saved version. The fix
  named is the registered pipeline that writes it (``kedro run --pipeline stage2``), or, for
  a read-only image source, where to put the images.
- **models by parameter**: every ``pretrained:`` of a component and every model key
  (``t2i``, ``stage1_t2i``, ``render_t2i``, ``tokenizer``, ``probe``) of the ``params:``
  blocks the nodes take. An existing local directory passes; a hub id (``owner/name``) must
  be in the local Hugging Face cache (looked up on disk, never on the network); a local-looking
  path that does not exist is missing.
- **credentials**: each key in its own entry of ``conf/local/credentials.yml``: the
  ``openai`` caption backend needs ``captioner.api_key``, Table 2's VLM judge
  (``rating.judge: vlm``) ``judge.api_key``, Table 3's answering LLM (``vqa.source: files``)
  ``answerer.api_key``; a server on this machine (127.0.0.1, localhost) needs none.
- **Table 3's files** (``vqa.source: files``): every dataset's questions and annotations, and
  for shots > 0 the training questions, annotations and COCO captions.
- **the fid_clip judge**: torchmetrics with torch-fidelity, its Inception weights in the torch
  hub cache, and the CLIP model.
- **caption.source** for the ``caption`` pipeline, **reconstruct.source** for ``reconstruct``.
- **evaluate's set and rows**: the COCO files (``evaluate.source: coco``), and what Table 1's
  rows (``evaluate.captioners``) need: the published captioner (``import_published``), an
  api key for an ``openai`` row, a caption file, a local model; an ``optional`` row is not
  checked (the node leaves it out, with a warning, when it cannot be made).
- **what each model was made for**: every model directory the run reads that exists (a VLV
  encoder or captioner) says, in its ``provenance.json`` (``models/provenance.py``; read as
  JSON, never its weights), the T2I model, encoder, image size, queries, embedding width
  and LLM it was made for; one made for another setting than the run's parameters is named
  with what differs and the command that makes the right one. A directory saved before these
  records is judged by what its own configs say. The hook also gives each of those datasets
  the same check for when it loads (``ModelDirectoryDataset.check_provenance_with``), even
  with the preflight switched off.

Offline (``HF_HUB_OFFLINE=1``) every gap stops the run; online, what a download provides is
logged ("will download: ...") and the run goes on, while the rest (trained models, data,
credentials, packages, models made for another setting) still stops it. The stop is one
:class:`MissingComponentsError`, listing each missing piece with what provides it; the
``kedro`` command line prints it as one message, without a traceback. Under ``accelerate
launch`` every rank checks, the ranks agree, every rank stops, and only rank 0 prints.

``VLV_SKIP_PREFLIGHT=1`` turns the check off (not the T2I agreement, nor the loaders'
provenance checks). Nothing here downloads, imports a model, or reads more than a few file
names and small JSON files (records and configs); a run whose components are local
directories that exist (the shapes world) is checked in milliseconds.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
from kedro.framework.hooks import hook_impl

from vlv_pipeline.distributed import rank, world_size
from vlv_pipeline.errors import UserError

logger = logging.getLogger(__name__)

__all__ = [
    "Finding",
    "MissingComponentsError",
    "PreflightHook",
    "Producers",
    "Reference",
    "T2IMismatchError",
    "check",
    "check_t2i",
    "check_datasets",
    "check_parameters",
    "check_provenance",
    "check_references",
    "references",
    "t2i_disagreement",
    "unread_params",
]

# Parameter keys whose string value names a model (a hub id or a local directory), besides
# `pretrained` of a component spec. A key in WHEN counts only if its sibling says so.
MODEL_KEYS = frozenset({"t2i", "stage1_t2i", "render_t2i", "tokenizer", "probe"})
WHEN = {"probe": ("judge", "probe")}
# A block with one of these keys uses only the sub-block it names (encoder.backbone: small
# leaves encoder.florence2 unused; captioner.backend: openai leaves captioner.transformers).
CHOICE_KEYS = ("backbone", "backend")
# A node that takes params:<block> reads the one model dataset <block>.<key> names, and none
# of the others (lazy datasets): {block: (key, {value: dataset}, default value)}.
DATASET_CHOICES = {
    "caption": (
        "model",
        {"trained": "caption_trained_captioner", "published": "caption_published_captioner"},
        "trained",
    ),
    # reconstruct re-renders the captions of the captioner it chooses as caption does
    "reconstruct": (
        "model",
        {"trained": "caption_trained_captioner", "published": "caption_published_captioner"},
        "trained",
    ),
}
# Model datasets a node taking params:<block> reads only when they are there (the node goes
# on without them, with a warning): reconstruct's captioner, unless its encoder is the
# captioner's (reconstruct.encoder: captioner).
OPTIONAL_DATASETS = {
    "reconstruct": frozenset({"caption_trained_captioner", "caption_published_captioner"}),
}
# The published captioner's weights, for `import_published.checkpoint`.
PUBLISHED_REPO = "lambertxiao/Vision-Language-Vision-Captioner-Qwen2.5-3B"
WEIGHT_SUFFIXES = (".safetensors", ".bin")
NOT_CACHED = "not a local directory and not in the Hugging Face cache"
NO_WEIGHTS = "in the Hugging Face cache without its weights (configs only)"
# Blocks that read only the configs and tokenizers of the models they name (import_published:
# the weights are the published checkpoint's).
CONFIG_ONLY_BLOCKS = ("import_published",)
# torch-fidelity's Inception weights, as torch.hub stores them (<hub dir>/checkpoints/).
INCEPTION_WEIGHTS = "weights-inception-2015-12-05-6726825d.pth"
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")
# Each credentials entry a run may need (conf/local/credentials.yml) and the catalog entry
# that hands it to its node (conf/base/catalog_*.yml: `credentials: <entry>`).
CREDENTIALS_DATASETS = {
    "captioner": "captioner_credentials",
    "eval_captioners": "eval_captioner_credentials",
    "judge": "rating_credentials",
    "answerer": "vqa_credentials",
}
# Where a user downloads Table 3's files (vqa.datasets[].name -> page).
VQA_DOWNLOADS = {
    "vqav2": "https://visualqa.org/download.html",
    "okvqa": "https://okvqa.allenai.org/download.html",
}


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


@dataclass(frozen=True)
class Reference:
    """A parameter naming a model: ``key`` (dotted), its value, the spec's subfolder, and
    whether the run loads its weights (not for a tokenizer, nor a config-only block)."""

    key: str
    ref: str
    subfolder: str | None = None
    weights: bool = True


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


def _shown(path: str | os.PathLike) -> str:
    """``path`` relative to the working directory when it lies under it."""
    path = Path(path)
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except (ValueError, OSError):
        return str(path)


def _location(dataset: Any) -> Path | None:
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


def _under(path: Path, root: Path) -> bool:
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


def _plain(value: Any) -> Any:
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
            entry = _dataset(self._catalog, dataset)
            where = None if entry is None else _location(entry)
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
                dataset = _dataset(self._catalog, name)
                where = None if dataset is None else _location(dataset)
                if where is not None and _under(path, where):
                    found.update(self._writers(name))
        return sorted(found)


def _dataset(catalog: Any, name: str) -> Any:
    try:
        return catalog.get(name)
    except Exception:  # noqa: BLE001 - a broken entry: the run reports it itself
        return None


def _commands(env: str | None, pipelines: list[str]) -> str:
    return " or ".join(f"`{run_command(env, p)}`" for p in pipelines)


# --------------------------------------------------------------------------- datasets


def written_locations(pipeline: Any, catalog: Any) -> list[Path]:
    """Where the outputs of ``pipeline`` go."""
    return [
        where
        for name in sorted(pipeline.all_outputs())
        if (ds := _dataset(catalog, name)) is not None and (where := _location(ds)) is not None
    ]


def check_datasets(
    pipeline: Any,
    catalog: Any,
    producers: Producers,
    env: str | None,
    blocks: Mapping[str, Any] | None = None,
) -> list[Finding]:
    """Every free input of ``pipeline`` that is a persisted dataset, and that some node
    reads (``DATASET_CHOICES``, with the parameter ``blocks``), must exist."""
    from kedro.io import MemoryDataset

    from vlv_pipeline.datasets.credentials import CredentialsDataset

    blocks = {name: _plain(value) for name, value in (blocks or {}).items()}
    written = written_locations(pipeline, catalog)
    findings = []
    for name in sorted(pipeline.inputs()):
        if name == "parameters" or name.startswith("params:"):
            continue
        readers = [n for n in pipeline.nodes if name in n.inputs]
        if readers and all(_unread(name, n, blocks) for n in readers):
            continue  # every node given it was told by its parameters not to read it
        dataset = _dataset(catalog, name)
        if dataset is None or isinstance(dataset, MemoryDataset | CredentialsDataset):
            continue  # not in the catalog: Kedro's runner says so itself
        where = _location(dataset)
        if where is not None and any(where == w for w in written):
            continue  # the previous state of an output (an incremental cache): may be empty
        if readers and all(_optional(name, n, blocks) for n in readers):
            continue  # read only if it is there
        try:
            if dataset.exists():
                continue
            problem = "no saved version" if getattr(dataset, "_version", None) else "not found"
        except Exception as error:  # noqa: BLE001 - a dataset that cannot tell: say why
            problem = f"cannot be read ({type(error).__name__}: {error})"
        what = f"{name} ({_shown(where)})" if where is not None else name
        fix = _dataset_fix(name, dataset, producers, env)
        fix += _alternative(name, readers, producers, env)
        findings.append(Finding(what, problem, fix))
    return findings


def _choice(block: str, blocks: Mapping[str, Any]) -> str:
    """The value of ``DATASET_CHOICES[block]``'s key in the parameters (its default)."""
    key, _, default = DATASET_CHOICES[block]
    value = blocks.get(block)
    choice = value.get(key) if isinstance(value, Mapping) else None
    return choice if isinstance(choice, str) else default


def _optional(name: str, node: Any, blocks: Mapping[str, Any]) -> bool:
    """``node`` reads ``name`` only if it is there (``OPTIONAL_DATASETS``)."""
    for block, names in OPTIONAL_DATASETS.items():
        if f"params:{block}" in node.inputs and name in names:
            value = blocks.get(block)
            encoder = value.get("encoder") if isinstance(value, Mapping) else None
            return not (block == "reconstruct" and encoder == "captioner")
    return False


def _unread(name: str, node: Any, blocks: Mapping[str, Any]) -> bool:
    """``node`` takes ``name`` but its parameters say it will not read it."""
    if name == "embedding_cache" and "params:stage2" in node.inputs:
        # stage2.trainable with `encoder` trains on pixels: the embedding cache is bypassed
        stage2 = blocks.get("stage2")
        from vlv_pipeline.params.stage2 import trainable_parts

        trainable = stage2.get("trainable") if isinstance(stage2, Mapping) else None
        return isinstance(trainable, str) and "encoder" in trainable_parts(trainable)
    if name == "reconstruct_encoder" and "params:reconstruct" in node.inputs:
        # reconstruct.encoder: captioner renders from the chosen captioner's encoder
        value = blocks.get("reconstruct")
        return isinstance(value, Mapping) and value.get("encoder") == "captioner"
    if name == "eval_published_captioner" and "params:evaluate" in node.inputs:
        # read only for a `published` row of evaluate.captioners (an optional one may fail)
        rows = _evaluate_rows(blocks.get("evaluate"))
        return not any(r.get("kind") == "published" and not r.get("optional") for r in rows)
    for block, (_, named, _) in DATASET_CHOICES.items():
        if f"params:{block}" in node.inputs and name in named.values():
            return named.get(_choice(block, blocks)) != name
    return False


def _alternative(name: str, readers: list, producers: Producers, env: str | None) -> str:
    """`` (or `--params caption.model=published`, after ...)``: the other models a choosing
    node could read, and what writes them."""
    for block, (key, named, _) in DATASET_CHOICES.items():
        if name not in named.values() or not any(f"params:{block}" in n.inputs for n in readers):
            continue
        others = []
        for choice, other in named.items():
            makers = producers.of(other) if other != name else []
            if makers:
                others.append(f"`--params {block}.{key}={choice}`, after {_commands(env, makers)}")
        return f" (or {'; or '.join(others)})" if others else ""
    return ""


def _dataset_fix(name: str, dataset: Any, producers: Producers, env: str | None) -> str:
    if type(dataset).__name__ == "ImageSourceDataset" and not getattr(dataset, "_writable", True):
        kind = getattr(dataset, "_kind", "")
        what = {
            "webdataset": "img2dataset / webdataset .tar shards",
            "parquet": "a parquet file of images",
            "folder": "a folder of images",
        }.get(kind, "your images")
        return (
            f"put {what} at {_shown(_location(dataset) or name)}, or point `{name}` in "
            f"the catalog at them"
        )
    writers = producers.of(name)
    return _commands(env, writers) if writers else f"create it, or point `{name}` elsewhere"


# --------------------------------------------------------------------------- parameters


def references(key: str, value: Any) -> Iterator[Reference]:
    """The models a parameter block names, with their dotted keys (see ``MODEL_KEYS``)."""
    if not isinstance(value, Mapping):
        return
    chosen = next((value[k] for k in CHOICE_KEYS if isinstance(value.get(k), str)), None)
    for name, item in value.items():
        path = f"{key}.{name}"
        if isinstance(item, Mapping):
            if chosen is None or name == chosen:
                yield from references(path, item)
            continue
        if not isinstance(item, str) or not (name == "pretrained" or name in MODEL_KEYS):
            continue
        condition = WHEN.get(name)
        if condition and condition[0] in value and value[condition[0]] != condition[1]:
            continue
        subfolder = value.get("subfolder") if name == "pretrained" else None
        weights = "tokenizer" not in path and path.split(".")[0] not in CONFIG_ONLY_BLOCKS
        yield Reference(path, item, subfolder if isinstance(subfolder, str) else None, weights)


# Blocks whose fid_clip judge is checked by their node, not here: reconstruct computes FID
# only for a folder of reconstruct.fid_min_images images or more (and no CLIP score); its
# screening node checks the judge once it has counted them, before any model is loaded.
JUDGED_LATER = ("reconstruct",)


def judge_references(block: str, value: Any) -> list[Reference]:
    """The CLIP model of the ``fid_clip`` judge (its default when the block names none)."""
    if not isinstance(value, Mapping) or value.get("judge") != "fid_clip":
        return []
    if block in JUDGED_LATER:
        return []
    clip = value.get("clip_model")
    if clip is None:
        from vlv_pipeline.params.evaluate import EvaluateParams

        clip = EvaluateParams.model_fields["clip_model"].default
    return [Reference(f"{block}.clip_model", str(clip))]


def check_references(
    refs: Iterable[Reference], producers: Producers | None, env: str | None, written: list[Path]
) -> list[Finding]:
    """Local directories must exist; hub ids must be in the local Hugging Face cache
    (``download=True`` findings: a download provides them). One finding per value, naming
    every key that gives it."""
    from vlv_pipeline.params.components import looks_local

    findings: list[Finding] = []
    local: dict[str, list[str]] = {}
    hub: dict[str, list[Reference]] = {}
    for ref in refs:
        path = Path(ref.ref).expanduser()
        if path.exists():
            if ref.subfolder and not (path / ref.subfolder).is_dir():
                findings.append(
                    Finding(
                        f"{ref.key} = {ref.ref}",
                        f"has no subfolder '{ref.subfolder}'",
                        f"point `{ref.key}` at a save_pretrained directory that has it",
                    )
                )
        elif looks_local(ref.ref):
            if not any(_under(path, w) for w in written):  # else this run writes it first
                local.setdefault(ref.ref, []).append(ref.key)
        else:
            hub.setdefault(ref.ref, []).append(ref)
    for value, keys in local.items():
        path = Path(value).expanduser()
        makers = producers.of_path(path) if producers is not None else []
        fix = (
            _commands(env, makers)
            if makers
            else f"create it, or point `{keys[0]}` at a local directory or a hub id"
        )
        findings.append(Finding(f"{_keys(keys)} = {value}", "no such directory", fix))
    for repo, named in hub.items():
        needs = dict.fromkeys((r.subfolder, r.weights) for r in named)
        problems = [p for sub, w in needs if (p := hub_cache_problem(repo, sub, w))]
        if problems:
            findings.append(
                Finding(
                    f"{_keys([r.key for r in named])} = {repo}",
                    NOT_CACHED if NOT_CACHED in problems else problems[0],
                    f"`hf download {repo}`"
                    + (f" ({HUB_TEACHERS[repo]})" if repo in HUB_TEACHERS else ""),
                    download=True,
                )
            )
    return findings


# What a teacher of another family needs beyond the download, said where it is missing
# (conf/paper/globals.yml lists the same lines).
HUB_TEACHERS = {
    "stabilityai/stable-diffusion-xl-base-1.0": (
        "SDXL (not gated; a 2.6B UNet and two CLIPs, 1024 px: set the resolutions to 1024)"
    ),
    "stabilityai/stable-diffusion-3.5-medium": (
        "gated: accept its licence on the hub and `hf auth login` first; a 2.5B MMDiT and "
        "T5-XXL (4.7B), which only renders captions here; 1024 px"
    ),
    "black-forest-labs/FLUX.1-dev": (
        "gated: accept its licence on the hub and `hf auth login` first; stage 1 "
        "back-propagates through T5-XXL (4.7B) and the 12B transformer: bf16 on several "
        "80 GB GPUs; 1024 px"
    ),
}


def _keys(keys: list[str]) -> str:
    return ", ".join(dict.fromkeys(keys))


def check_parameters(
    blocks: Mapping[str, Any],
    producers: Producers | None = None,
    env: str | None = None,
    written: list[Path] | None = None,
    credentials: Credentials = None,
) -> list[Finding]:
    """What the ``params:`` blocks a run uses name: models, credentials, the judge, sources.

    ``blocks`` maps a block's name (``stage1``) to its value; ``credentials`` maps the run's
    credentials datasets (``CREDENTIALS_DATASETS``' values) to their values, so each key is
    looked for in its own entry (a plain list: values whose entries are not known, any of
    which may hold a key); None: the run takes none."""
    blocks = {name: _plain(value) for name, value in blocks.items()}
    refs: list[Reference] = []
    for name, value in blocks.items():
        refs.extend(references(name, value))
        refs.extend(judge_references(name, value))
        refs.extend(evaluate_row_references(name, value))
    findings = check_references(refs, producers, env, written or [])
    for name, value in blocks.items():
        findings += _check_captioner_key(name, value, credentials)
        findings += _check_evaluate_inputs(name, value, credentials)
        findings += _check_rating_judge(name, value, credentials)
        findings += _check_vqa_inputs(name, value, credentials)
        findings += _check_judge(name, value)
        findings += _check_caption_source(name, value, env)
        findings += _check_published_checkpoint(name, value, env)
    return findings


Credentials = Mapping[str, Mapping[str, Any]] | Iterable[Mapping[str, Any]] | None


def _loopback(url: str) -> bool:
    """``url`` is a server on this machine: it needs no key."""
    from urllib.parse import urlparse

    return (urlparse(url).hostname or "") in LOOPBACK_HOSTS


def _key_given(credentials: Credentials, entry: str, row: str | None = None) -> bool | None:
    """Whether the credentials hold the key a node reads from ``entry``
    (``<entry>.api_key``; with ``row``, ``<entry>.<row>.api_key``); None when the run takes
    no such entry. A plain list (entries unknown) answers whether any value holds a key."""
    if credentials is None:
        return None
    if isinstance(credentials, Mapping):
        dataset = CREDENTIALS_DATASETS[entry]
        if dataset not in credentials:
            return None
        values = [credentials[dataset]]
    else:
        values = list(credentials)
    for value in values:
        value = value or {}
        if row is not None and not isinstance(credentials, Mapping) and value.get("api_key"):
            return True  # a list's values may be the shared entry (captioner:)
        if row is not None:
            value = value.get(row) or {}
        if isinstance(value, Mapping) and value.get("api_key"):
            return True
    return False


def _no_key(what: str, fix: str) -> Finding:
    return Finding(what, "no api_key in the credentials", fix)


def _key_needed(
    credentials: Credentials, entry: str, base_url: str, what: str, fix: str
) -> list[Finding]:
    """A finding when ``entry`` of the credentials has no api_key for a server that is not on
    this machine (none when the run's credentials cannot tell)."""
    if _loopback(base_url) or _key_given(credentials, entry) in (None, True):
        return []
    return [_no_key(what, fix)]


def _check_captioner_key(block: str, value: Any, credentials: Credentials) -> list[Finding]:
    """The ``openai`` backend needs ``captioner.api_key`` (a local, loopback server may not)."""
    captioner = value.get("captioner") if isinstance(value, Mapping) else None
    if credentials is None or not isinstance(captioner, Mapping):
        return []
    if captioner.get("backend") != "openai":
        return []
    base_url = str((captioner.get("openai") or {}).get("base_url") or "")
    return _key_needed(
        credentials,
        "captioner",
        base_url,
        f"{block}.captioner.backend = openai ({base_url})",
        "add `captioner: {api_key: ...}` to conf/local/credentials.yml",
    )


def _evaluate_rows(value: Any) -> list[Mapping]:
    """The rows of ``evaluate.captioners`` (Table 1's captioners), as mappings."""
    rows = value.get("captioners") if isinstance(value, Mapping) else None
    if not isinstance(rows, list | tuple):
        return []
    return [_plain(r) for r in rows if isinstance(_plain(r), Mapping)]


def evaluate_row_references(block: str, value: Any) -> list[Reference]:
    """The local models of evaluate's ``transformers`` rows (optional rows left out: the
    node leaves them out, with a warning, when they cannot be made)."""
    if block != "evaluate":
        return []
    return [
        Reference(f"{block}.captioners[{i}].transformers.pretrained", str(model))
        for i, row in enumerate(_evaluate_rows(value))
        if row.get("kind") == "transformers"
        and not row.get("optional")
        and isinstance(model := (row.get("transformers") or {}).get("pretrained"), str)
    ]


def _check_evaluate_inputs(block: str, value: Any, credentials: Credentials) -> list[Finding]:
    """What the evaluation set and Table 1's rows need that no pipeline makes: the COCO files
    (``source: coco``), a caption file for a ``file`` row, an API key for an ``openai`` row
    (a loopback server may go without). The published captioner is a dataset (``_unread``)."""
    if block.rsplit(".", 1)[-1] != "evaluate" or not isinstance(value, Mapping):
        return []
    from vlv_pipeline.benchmarks.coco import DOWNLOAD_HINT

    findings = []
    coco = value.get("coco") or {}
    if value.get("source") == "coco":
        for key, there in (("annotations", Path.is_file), ("images", Path.is_dir)):
            path = coco.get(key)
            if not path or not there(Path(str(path)).expanduser()):
                findings.append(Finding(f"{block}.coco.{key} = {path}", "not there", DOWNLOAD_HINT))
    if block != "evaluate":
        return findings  # a study's slice reads the set, never the rows
    for i, row in enumerate(_evaluate_rows(value)):
        where = f"{block}.captioners[{i}]"
        if row.get("optional"):
            continue
        if row.get("kind") == "file" and not Path(str(row.get("path"))).expanduser().is_file():
            findings.append(
                Finding(
                    f"{where}.path = {row.get('path')}",
                    "no such file",
                    "write it with `kedro run --pipeline caption --params caption.source=<the "
                    "evaluation images>` (user_captions.json), or point it at your "
                    "{file: caption} JSON",
                )
            )
        if row.get("kind") == "openai" and credentials is not None:
            base_url = str((row.get("openai") or {}).get("base_url") or "")
            name = str(row.get("name"))
            # the node's order: eval_captioners.<name>.api_key, else captioner.api_key
            given = {_key_given(credentials, "eval_captioners", name)}
            given.add(_key_given(credentials, "captioner"))
            if _loopback(base_url) or True in given or given == {None}:
                continue
            findings.append(
                _no_key(
                    f"{where} (openai {name}, {base_url})",
                    f"add `eval_captioners: {{{name}: {{api_key: ...}}}}` (or `captioner: "
                    "{api_key: ...}`) to conf/local/credentials.yml, or mark the row "
                    "`optional: true`",
                )
            )
    return findings


def _check_rating_judge(block: str, value: Any, credentials: Credentials) -> list[Finding]:
    """Table 2's VLM judge (``rating.judge: vlm``) needs ``judge.api_key``, unless its
    server is on this machine."""
    if block != "rating" or not isinstance(value, Mapping) or value.get("judge") != "vlm":
        return []
    base_url = str((value.get("vlm") or {}).get("base_url") or "")
    return _key_needed(
        credentials,
        "judge",
        base_url,
        f"rating.judge = vlm ({base_url})",
        "add `judge: {api_key: ...}` to conf/local/credentials.yml (or run without the VLM "
        "judge: `--params rating.judge=none`)",
    )


def _check_vqa_inputs(block: str, value: Any, credentials: Credentials) -> list[Finding]:
    """Table 3 from the official files (``vqa.source: files``): every dataset's questions and
    annotations there, and, for shots > 0, its training questions, annotations and COCO
    captions (the examples); the answering LLM's ``answerer.api_key``, unless its server is
    on this machine."""
    if block != "vqa" or not isinstance(value, Mapping) or value.get("source") != "files":
        return []
    from vlv_pipeline.benchmarks.vqa import TRAIN_CAPTIONS_HINT

    keys = ["questions", "annotations"]
    if max(value.get("shots") or [0]) > 0:
        keys += ["train_questions", "train_annotations", "train_captions"]
    missing: dict[str, tuple[list[str], str]] = {}  # one finding per file, naming each key
    for i, dataset in enumerate(value.get("datasets") or []):
        dataset = _plain(dataset)
        if not isinstance(dataset, Mapping):
            continue
        name = str(dataset.get("name"))
        page = VQA_DOWNLOADS.get(name, "the dataset's site")
        for key in keys:
            path = dataset.get(key)
            if path and Path(str(path)).expanduser().is_file():
                continue
            fix = (
                TRAIN_CAPTIONS_HINT
                if key == "train_captions"
                else f"download it ({page}; docs/PAPER.md: Reproduce the paper's tables) or correct "
                f"the path in conf (vqa.datasets[{i}].{key})"
            )
            missing.setdefault(str(path), ([], fix))[0].append(f"vqa.datasets[{i}].{key}")
    findings = [
        Finding(f"{_keys(named)} = {path}", "not there", fix)
        for path, (named, fix) in missing.items()
    ]
    base_url = str((value.get("answerer") or {}).get("base_url") or "")
    if base_url and not _loopback(base_url) and _key_given(credentials, "answerer") is False:
        findings.append(
            _no_key(
                f"vqa.answerer ({base_url})",
                "add `answerer: {api_key: ...}` to conf/local/credentials.yml",
            )
        )
    return findings


def _check_judge(block: str, value: Any) -> list[Finding]:
    """judge fid_clip: torchmetrics + torch-fidelity installed, Inception weights cached."""
    if not isinstance(value, Mapping) or value.get("judge") != "fid_clip":
        return []
    if block in JUDGED_LATER:
        return []
    what = f"{block}.judge = fid_clip"
    absent = [m for m in ("torchmetrics", "torch_fidelity") if importlib.util.find_spec(m) is None]
    if absent:
        return [
            Finding(
                what,
                f"{' and '.join(absent)} not installed",
                "`pip install 'torchmetrics[image]' torch-fidelity`",
            )
        ]
    import torch.hub

    weights = Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_WEIGHTS
    if weights.is_file():
        return []
    return [
        Finding(
            f"{what} (Inception weights)",
            f"{_shown(weights)} not in the torch hub cache",
            '`python -c "from torchmetrics.image.fid import FrechetInceptionDistance as F; F()"`',
            download=True,
        )
    ]


# The pipelines that read a user's images from their block's ``source`` (and ``kind``).
SOURCE_BLOCKS = ("caption", "reconstruct")
# what a source of each kind is, in a finding
SOURCE_WHAT = {
    "folder": "a folder of images or one image file",
    "file": "an image file",
    "parquet": "a parquet file of images",
    "webdataset": "webdataset .tar shards",
}


def _check_caption_source(block: str, value: Any, env: str | None) -> list[Finding]:
    """The ``caption`` and ``reconstruct`` pipelines' images: ``source`` set and there (a
    folder, or for kind folder also one image file: ``source_kinds.open_user_source``)."""
    if block not in SOURCE_BLOCKS or not isinstance(value, Mapping) or "source" not in value:
        return []
    source, kind = value.get("source"), value.get("kind") or "folder"
    fix = f"`{run_command(env, block, f'--params {block}.source=PATH')}`"
    what = SOURCE_WHAT.get(kind, f"a {kind} of images")
    if not source:
        return [Finding(f"{block}.source", "not set", fix + f" ({what})")]
    try:
        from vlv_pipeline.imaging.source_kinds import open_user_source

        there = open_user_source(kind, str(source)).exists()
    except Exception:  # noqa: BLE001 - a bad kind/path: the node says exactly what
        there = Path(str(source)).exists()
    if there:
        return []
    missing = "no image file there" if kind == "file" else f"no {kind} of images there"
    return [Finding(f"{block}.source = {source}", missing, fix)]


def _check_published_checkpoint(block: str, value: Any, env: str | None) -> list[Finding]:
    """``import_published`` reads the published captioner's weights from a local file."""
    if block != "import_published" or not isinstance(value, Mapping) or "checkpoint" not in value:
        return []
    checkpoint = value.get("checkpoint")
    if checkpoint and Path(str(checkpoint)).expanduser().exists():
        return []
    fix = (
        f"`hf download {PUBLISHED_REPO} --local-dir data/01_raw/published`, then "
        f"`{run_command(env, 'import_published', '--params import_published.checkpoint=FILE')}`"
        " with its weights file"
    )
    if not checkpoint:
        return [Finding("import_published.checkpoint", "not set", fix)]
    return [Finding(f"import_published.checkpoint = {checkpoint}", "no such file", fix)]


# --------------------------------------------------------------------------- provenance


def _run_parameters(catalog: Any, blocks: Mapping[str, Any]) -> dict[str, Any]:
    """The run's parameters (conf's with ``--params``), the blocks its nodes read on top."""
    everything = _dataset(catalog, "parameters")
    try:
        parameters = dict(everything.load()) if everything is not None else {}
    except Exception:  # noqa: BLE001 - no parameters dataset: the blocks alone
        parameters = {}
    parameters.update({name: _plain(value) for name, value in blocks.items()})
    return parameters


def provenance_checks(
    pipeline: Any,
    catalog: Any,
    producers: Producers,
    env: str | None,
    blocks: Mapping[str, Any] | None = None,
    registry: Mapping[str, Any] | None = None,
) -> dict[str, tuple[Any, Any]]:
    """``{dataset name: (dataset, ProvenanceCheck)}`` for every model directory a node of
    ``pipeline`` reads: what the run's parameters want of it, and what to run if it differs."""
    from vlv_pipeline.datasets.model_directory import ModelDirectoryDataset
    from vlv_pipeline.models.provenance import MODELS, wanted_settings
    from vlv_pipeline.models.provenance_check import ProvenanceCheck

    blocks = {name: _plain(value) for name, value in (blocks or {}).items()}
    names = sorted({i for n in pipeline.nodes for i in n.inputs if not i.startswith("params:")})
    models = {
        name: dataset
        for name in names
        if isinstance(dataset := _dataset(catalog, name), ModelDirectoryDataset)
    }
    if not models:
        return {}
    parameters = _run_parameters(catalog, blocks)
    settings: dict[str | None, dict] = {}
    checks = {}
    for name, dataset in models.items():
        readers = [n for n in pipeline.nodes if name in n.inputs]
        # the block of the pipeline that captions with it (caption, reconstruct): its side
        block = next(
            (b for b in SOURCE_BLOCKS if any(f"params:{b}" in n.inputs for n in readers)), None
        )
        captions = block is not None and where_kind(dataset) != "vlv_encoder"
        side = _plain(parameters.get(block) or {}).get("resolution") if captions else "unset"
        key = side if captions else None
        if key not in settings:
            settings[key] = wanted_settings(parameters, side)
        where = _location(dataset)
        kind = where.name if where is not None and where.name in MODELS else None
        checks[name] = (
            dataset,
            ProvenanceCheck(
                _shown(where) if where is not None else name,
                name=name,
                settings=settings[key],
                model=kind,
                verb="captions" if captions else "reads it",
                fix_chain=_chain_fix(name, dataset, producers, env, registry),
                fix_own=_dataset_fix(name, dataset, producers, env),
                alternative=_alternative(name, readers, producers, env),
            ),
        )
    return checks


def where_kind(dataset: Any) -> str | None:
    """The kind of model (``provenance.MODELS``) a model dataset's folder name says."""
    from vlv_pipeline.models.provenance import MODELS

    where = _location(dataset)
    return where.name if where is not None and where.name in MODELS else None


def _chain_fix(
    name: str, dataset: Any, producers: Producers, env: str | None, registry: Any
) -> str:
    """The composite pipeline ``vlv`` (stage 1 on, on this environment's data) when it
    writes ``dataset``'s folder; else the pipelines that write it."""
    chain = (registry or {}).get("vlv") if registry is not None else None
    where = _location(dataset)
    if chain is not None and where is not None:
        for output in chain.all_outputs():
            written = _dataset(producers._catalog, output)
            location = None if written is None else _location(written)
            if location is not None and _under(where, location):
                return _commands(env, ["vlv"])
    return _dataset_fix(name, dataset, producers, env)


def check_provenance(
    pipeline: Any,
    catalog: Any,
    producers: Producers,
    env: str | None,
    blocks: Mapping[str, Any] | None = None,
    checks: Mapping[str, tuple[Any, Any]] | None = None,
) -> list[Finding]:
    """The model directories ``pipeline`` reads and does not write, that exist, and were made
    for another setting than the run's parameters (their records, JSON only). ``checks``:
    ``provenance_checks``' answer when the caller has it (the hook built them for the
    loaders), else built here."""
    blocks = {name: _plain(value) for name, value in (blocks or {}).items()}
    written = written_locations(pipeline, catalog)
    findings = []
    free = pipeline.inputs()
    if checks is None:
        checks = provenance_checks(pipeline, catalog, producers, env, blocks, producers._registry)
    for name, (dataset, check) in checks.items():
        readers = [n for n in pipeline.nodes if name in n.inputs]
        if name not in free or (readers and all(_unread(name, n, blocks) for n in readers)):
            continue
        where = _location(dataset)
        if where is not None and any(where == w for w in written):
            continue
        try:
            if not dataset.exists():
                continue  # check_datasets says it is missing
            directory = Path(dataset._get_load_path())
        except Exception:  # noqa: BLE001 - check_datasets reports what cannot be read
            continue
        found = check.problem(directory, warn=False)  # the loader warns, once
        if found is not None:
            problem, fix, _ = found
            findings.append(Finding(check.what(directory), problem, fix, mismatch=True))
    return findings


def attach_provenance_checks(
    pipeline: Any, catalog: Any, registry: Any, env: str | None
) -> dict[str, tuple[Any, Any]]:
    """Give every model directory ``pipeline`` reads the check its loader runs before it
    loads (what the run's parameters want of it): a version written later in the run, or a
    run with the preflight off, is checked too. Returns them (``provenance_checks``), for the
    preflight to run the same checks without building them again."""
    blocks = {}
    for name in sorted(i for i in pipeline.inputs() if i.startswith("params:")):
        dataset = _dataset(catalog, name)
        if dataset is not None:
            blocks[name.removeprefix("params:")] = dataset.load()
    producers = Producers(registry, catalog)
    checks = provenance_checks(pipeline, catalog, producers, env, blocks, registry)
    for dataset, check in checks.values():
        dataset.check_provenance_with(check)
    return checks


# --------------------------------------------------------------------------- the check


def check(
    pipeline: Any,
    catalog: Any,
    registry: Mapping[str, Any],
    env: str | None,
    provenance: Mapping[str, tuple[Any, Any]] | None = None,
) -> list[Finding]:
    """Every finding for running ``pipeline`` with ``catalog`` (nothing found: []).
    ``provenance``: the model directories' checks (``attach_provenance_checks``), when built."""
    from vlv_pipeline.datasets.credentials import CredentialsDataset

    producers = Producers(registry, catalog)
    inputs = pipeline.inputs()
    blocks = {}
    for name in sorted(i for i in inputs if i.startswith("params:")):
        dataset = _dataset(catalog, name)
        if dataset is not None:
            blocks[name.removeprefix("params:")] = dataset.load()
    findings = check_datasets(pipeline, catalog, producers, env, blocks)
    credentials = {  # by catalog entry: each key is looked for where its node reads it
        name: ds.load()
        for name in sorted(inputs)
        if isinstance(ds := _dataset(catalog, name), CredentialsDataset)
    }
    written = written_locations(pipeline, catalog)
    findings += check_parameters(blocks, producers, env, written, credentials or None)
    findings += check_provenance(pipeline, catalog, producers, env, blocks, provenance)
    return findings


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


def _every_rank(findings: list[Finding]) -> list[Finding]:
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


# Every key that names the frozen T2I model the caption embeddings live in: (block, path).
# conf names it once (globals.yml `t2i`); a run whose blocks disagree is stopped before any
# work. evaluate.render_t2i may be another model (the paper renders captions with SD 3.5).
T2I_KEYS = (
    ("cache", ("vae", "pretrained")),
    ("stage1", ("t2i",)),
    ("stage2", ("t2i",)),
    ("evaluate", ("stage1_t2i",)),
    ("reconstruct", ("t2i",)),
)


class T2IMismatchError(click.ClickException, UserError, RuntimeError):
    """The run's stages name different T2I models (one message naming every key)."""


def _field(value: Any, path: tuple[str, ...]) -> Any:
    for key in path:
        value = value.get(key) if isinstance(value, Mapping) else getattr(value, key, None)
    return value


def _same_model(ref: str) -> str:
    """A local directory by its real path (``a/b`` and ``./a/b`` agree); a hub id as it is."""
    return os.path.realpath(ref) if os.path.isdir(ref) else ref


def _run_of(name: str, names: Iterable[str]) -> str:
    """Which run a parameter block belongs to: a study point that trains its own stage 1
    (``study_points.<point>.stage1`` among ``names``) is a run of its own; every other block
    (conf's, the study's ``shared``, a point that reads the default run's encoder) is
    conf's run ("")."""
    parts = name.split(".")
    if len(parts) > 2 and parts[0] == "study_points":
        if f"study_points.{parts[1]}.stage1" in names:
            return parts[1]
    return ""


def t2i_disagreement(blocks: Mapping[str, Any]) -> str | None:
    """The message when the parameter blocks (``{"stage1": ..., "study_points.p.stage2":
    ...}``) of one run name more than one T2I model in ``T2I_KEYS``; None when each run's
    agree. A study point that trains its own stage 1 is a run of its own: it may distil
    another teacher (study 6), as long as its own stages read the same one."""
    runs: dict[str, dict[str, str]] = {}
    for name, block in blocks.items():
        section = name.rsplit(".", 1)[-1]
        for wanted, path in T2I_KEYS:
            value = _field(block, path) if section == wanted else None
            if isinstance(value, str):
                runs.setdefault(_run_of(name, blocks), {})[".".join((name, *path))] = value
    named = {
        key: value
        for run in runs.values()
        if len({_same_model(v) for v in run.values()}) > 1
        for key, value in run.items()
    }
    if not named:
        return None
    lines = [f"  {key}: {value}" for key, value in sorted(named.items())]
    return "\n".join(
        [
            "the run's stages name different T2I models (nothing was run):",
            *lines,
            "Stage 1 distils one frozen T2I model and every later stage must read the same: "
            "name it once, as `t2i` in conf/<env>/globals.yml (or --params t2i=<model>), "
            "and drop the per-stage keys that override it.",
        ]
    )


def check_t2i(pipeline: Any, catalog: Any) -> None:
    """Raise ``T2IMismatchError`` when conf's blocks, or the blocks the pipeline reads (a
    study point's), disagree: `kedro run --pipeline evaluate` checks stage 1's key too."""
    everything = _dataset(catalog, "parameters")
    conf = everything.load() if everything is not None else {}
    blocks = {name: conf[name] for name, _ in T2I_KEYS if name in conf}
    for name in sorted(i for i in pipeline.inputs() if i.startswith("params:")):
        dataset = _dataset(catalog, name)
        if dataset is not None:
            blocks[name.removeprefix("params:")] = dataset.load()
    problem = t2i_disagreement(blocks)
    if problem:
        raise T2IMismatchError(problem)


def unread_params(
    runtime_params: Mapping[str, Any], inputs: Iterable[str], resolver_keys: Iterable[str]
) -> list[str]:
    """The top-level ``--params`` keys no node of the run reads: not ``params:<key>`` (or
    below it), not ``parameters``, not a key conf reads through ``${runtime_params:...}``.
    A study point's blocks derive from every section, so a run that reads one reads all."""
    inputs = set(inputs)
    if "parameters" in inputs or any(i.startswith("params:study_points.") for i in inputs):
        return []
    read = {i.removeprefix("params:").split(".")[0] for i in inputs if i.startswith("params:")}
    return [k for k in runtime_params if k not in read and k not in set(resolver_keys)]


def _warn_unread(run_params: Mapping[str, Any], pipeline: Any, loader: Any) -> None:
    runtime = run_params.get("runtime_params") or {}
    if not runtime or rank() != 0:
        return
    keys = loader.conf_keys()[1] if hasattr(loader, "conf_keys") else set()
    for key in unread_params(runtime, pipeline.inputs(), keys):
        names = run_params.get("pipeline_names") or ["__default__"]
        logger.warning(
            "--params %s has no effect on this run: no node of %s reads params:%s",
            key,
            ", ".join(names),
            key,
        )


class PreflightHook:
    """Checks, before any node runs, every component the run needs (module docstring)."""

    def __init__(self, registry: Mapping[str, Any] | None = None) -> None:
        self._registry = registry
        self._loader = None

    @hook_impl
    def after_context_created(self, context) -> None:
        from vlv_pipeline.masking import install_log_masking

        install_log_masking()  # on whatever handlers logging has now
        self._loader = context.config_loader

    @hook_impl(tryfirst=True)  # before plugins' hooks start anything (an MLflow run)
    def before_pipeline_run(self, run_params: dict[str, Any], pipeline, catalog) -> None:
        check_t2i(pipeline, catalog)  # parameters only: always, even with the check off
        _warn_unread(run_params, pipeline, self._loader)
        registry = self._registry
        if registry is None:
            from kedro.framework.project import pipelines

            registry = pipelines
        env = run_params.get("env")
        # the loaders refuse a model made for another setting, even with the check off; the
        # check below runs the same ones (built once: each reads the T2I's configs)
        provenance = attach_provenance_checks(pipeline, catalog, registry, env)
        if os.environ.get("VLV_SKIP_PREFLIGHT", "").lower() in {"1", "true", "yes", "on"}:
            return
        names = run_params.get("pipeline_names") or []
        command = run_command(env, ",".join(names) if names else None)
        if len(names) > 1:
            command = command.replace("--pipeline ", "--pipelines ")
        findings = _every_rank(check(pipeline, catalog, registry, env, provenance))
        offline = hub_offline()
        stopping = [f for f in findings if offline or not f.download]
        if rank() == 0:
            for finding in findings:
                if finding not in stopping:
                    logger.info("will download: %s (%s)", finding.what, finding.fix.strip("`"))
        if stopping:
            error = MissingComponentsError(message(stopping, command, offline), stopping)
            if world_size() > 1:
                # rank 0 says it before any rank exits: a launcher stops the others at the
                # first exit, maybe before rank 0 could print
                error.show()
                from vlv_pipeline.distributed import barrier

                barrier()
            raise error
