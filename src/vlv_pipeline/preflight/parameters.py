"""What the run's parameter blocks need: each block's model says (``needs``, records of
``params/needs.py``); here one checker per kind of need looks on this machine.

- a model (``ModelNeed``): an existing local directory passes; a hub id must be in the
  local Hugging Face cache (looked up on disk, never on the network); a local-looking path
  that does not exist is missing, unless this run writes it first;
- an API key (``KeyNeed``): in the credentials entry its node reads (none for a server on
  this machine);
- a file or folder (``FileNeed``), a user's images (``SourceNeed``), the published
  checkpoint (``PublishedCheckpointNeed``);
- the fid_clip judge (``JudgeNeed``): torchmetrics with torch-fidelity installed, and the
  Inception weights in the torch hub cache.
"""

from __future__ import annotations

import importlib.util
import inspect
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import UnionType
from typing import Any

from vlv_pipeline.params import StrictModel
from vlv_pipeline.params.needs import (
    FileNeed,
    JudgeNeed,
    KeyNeed,
    ModelNeed,
    PublishedCheckpointNeed,
    SourceNeed,
)
from vlv_pipeline.preflight.findings import (
    NOT_CACHED,
    Finding,
    Producers,
    commands,
    hub_cache_problem,
    plain,
    run_command,
    shown,
    under,
)

# A parameter naming a model (the name the preflight's tests and callers know it by).
Reference = ModelNeed
# The published captioner's weights, for `import_published.checkpoint`.
PUBLISHED_REPO = "lambertxiao/Vision-Language-Vision-Captioner-Qwen2.5-3B"
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
# what a source of each kind is, in a finding
SOURCE_WHAT = {
    "folder": "a folder of images or one image file",
    "file": "an image file",
    "parquet": "a parquet file of images",
    "webdataset": "webdataset .tar shards",
}
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

Credentials = Mapping[str, Mapping[str, Any]] | Iterable[Mapping[str, Any]] | None


# --------------------------------------------------------------------------- the models


def _model_class(hint: Any) -> type[StrictModel] | None:
    """The parameter model an annotation names (``X`` or ``X | None``), else None."""
    options = typing.get_args(hint) if isinstance(hint, UnionType) else (hint,)
    if typing.get_origin(hint) is typing.Union:
        options = typing.get_args(hint)
    for option in options:
        if isinstance(option, type) and issubclass(option, StrictModel):
            return option
    return None


def parameter_models(pipeline: Any) -> dict[str, type[StrictModel]]:
    """``{block: model class}`` for every ``params:<block>`` a node of ``pipeline`` takes as
    an argument annotated with a parameter model (``Node.inputs`` in the order of its
    function's parameters, or by name)."""
    models: dict[str, type[StrictModel]] = {}
    for node in pipeline.nodes:
        func = node.func
        try:
            hints = typing.get_type_hints(func)
            names = list(inspect.signature(func).parameters)
        except (TypeError, ValueError, NameError):
            continue  # a callable without a readable signature: its blocks go unchecked
        inputs = getattr(node, "_inputs", None)
        pairs = (
            inputs.items() if isinstance(inputs, dict) else zip(names, node.inputs, strict=False)
        )
        for arg, dataset in pairs:
            if isinstance(dataset, str) and dataset.startswith("params:"):
                model = _model_class(hints.get(arg))
                if model is not None:
                    models.setdefault(dataset.removeprefix("params:"), model)
    return models


def build_models(
    blocks: Mapping[str, Any], classes: Mapping[str, type[StrictModel]]
) -> dict[str, StrictModel]:
    """Each block whose class is known, validated (``Model.model_validate``); one that does
    not validate is left out (Kedro reports it, naming the key)."""
    built = {}
    for name, value in blocks.items():
        model = classes.get(name)
        if model is None:
            continue
        if isinstance(value, model):
            built[name] = value
            continue
        try:
            built[name] = model.model_validate(plain(value))
        except Exception:  # noqa: BLE001 - pydantic's error is Kedro's to report
            continue
    return built


# --------------------------------------------------------------------------- the check


def check_parameters(
    models: Mapping[str, StrictModel],
    producers: Producers | None = None,
    env: str | None = None,
    written: list[Path] | None = None,
    credentials: Credentials = None,
) -> list[Finding]:
    """What the run's parameter blocks need (each model's ``needs``) that is not there.

    ``models`` maps a block's name (``stage1``, ``study_points.p.evaluate``) to its
    validated model; ``credentials`` maps the run's credentials datasets
    (``CREDENTIALS_DATASETS``' values) to their values, so each key is looked for in its own
    entry (a plain list: values whose entries are not known, any of which may hold a key);
    None: the run takes none. The models' findings come first (one per value, naming every
    key), then each block's other findings, in its order."""
    needs = {name: model.needs(name) for name, model in models.items()}
    refs = [n for found in needs.values() for n in found if isinstance(n, ModelNeed)]
    findings = check_references(refs, producers, env, written or [])
    for found in needs.values():
        files: dict[str, list[FileNeed]] = {}  # one finding per path, naming each key
        for need in found:
            if isinstance(need, FileNeed):
                files.setdefault(str(need.path), []).append(need)
        for need in found:
            if isinstance(need, FileNeed):
                group = files.pop(str(need.path), None)  # said where its first key is
                findings += _check_files(group) if group else []
            elif isinstance(need, KeyNeed):
                findings += _check_key(need, credentials)
            elif isinstance(need, SourceNeed):
                findings += _check_source(need, env)
            elif isinstance(need, PublishedCheckpointNeed):
                findings += _check_published_checkpoint(need, env)
            elif isinstance(need, JudgeNeed):
                findings += _check_judge(need)
    return findings


def check_references(
    refs: Iterable[ModelNeed], producers: Producers | None, env: str | None, written: list[Path]
) -> list[Finding]:
    """Local directories must exist; hub ids must be in the local Hugging Face cache
    (``download=True`` findings: a download provides them). One finding per value, naming
    every key that gives it."""
    from vlv_pipeline.params.components import looks_local

    findings: list[Finding] = []
    local: dict[str, list[str]] = {}
    hub: dict[str, list[ModelNeed]] = {}
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
            if not any(under(path, w) for w in written):  # else this run writes it first
                local.setdefault(ref.ref, []).append(ref.key)
        else:
            hub.setdefault(ref.ref, []).append(ref)
    for value, keys in local.items():
        path = Path(value).expanduser()
        makers = producers.of_path(path) if producers is not None else []
        fix = (
            commands(env, makers)
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


def _keys(keys: list[str]) -> str:
    return ", ".join(dict.fromkeys(keys))


# --------------------------------------------------------------------------- credentials


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


def _check_key(need: KeyNeed, credentials: Credentials) -> list[Finding]:
    """A finding when none of the entries the node reads holds an api_key for a server that
    is not on this machine (none when the run takes none of those entries)."""
    if _loopback(need.base_url):
        return []
    given = {_key_given(credentials, entry, row) for entry, row in need.entries}
    if True in given or given == {None}:
        return []
    return [Finding(need.what, "no api_key in the credentials", need.fix)]


# --------------------------------------------------------------------------- files


def _check_files(group: list[FileNeed]) -> list[Finding]:
    """One file or folder, named by every key in ``group`` (the first's kind and fix)."""
    first = group[0]
    there = Path.is_dir if first.kind == "dir" else Path.is_file
    if first.path and there(Path(str(first.path)).expanduser()):
        return []
    keys = _keys([n.key for n in group])
    return [Finding(f"{keys} = {first.path}", first.problem, first.fix)]


def _check_source(need: SourceNeed, env: str | None) -> list[Finding]:
    """A pipeline's images (``caption``, ``reconstruct``): ``source`` set and there (a
    folder, or for kind folder also one image file: ``source_kinds.open_user_source``)."""
    block, source, kind = need.block, need.source, need.kind or "folder"
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


def _check_published_checkpoint(need: PublishedCheckpointNeed, env: str | None) -> list[Finding]:
    """``import_published`` reads the published captioner's weights from a local file."""
    checkpoint = need.checkpoint
    if checkpoint and Path(str(checkpoint)).expanduser().exists():
        return []
    block = need.key.split(".")[0]
    fix = (
        f"`hf download {PUBLISHED_REPO} --local-dir data/01_raw/published`, then "
        f"`{run_command(env, block, f'--params {need.key}=FILE')}` with its weights file"
    )
    if not checkpoint:
        return [Finding(need.key, "not set", fix)]
    return [Finding(f"{need.key} = {checkpoint}", "no such file", fix)]


def _check_judge(need: JudgeNeed) -> list[Finding]:
    """judge fid_clip: torchmetrics + torch-fidelity installed, Inception weights cached."""
    what = f"{need.block}.judge = fid_clip"
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
            f"{shown(weights)} not in the torch hub cache",
            '`python -c "from torchmetrics.image.fid import FrechetInceptionDistance as F; F()"`',
            download=True,
        )
    ]
