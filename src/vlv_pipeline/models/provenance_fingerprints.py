"""Fingerprints of the models a provenance record names (``models/provenance.py``).

**The T2I fingerprint** names an architecture, not a path: a hash of a few architecture keys
of the text encoder's, UNet's and VAE's ``config.json`` (``T2I_KEYS``: sizes, block types,
the VAE's scaling factor), keys left out taken at the library's default. So the same model
has the same fingerprint by hub id (read from the Hugging Face cache), as a local copy, or
saved again by another library version; reading it is three small JSON files, never weights.
It does not tell two models of one architecture apart (SD 2.0 base from 2.1 base, or a
fine-tune): the name is recorded beside it, and a weight hash would cost reading gigabytes in
the preflight. The LLM gets the same treatment (``LLM_KEYS``).

Also here: the configs those fingerprints read (``config_of``: a local directory, or a hub id
in the local cache), the caption embeddings' width a T2I model reads (``embedding_width_of``)
and the (name, fingerprint) of a T2I model or LLM as a component spec gives it. Nothing here
imports torch or a model library.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = [
    "BUILT",
    "FED_ENCODERS",
    "LLM_KEYS",
    "T2I_KEYS",
    "config_of",
    "embedding_width_of",
    "llm_fingerprint",
    "llm_reference",
    "part_fingerprint",
    "t2i_fingerprint",
    "t2i_reference",
]

# The architecture keys of each T2I part and the library's default for a key a config leaves
# out (CLIPTextConfig, UNet2DConditionModel, AutoencoderKL; tests/models/test_provenance.py
# checks them against the libraries). Library bookkeeping (_name_or_path, versions, dtype)
# and settings that do not change the weights' shapes or meaning are left out.
T2I_KEYS: dict[str, dict[str, Any]] = {
    "text_encoder": {
        "vocab_size": 49408,
        "hidden_size": 512,
        "intermediate_size": 2048,
        "num_hidden_layers": 12,
        "num_attention_heads": 8,
        "max_position_embeddings": 77,
        "hidden_act": "quick_gelu",
    },
    "unet": {
        "in_channels": 4,
        "out_channels": 4,
        "down_block_types": [
            "CrossAttnDownBlock2D",
            "CrossAttnDownBlock2D",
            "CrossAttnDownBlock2D",
            "DownBlock2D",
        ],
        "up_block_types": [
            "UpBlock2D",
            "CrossAttnUpBlock2D",
            "CrossAttnUpBlock2D",
            "CrossAttnUpBlock2D",
        ],
        "block_out_channels": [320, 640, 1280, 1280],
        "layers_per_block": 2,
        "cross_attention_dim": 1280,
        "attention_head_dim": 8,
        "use_linear_projection": False,
        "sample_size": None,
    },
    "vae": {
        "in_channels": 3,
        "out_channels": 3,
        "down_block_types": ["DownEncoderBlock2D"],
        "up_block_types": ["UpDecoderBlock2D"],
        "block_out_channels": [64],
        "layers_per_block": 1,
        "latent_channels": 4,
        "scaling_factor": 0.18215,
    },
}
# a causal LM's architecture (every one must be in its config; there are no common defaults)
LLM_KEYS = ("model_type", "hidden_size", "intermediate_size", "num_hidden_layers")
_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")
BUILT = "built from a config"  # an LLM given by `init:` is named "a qwen2 LLM built from a config"


def _digest(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def json_file(path: Path) -> dict | None:
    """The JSON object in ``path``; None when it is not there, not JSON or not an object."""
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


# The text encoders the VLV queries feed, per teacher family (its pipeline class): what the
# caption embeddings' width is the sum of (models/teachers/families.py reads this table).
FED_ENCODERS: dict[str, tuple[str, ...]] = {
    "StableDiffusionPipeline": ("text_encoder",),
    "StableDiffusionXLPipeline": ("text_encoder", "text_encoder_2"),
    "StableDiffusion3Pipeline": ("text_encoder", "text_encoder_2"),
    "FluxPipeline": ("text_encoder", "text_encoder_2"),
}


def embedding_width_of(t2i: str | os.PathLike | None) -> int | None:
    """The caption embeddings' width a T2I model reads, from the configs on disk: the input
    widths of the text encoders its family feeds (CLIP's ``hidden_size``, T5's ``d_model``);
    None when a config is not there."""
    if not t2i:
        return None
    index = config_of(t2i, filename="model_index.json") or {}
    total = 0
    for name in FED_ENCODERS.get(index.get("_class_name"), ("text_encoder",)):
        config = config_of(t2i, name) or {}
        width = config.get("hidden_size") or config.get("d_model")
        if width is None:
            return None
        total += int(width)
    return total


def config_of(
    ref: str | os.PathLike, subfolder: str | None = None, filename: str = "config.json"
) -> dict | None:
    """``<ref>/<subfolder>/<filename>`` of a local directory, or of a hub id in the local
    Hugging Face cache (on disk only: never the network); None when not there."""
    name = f"{subfolder.strip('/')}/{filename}" if subfolder else filename
    path = Path(ref).expanduser()
    if path.is_dir():
        return json_file(path / name)
    if not _HUB_ID.match(str(ref)):
        return None
    from huggingface_hub import constants, try_to_load_from_cache

    try:
        found = try_to_load_from_cache(str(ref), name, cache_dir=constants.HF_HUB_CACHE)
    except Exception:  # noqa: BLE001 - not a valid repo id: not in the cache either
        return None
    return json_file(Path(found)) if isinstance(found, str) else None


def _plain(value: Any) -> Any:
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    return value


def part_fingerprint(part: str, config: Mapping) -> str:
    """The hash of one T2I part's architecture keys (``T2I_KEYS``) in ``config``."""
    return _digest({k: _plain(config.get(k, d)) for k, d in T2I_KEYS[part].items()})


def combined_fingerprint(parts: Mapping[str, str]) -> str | None:
    """The T2I fingerprint of all three parts' hashes; None unless all three are known."""
    if set(parts) != set(T2I_KEYS):
        return None
    return _digest([parts[p] for p in T2I_KEYS])


def t2i_fingerprint(ref: str | os.PathLike | None) -> dict:
    """``{"fingerprint": <all three parts> or None, "parts": {part: hash}}`` of the T2I
    model ``ref`` names (a Stable Diffusion directory or hub id), from the parts whose
    ``config.json`` is on disk."""
    parts: dict[str, str] = {}
    if ref:
        for part in T2I_KEYS:
            config = config_of(ref, part)
            if config is not None:
                parts[part] = part_fingerprint(part, config)
    return {"fingerprint": combined_fingerprint(parts), "parts": parts}


def llm_fingerprint(config: Mapping | None) -> str | None:
    """The hash of an LLM config's architecture keys, or None when one is missing."""
    if not isinstance(config, Mapping) or any(config.get(k) is None for k in LLM_KEYS):
        return None
    return _digest({k: config[k] for k in LLM_KEYS})


def built_llm_name(config: Mapping | None) -> str:
    """The name of an LLM built from ``config`` (``a qwen2 LLM built from a config``)."""
    model_type = (config or {}).get("model_type")
    kind = f"a {model_type} LLM" if model_type else "an LLM"
    return f"{kind} {BUILT}"


def llm_reference(spec: Any) -> tuple[str | None, str | None]:
    """(name, fingerprint) of the LLM a component spec (``{pretrained: ...}`` or
    ``{init: {...}}``) names, reading its config from disk when it is there."""
    spec = as_mapping(spec)
    if spec.get("pretrained"):
        name = str(spec["pretrained"])
        return name, llm_fingerprint(config_of(name, spec.get("subfolder")))
    if spec.get("init") is not None:
        init = as_mapping(spec["init"])
        return built_llm_name(init), llm_fingerprint(init)
    return None, None


def t2i_reference(t2i: Any) -> tuple[str | None, dict[str, str]]:
    """(name, parts) of a T2I model given by name, or by a text-encoder spec (the published
    captioner's ``{pretrained: <SD repo>, subfolder: text_encoder}`` or ``{init: {...}}``)."""
    if isinstance(t2i, str | os.PathLike) or t2i is None:
        return (str(t2i) if t2i else None), t2i_fingerprint(t2i)["parts"]
    spec = as_mapping(t2i)
    if spec.get("pretrained"):
        name = str(spec["pretrained"])
        parts = t2i_fingerprint(name)["parts"]
        subfolder = spec.get("subfolder")
        if subfolder != "text_encoder":  # the text encoder lies elsewhere (or is the folder)
            config = config_of(name, subfolder)
            parts.pop("text_encoder", None)
            if config is not None:
                parts["text_encoder"] = part_fingerprint("text_encoder", config)
        return name, parts
    if spec.get("init") is not None:
        return None, {"text_encoder": part_fingerprint("text_encoder", as_mapping(spec["init"]))}
    return None, {}


def as_mapping(value: Any) -> dict:
    """``value`` as a plain dict (a pydantic model dumped); {} when it is no mapping."""
    if hasattr(value, "model_dump"):
        value = value.model_dump()
    return dict(value) if isinstance(value, Mapping) else {}
