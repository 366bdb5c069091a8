"""What each model directory the run reads was made for (``models/provenance.py``): one made
for another setting than the run's parameters is named with what differs and the command
that makes the right one; the loaders get the same checks."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from vlv_pipeline.preflight.datasets import alternative, dataset_fix, unread, written_locations
from vlv_pipeline.preflight.findings import (
    Finding,
    Producers,
    commands,
    dataset_in,
    location,
    plain,
    shown,
    under,
)

# The pipelines that read a user's images from their block's ``source`` (and ``kind``).
SOURCE_BLOCKS = ("caption", "reconstruct")


# --------------------------------------------------------------------------- provenance


def _run_parameters(catalog: Any, blocks: Mapping[str, Any]) -> dict[str, Any]:
    """The run's parameters (conf's with ``--params``), the blocks its nodes read on top."""
    everything = dataset_in(catalog, "parameters")
    try:
        parameters = dict(everything.load()) if everything is not None else {}
    except Exception:  # noqa: BLE001 - no parameters dataset: the blocks alone
        parameters = {}
    parameters.update({name: plain(value) for name, value in blocks.items()})
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

    blocks = {name: plain(value) for name, value in (blocks or {}).items()}
    names = sorted({i for n in pipeline.nodes for i in n.inputs if not i.startswith("params:")})
    models = {
        name: dataset
        for name in names
        if isinstance(dataset := dataset_in(catalog, name), ModelDirectoryDataset)
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
        side = plain(parameters.get(block) or {}).get("resolution") if captions else "unset"
        key = side if captions else None
        if key not in settings:
            settings[key] = wanted_settings(parameters, side)
        where = location(dataset)
        kind = where.name if where is not None and where.name in MODELS else None
        checks[name] = (
            dataset,
            ProvenanceCheck(
                shown(where) if where is not None else name,
                name=name,
                settings=settings[key],
                model=kind,
                verb="captions" if captions else "reads it",
                fix_chain=_chain_fix(name, dataset, producers, env, registry),
                fix_own=dataset_fix(name, dataset, producers, env),
                alternative=alternative(name, readers, producers, env),
            ),
        )
    return checks


def where_kind(dataset: Any) -> str | None:
    """The kind of model (``provenance.MODELS``) a model dataset's folder name says."""
    from vlv_pipeline.models.provenance import MODELS

    where = location(dataset)
    return where.name if where is not None and where.name in MODELS else None


def _chain_fix(
    name: str, dataset: Any, producers: Producers, env: str | None, registry: Any
) -> str:
    """The composite pipeline ``vlv`` (stage 1 on, on this environment's data) when it
    writes ``dataset``'s folder; else the pipelines that write it."""
    chain = (registry or {}).get("vlv") if registry is not None else None
    where = location(dataset)
    if chain is not None and where is not None:
        for output in chain.all_outputs():
            written = dataset_in(producers._catalog, output)
            folder = None if written is None else location(written)
            if folder is not None and under(where, folder):
                return commands(env, ["vlv"])
    return dataset_fix(name, dataset, producers, env)


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
    blocks = {name: plain(value) for name, value in (blocks or {}).items()}
    written = written_locations(pipeline, catalog)
    findings = []
    free = pipeline.inputs()
    if checks is None:
        checks = provenance_checks(pipeline, catalog, producers, env, blocks, producers._registry)
    for name, (dataset, check) in checks.items():
        readers = [n for n in pipeline.nodes if name in n.inputs]
        if name not in free or (readers and all(unread(name, n, blocks) for n in readers)):
            continue
        where = location(dataset)
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
        dataset = dataset_in(catalog, name)
        if dataset is not None:
            blocks[name.removeprefix("params:")] = dataset.load()
    producers = Producers(registry, catalog)
    checks = provenance_checks(pipeline, catalog, producers, env, blocks, registry)
    for dataset, check in checks.values():
        dataset.check_provenance_with(check)
    return checks
