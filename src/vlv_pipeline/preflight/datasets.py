"""Every free input of the pipeline that some node reads must exist: the fix named is the
registered pipeline that writes it, or, for a read-only image source, where to put the
images."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from vlv_pipeline.preflight.findings import (
    Finding,
    Producers,
    commands,
    dataset_in,
    location,
    plain,
    shown,
)

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


# --------------------------------------------------------------------------- datasets


def written_locations(pipeline: Any, catalog: Any) -> list[Path]:
    """Where the outputs of ``pipeline`` go."""
    return [
        where
        for name in sorted(pipeline.all_outputs())
        if (ds := dataset_in(catalog, name)) is not None and (where := location(ds)) is not None
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

    blocks = {name: plain(value) for name, value in (blocks or {}).items()}
    written = written_locations(pipeline, catalog)
    findings = []
    for name in sorted(pipeline.inputs()):
        if name == "parameters" or name.startswith("params:"):
            continue
        readers = [n for n in pipeline.nodes if name in n.inputs]
        if readers and all(unread(name, n, blocks) for n in readers):
            continue  # every node given it was told by its parameters not to read it
        dataset = dataset_in(catalog, name)
        if dataset is None or isinstance(dataset, MemoryDataset | CredentialsDataset):
            continue  # not in the catalog: Kedro's runner says so itself
        where = location(dataset)
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
        what = f"{name} ({shown(where)})" if where is not None else name
        fix = dataset_fix(name, dataset, producers, env)
        fix += alternative(name, readers, producers, env)
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


def unread(name: str, node: Any, blocks: Mapping[str, Any]) -> bool:
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


def alternative(name: str, readers: list, producers: Producers, env: str | None) -> str:
    """`` (or `--params caption.model=published`, after ...)``: the other models a choosing
    node could read, and what writes them."""
    for block, (key, named, _) in DATASET_CHOICES.items():
        if name not in named.values() or not any(f"params:{block}" in n.inputs for n in readers):
            continue
        others = []
        for choice, other in named.items():
            makers = producers.of(other) if other != name else []
            if makers:
                others.append(f"`--params {block}.{key}={choice}`, after {commands(env, makers)}")
        return f" (or {'; or '.join(others)})" if others else ""
    return ""


def dataset_fix(name: str, dataset: Any, producers: Producers, env: str | None) -> str:
    if type(dataset).__name__ == "ImageSourceDataset" and not getattr(dataset, "_writable", True):
        kind = getattr(dataset, "_kind", "")
        what = {
            "webdataset": "img2dataset / webdataset .tar shards",
            "parquet": "a parquet file of images",
            "folder": "a folder of images",
        }.get(kind, "your images")
        return (
            f"put {what} at {shown(location(dataset) or name)}, or point `{name}` in "
            f"the catalog at them"
        )
    writers = producers.of(name)
    return commands(env, writers) if writers else f"create it, or point `{name}` elsewhere"


def _evaluate_rows(value: Any) -> list[Mapping]:
    """The rows of ``evaluate.captioners`` (Table 1's captioners), as mappings."""
    rows = value.get("captioners") if isinstance(value, Mapping) else None
    if not isinstance(rows, list | tuple):
        return []
    return [plain(r) for r in rows if isinstance(plain(r), Mapping)]
