"""What a model directory was made for: its provenance record, and what a run wants of it.

A VLV encoder (stage 1), a trained captioner (stage 2's, and its "without stage 1" baseline)
and the imported published captioner each carry a ``provenance`` dict, written beside their
config as ``provenance.json`` when saved and read back when loaded::

    {"format": 1, "model": "vlv_captioner", "made_by": "stage2",
     "t2i": "src/vlv_pipeline/assets/teacher",          the T2I model as the run named it
     "t2i_fingerprint": "3f0c...", "t2i_parts": {"text_encoder": "...", "unet": "...",
                                                  "vae": "..."},
     "encoder": "small", "resolution": 32, "num_queries": 16, "embedding_width": 64,
     "llm": "a qwen2 built from a config", "llm_fingerprint": "..."}   (captioners only)

The T2I and LLM fingerprints (architectures, not paths) are
``models/provenance_fingerprints.py``'s. ``wanted_settings`` is what a run wants of each kind
of model (from its parameters); the comparison and the check a loader runs are
``models/provenance_check.py``'s.

**Directories saved before records** have no ``provenance.json``: ``record_of`` then reads
what their own configs say (the encoder's kind, queries, width and image size; the text
encoder's part of the fingerprint; the LLM's), and the rest goes unchecked: such a directory
is refused when what it says disagrees, else accepted with a warning naming what could not
be checked. Nothing here imports torch or a model library.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from vlv_pipeline.models.provenance_fingerprints import (
    BUILT,
    as_mapping,
    built_llm_name,
    combined_fingerprint,
    embedding_width_of,
    json_file,
    llm_fingerprint,
    llm_reference,
    part_fingerprint,
    t2i_fingerprint,
    t2i_reference,
)

__all__ = [
    "RECORD",
    "captioner_record",
    "encoder_record",
    "read_record",
    "record_of",
    "wanted_settings",
    "write_record",
]

RECORD = "provenance.json"
FORMAT = 1
MODELS = ("vlv_encoder", "vlv_captioner", "baseline_captioner", "published_captioner")
MADE_BY = {
    "vlv_encoder": "stage1",
    "vlv_captioner": "stage2",
    "baseline_captioner": "stage2",
    "published_captioner": "import_published",
}
ENCODER_KINDS = {"SmallVLVEncoder": "small", "Florence2VLVEncoder": "florence2"}
CAPTIONER_CLASS = "VLVCaptioner"


# --------------------------------------------------------------------------- records


def _config(module: Any) -> dict:
    config = getattr(module, "config", None)
    if config is None:
        return {}
    if hasattr(config, "to_dict"):
        return config.to_dict()
    return dict(config)


def _encoder_fields(encoder: Any, resolution: int | None) -> dict:
    config = _config(encoder)
    return {
        "encoder": ENCODER_KINDS.get(type(encoder).__name__, type(encoder).__name__),
        "resolution": resolution or config.get("image_size"),
        "num_queries": config.get("num_queries"),
        "embedding_width": config.get("out_dim"),
    }


def _t2i_fields(t2i: Any) -> dict:
    name, parts = t2i_reference(t2i)
    return {"t2i": name, "t2i_fingerprint": combined_fingerprint(parts), "t2i_parts": parts}


def encoder_record(
    encoder: Any, *, t2i: Any, resolution: int | None, model: str = "vlv_encoder"
) -> dict:
    """What a VLV encoder was trained for: the T2I model (name and fingerprint), its kind,
    input side (``resolution``, else its own ``image_size``), queries and embedding width."""
    return {
        "format": FORMAT,
        "model": model,
        "made_by": MADE_BY.get(model),
        **_t2i_fields(t2i),
        **_encoder_fields(encoder, resolution),
    }


def captioner_record(
    captioner: Any,
    *,
    t2i: Any,
    resolution: int | None,
    llm: Any,
    model: str = "vlv_captioner",
) -> dict:
    """What a VLV captioner was made for: its encoder's setting, at the side it captions
    (``resolution``, else the encoder's own), and its LLM: the name ``llm`` (a component spec)
    gives and the fingerprint of the LLM it holds."""
    name, _ = llm_reference(llm)
    held = getattr(getattr(captioner, "decoder", None), "llm", None)
    config = _config(held) if held is not None else {}
    if name is None or name.endswith(BUILT):
        name = built_llm_name(config)
    return {
        **encoder_record(captioner.encoder, t2i=t2i, resolution=resolution, model=model),
        "llm": name,
        "llm_fingerprint": llm_fingerprint(config),
    }


def write_record(directory: str | os.PathLike, record: Mapping | None) -> None:
    """``provenance.json`` in ``directory`` (nothing when there is no record)."""
    if record:
        Path(directory, RECORD).write_text(json.dumps(dict(record), indent=2) + "\n")


def read_record(directory: str | os.PathLike) -> dict | None:
    """The ``provenance.json`` of ``directory``, or None (a hub id, or no record)."""
    path = Path(directory)
    return json_file(path / RECORD) if path.is_dir() else None


def record_of(directory: str | os.PathLike, model: str | None = None) -> dict | None:
    """The directory's record, or for a VLV encoder or captioner saved before records, what
    its configs say (``"legacy": True``; ``model`` names it, e.g. from the catalog path).
    None for any other directory (a teacher, a tokenizer): nothing to check."""
    path = Path(directory)
    record = read_record(path)
    if record is not None:
        return record
    config = json_file(path / "config.json") or {}
    kind = config.get("_class_name")
    if kind in ENCODER_KINDS:
        found = _legacy_encoder(config)
        model = model if model in MODELS else "vlv_encoder"
    elif kind == CAPTIONER_CLASS:
        found = _legacy_encoder(json_file(path / "encoder/config.json") or {})
        text = json_file(path / "text_encoder/config.json")
        if text is not None:
            found["t2i_parts"] = {"text_encoder": part_fingerprint("text_encoder", text)}
        llm = json_file(path / "decoder/llm/config.json")
        found["llm_fingerprint"] = llm_fingerprint(llm)
        model = model if model in MODELS and model != "vlv_encoder" else "vlv_captioner"
    else:
        return None
    return {"format": 0, "model": model, "made_by": MADE_BY[model], "legacy": True, **found}


def _legacy_encoder(config: Mapping) -> dict:
    """What an encoder's own config.json says of its setting."""
    found: dict[str, Any] = {
        "encoder": ENCODER_KINDS.get(config.get("_class_name")),
        "resolution": config.get("image_size"),
        "num_queries": config.get("num_queries"),
        "embedding_width": config.get("out_dim"),
    }
    vae = config.get("vae_config")  # the small encoder's tower: the T2I model's own VAE
    if isinstance(vae, Mapping):
        found["t2i_parts"] = {"vae": part_fingerprint("vae", vae)}
    return found


# --------------------------------------------------------------------------- the run's setting


def _get(tree: Any, *path: str) -> Any:
    for key in path:
        tree = as_mapping(tree).get(key) if tree is not None else None
    return tree


def _encoder_setting(spec: Any, resolution: Any) -> dict:
    spec = as_mapping(spec)
    backbone = spec.get("backbone")
    if resolution is None and backbone == "small":
        resolution = _get(spec, "small", "image_size")
    return {"encoder": backbone, "num_queries": spec.get("num_queries"), "resolution": resolution}


def wanted_settings(parameters: Mapping, caption_resolution: Any = "unset") -> dict[str, dict]:
    """What each kind of model (``MODELS``) must have been made for, to serve a run with
    these ``parameters`` (conf's, with ``--params``). ``caption_resolution``: when the
    ``caption`` pipeline reads the captioner, ``caption.resolution`` (None: the captioner's
    own side, not compared)."""
    p = {k: as_mapping(v) if hasattr(v, "model_dump") else v for k, v in parameters.items()}
    t2i = next(
        (
            v
            for v in (
                _get(p, "t2i", "model"),  # params:t2i, the one block every stage takes
                _get(p, "cache", "vae", "pretrained"),
            )
            if isinstance(v, str) and v
        ),
        None,
    )
    t2i_parts = t2i_fingerprint(t2i)["parts"]
    run_t2i = {"t2i": t2i, "t2i_parts": t2i_parts, "embedding_width": embedding_width_of(t2i)}
    stage1, stage2 = as_mapping(p.get("stage1")), as_mapping(p.get("stage2"))
    llm, llm_print = llm_reference(stage2.get("llm"))
    captioner_llm = {"llm": llm, "llm_fingerprint": llm_print}
    encoder = _encoder_setting(stage1.get("encoder"), stage1.get("resolution"))
    baseline_spec = _get(stage2, "baseline", "encoder") or stage1.get("encoder")
    side = stage2.get("resolution")
    settings = {
        "vlv_encoder": {**run_t2i, **encoder},
        "vlv_captioner": {
            **run_t2i,
            **_encoder_setting(stage1.get("encoder"), side),
            **captioner_llm,
        },
        "baseline_captioner": {
            **run_t2i,
            **_encoder_setting(baseline_spec, side),
            **captioner_llm,
        },
    }
    imported = as_mapping(p.get("import_published"))
    if imported:
        name, parts = t2i_reference(imported.get("text_encoder"))
        llm, llm_print = llm_reference(imported.get("llm"))
        settings["published_captioner"] = {
            "t2i": name,
            "t2i_parts": parts,
            "encoder": "florence2",
            "resolution": imported.get("crop_size", 384),
            "llm": llm,
            "llm_fingerprint": llm_print,
        }
    if caption_resolution != "unset":
        for model in ("vlv_captioner", "baseline_captioner", "published_captioner"):
            if model in settings:
                settings[model]["resolution"] = caption_resolution
    return settings
