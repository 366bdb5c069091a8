"""What a model directory was made for: its provenance record, and the checks that read it.

A VLV encoder (stage 1), a trained captioner (stage 2's, and its "without stage 1" baseline)
and the imported published captioner each carry a ``provenance`` dict, written beside their
config as ``provenance.json`` when saved and read back when loaded::

    {"format": 1, "model": "vlv_captioner", "made_by": "stage2",
     "t2i": "src/vlv_pipeline/assets/teacher",          the T2I model as the run named it
     "t2i_fingerprint": "3f0c...", "t2i_parts": {"text_encoder": "...", "unet": "...",
                                                  "vae": "..."},
     "encoder": "small", "resolution": 32, "num_queries": 16, "embedding_width": 64,
     "llm": "a qwen2 built from a config", "llm_fingerprint": "..."}   (captioners only)

**The T2I fingerprint** names an architecture, not a path: a hash of a few architecture keys
of the text encoder's, UNet's and VAE's ``config.json`` (``T2I_KEYS``: sizes, block types,
the VAE's scaling factor), keys left out taken at the library's default. So the same model
has the same fingerprint by hub id (read from the Hugging Face cache), as a local copy, or
saved again by another library version; reading it is three small JSON files, never weights.
It does not tell two models of one architecture apart (SD 2.0 base from 2.1 base, or a
fine-tune): the name is recorded beside it, and a weight hash would cost reading gigabytes in
the preflight. The LLM gets the same treatment (``LLM_KEYS``).

**Comparing.** ``differences(record, wanted)`` lists the fields that disagree with what a run
wants (``wanted_settings``: from its parameters). The T2I (and the LLM) agree when their
fingerprints (the parts both sides know) agree, whatever the names; when no part can be
compared (a hub model not downloaded), the names must agree. A field the run does not fix is
not compared.

**Directories saved before records** have no ``provenance.json``: ``record_of`` then reads
what their own configs say (the encoder's kind, queries, width and image size; the text
encoder's part of the fingerprint; the LLM's), and the rest goes unchecked: such a directory
is refused when what it says disagrees, else accepted with a warning naming what could not
be checked.

``ProvenanceCheck`` is what a loader (``ModelDirectoryDataset``) runs before loading: it
raises ``ProvenanceError`` (a ``UserError``: the command line prints it alone) naming what
differs and what makes the right model. The preflight (``preflight.py``) sets one on every
model directory a run reads, from the run's parameters, and runs the same comparison before
any node. Nothing here imports torch or a model library.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kedro.io.core import DatasetError

from vlv_pipeline.errors import UserError

logger = logging.getLogger(__name__)

__all__ = [
    "RECORD",
    "ProvenanceCheck",
    "ProvenanceError",
    "captioner_record",
    "differences",
    "encoder_record",
    "read_record",
    "record_of",
    "t2i_fingerprint",
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
# fields compared, in the order messages name them; those that stage 1 fixes
FIELDS = ("resolution", "t2i", "encoder", "num_queries", "embedding_width", "llm")
STAGE1_FIELDS = frozenset({"t2i", "encoder", "num_queries", "embedding_width"})
_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")
BUILT = "built from a config"  # an LLM given by `init:` is named "a qwen2 LLM built from a config"


class ProvenanceError(UserError, DatasetError):
    """A model directory made for another setting than the run's (a ``DatasetError`` too, so
    a dataset's ``load`` passes it on as it is)."""


# --------------------------------------------------------------------------- fingerprints


def _digest(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _json_file(path: Path) -> dict | None:
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
        return _json_file(path / name)
    if not _HUB_ID.match(str(ref)):
        return None
    from huggingface_hub import constants, try_to_load_from_cache

    try:
        found = try_to_load_from_cache(str(ref), name, cache_dir=constants.HF_HUB_CACHE)
    except Exception:  # noqa: BLE001 - not a valid repo id: not in the cache either
        return None
    return _json_file(Path(found)) if isinstance(found, str) else None


def _plain(value: Any) -> Any:
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    return value


def part_fingerprint(part: str, config: Mapping) -> str:
    """The hash of one T2I part's architecture keys (``T2I_KEYS``) in ``config``."""
    return _digest({k: _plain(config.get(k, d)) for k, d in T2I_KEYS[part].items()})


def _combined(parts: Mapping[str, str]) -> str | None:
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
    return {"fingerprint": _combined(parts), "parts": parts}


def llm_fingerprint(config: Mapping | None) -> str | None:
    """The hash of an LLM config's architecture keys, or None when one is missing."""
    if not isinstance(config, Mapping) or any(config.get(k) is None for k in LLM_KEYS):
        return None
    return _digest({k: config[k] for k in LLM_KEYS})


def _init_name(config: Mapping | None) -> str:
    model_type = (config or {}).get("model_type")
    kind = f"a {model_type} LLM" if model_type else "an LLM"
    return f"{kind} {BUILT}"


def llm_reference(spec: Any) -> tuple[str | None, str | None]:
    """(name, fingerprint) of the LLM a component spec (``{pretrained: ...}`` or
    ``{init: {...}}``) names, reading its config from disk when it is there."""
    spec = _mapping(spec)
    if spec.get("pretrained"):
        name = str(spec["pretrained"])
        return name, llm_fingerprint(config_of(name, spec.get("subfolder")))
    if spec.get("init") is not None:
        init = _mapping(spec["init"])
        return _init_name(init), llm_fingerprint(init)
    return None, None


def _t2i_reference(t2i: Any) -> tuple[str | None, dict[str, str]]:
    """(name, parts) of a T2I model given by name, or by a text-encoder spec (the published
    captioner's ``{pretrained: <SD repo>, subfolder: text_encoder}`` or ``{init: {...}}``)."""
    if isinstance(t2i, str | os.PathLike) or t2i is None:
        return (str(t2i) if t2i else None), t2i_fingerprint(t2i)["parts"]
    spec = _mapping(t2i)
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
        return None, {"text_encoder": part_fingerprint("text_encoder", _mapping(spec["init"]))}
    return None, {}


def _mapping(value: Any) -> dict:
    if hasattr(value, "model_dump"):
        value = value.model_dump()
    return dict(value) if isinstance(value, Mapping) else {}


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
    name, parts = _t2i_reference(t2i)
    return {"t2i": name, "t2i_fingerprint": _combined(parts), "t2i_parts": parts}


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
        name = _init_name(config)
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
    return _json_file(path / RECORD) if path.is_dir() else None


def record_of(directory: str | os.PathLike, model: str | None = None) -> dict | None:
    """The directory's record, or for a VLV encoder or captioner saved before records, what
    its configs say (``"legacy": True``; ``model`` names it, e.g. from the catalog path).
    None for any other directory (a teacher, a tokenizer): nothing to check."""
    path = Path(directory)
    record = read_record(path)
    if record is not None:
        return record
    config = _json_file(path / "config.json") or {}
    kind = config.get("_class_name")
    if kind in ENCODER_KINDS:
        found = _legacy_encoder(config)
        model = model if model in MODELS else "vlv_encoder"
    elif kind == CAPTIONER_CLASS:
        found = _legacy_encoder(_json_file(path / "encoder/config.json") or {})
        text = _json_file(path / "text_encoder/config.json")
        if text is not None:
            found["t2i_parts"] = {"text_encoder": part_fingerprint("text_encoder", text)}
        llm = _json_file(path / "decoder/llm/config.json")
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
        tree = _mapping(tree).get(key) if tree is not None else None
    return tree


def _encoder_setting(spec: Any, resolution: Any) -> dict:
    spec = _mapping(spec)
    backbone = spec.get("backbone")
    if resolution is None and backbone == "small":
        resolution = _get(spec, "small", "image_size")
    return {"encoder": backbone, "num_queries": spec.get("num_queries"), "resolution": resolution}


def wanted_settings(parameters: Mapping, caption_resolution: Any = "unset") -> dict[str, dict]:
    """What each kind of model (``MODELS``) must have been made for, to serve a run with
    these ``parameters`` (conf's, with ``--params``). ``caption_resolution``: when the
    ``caption`` pipeline reads the captioner, ``caption.resolution`` (None: the captioner's
    own side, not compared)."""
    p = {k: _mapping(v) if hasattr(v, "model_dump") else v for k, v in parameters.items()}
    t2i = next(
        (
            v
            for v in (
                _get(p, "stage1", "t2i"),
                _get(p, "stage2", "t2i"),
                _get(p, "evaluate", "stage1_t2i"),
                _get(p, "cache", "vae", "pretrained"),
            )
            if isinstance(v, str) and v
        ),
        None,
    )
    t2i_parts = t2i_fingerprint(t2i)["parts"]
    run_t2i = {"t2i": t2i, "t2i_parts": t2i_parts, "embedding_width": embedding_width_of(t2i)}
    stage1, stage2 = _mapping(p.get("stage1")), _mapping(p.get("stage2"))
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
    imported = _mapping(p.get("import_published"))
    if imported:
        name, parts = _t2i_reference(imported.get("text_encoder"))
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
        fingerprint = _combined(parts) or ", ".join(f"{p} {parts[p]}" for p in sorted(parts))
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
