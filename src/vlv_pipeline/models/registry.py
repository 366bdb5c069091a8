"""One way to get any model component from parameters.

Every component in ``conf/`` is described by a ``params.components.ComponentSpec``, either

* ``pretrained: <hub id or local save_pretrained dir>`` (optionally ``subfolder`` and
  ``dtype``), loaded with the library's ``from_pretrained``; or
* ``init: {...config...}``, built at random from a config (optionally cast to ``dtype``).

``load_component(kind, spec)`` maps a *kind* to its library class:

============================ =================================================================
kind                         class
============================ =================================================================
vae                          ``diffusers.AutoencoderKL``
unet                         ``diffusers.UNet2DConditionModel``
scheduler                    the diffusers scheduler named by ``_class_name`` (DDPM default)
text_encoder                 ``transformers.CLIPTextModel``
text_encoder_with_projection ``transformers.CLIPTextModelWithProjection`` (SDXL's second)
tokenizer                    ``transformers.AutoTokenizer`` (pretrained only)
causal_lm                    ``transformers.AutoModelForCausalLM`` (init needs ``model_type``)
florence2                    ``transformers.Florence2ForConditionalGeneration``
t5_encoder                   ``transformers.T5EncoderModel`` (SD 3's third, FLUX's second)
sd3_transformer              ``diffusers.SD3Transformer2DModel``
flux_transformer             ``diffusers.FluxTransformer2DModel``
pipeline_index               ``model_index.json`` of a diffusers directory (pretrained only)
============================ =================================================================

Example (parameters YAML)::

    teacher_vae: {pretrained: data/06_models/teacher, subfolder: vae}
    llm: {init: {model_type: qwen2, vocab_size: 64, hidden_size: 32, ...}, dtype: bfloat16}
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from vlv_pipeline.errors import InputNotADirectoryError, MissingInputError, ParameterError
from vlv_pipeline.params.components import ComponentSpec, looks_local

__all__ = ["DTYPES", "KINDS", "load_component", "load_processor", "torch_dtype"]

DTYPES = {  # what the dtype names conf may give (params.components.DTYPE_NAMES) mean
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}
# Config kwargs accepted by every transformers config although not dataclass fields.
_TRANSFORMERS_EXTRA_KEYS = {
    "model_type",
    "num_labels",
    "attn_implementation",
    "torch_dtype",
    "rope_theta",
    "rope_scaling",
}


# --------------------------------------------------------------------------- helpers


def _hub_offline() -> bool:
    """True when HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE is set now or was at import."""
    from huggingface_hub import constants

    env = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return env.upper() in {"1", "ON", "YES", "TRUE"} or bool(constants.HF_HUB_OFFLINE)


def torch_dtype(spec: ComponentSpec) -> torch.dtype | None:
    """The ``torch.dtype`` a spec's ``dtype`` names (None when unset)."""
    return DTYPES[spec.dtype] if spec.dtype else None


def _pretrained(kind: str, spec: ComponentSpec, load: Callable[..., Any], **kwargs: Any) -> Any:
    """Call ``load(ref, subfolder=..., **kwargs)`` with clear errors for missing sources and,
    in a local directory, for damaged safetensors files (``DamagedWeightsError`` naming
    them)."""
    ref = spec.pretrained
    assert ref is not None
    path = Path(ref).expanduser()
    hub = not path.exists()
    if hub and looks_local(ref):
        raise MissingInputError(
            f"{kind}: pretrained path '{ref}' does not exist (resolved: {path.resolve()}). "
            f"Point 'pretrained' to a save_pretrained directory, or run the pipeline that "
            f"creates it."
        )
    if not hub:
        ref = str(path)
        if not path.is_dir():
            raise InputNotADirectoryError(
                f"{kind}: pretrained path '{ref}' is a file; expected a save_pretrained directory"
            )
        if spec.subfolder and not (path / spec.subfolder).is_dir():
            raise MissingInputError(
                f"{kind}: subfolder '{spec.subfolder}' not found in '{ref}' "
                f"(it contains: {sorted(p.name for p in path.iterdir())})"
            )
    if spec.subfolder:
        kwargs["subfolder"] = spec.subfolder
    offline = hub and _hub_offline()
    if offline:
        kwargs["local_files_only"] = True
    try:
        if hub:
            return load(ref, **kwargs)
        from vlv_pipeline.models.tensor_files import naming_damaged

        # a truncated or foreign safetensors file is refused by name (the libraries say
        # "Error while deserializing header" or name no cause)
        folder = path / spec.subfolder if spec.subfolder else path
        with naming_damaged(folder, what_to_do=_damaged_hint(kind, folder)):
            return load(ref, **kwargs)
    except OSError as exc:
        if not offline:
            raise
        where = f"'{ref}'" + (f" (subfolder '{spec.subfolder}')" if spec.subfolder else "")
        raise MissingInputError(
            f"{kind}: {where} is not in the local Hugging Face cache and the hub is offline "
            f"(HF_HUB_OFFLINE=1). Download it where the network is reachable "
            f"(`hf download {ref}`) or point 'pretrained' to a local directory."
        ) from exc


def _damaged_hint(kind: str, folder: Path) -> str:
    return (
        f"{kind}: the pretrained directory {folder} is damaged: download it again, or make it "
        "again with the pipeline that wrote it (or restore it from a copy)"
    )


def _check_unused(kind: str, unused: dict[str, Any]) -> None:
    unused = {k: v for k, v in unused.items() if not k.startswith("_")}
    if unused:
        raise ParameterError(f"{kind}: unknown init config key(s) {sorted(unused)}")


def _check_config_keys(kind: str, config_cls: type, init: dict[str, Any]) -> None:
    """Reject typos in a transformers config dict (they would silently be ignored)."""
    if not dataclasses.is_dataclass(config_cls):
        return
    known = {f.name for f in dataclasses.fields(config_cls)} | _TRANSFORMERS_EXTRA_KEYS
    unknown = sorted(set(init) - known)
    if unknown:
        raise ParameterError(
            f"{kind}: unknown init config key(s) {unknown} for {config_cls.__name__}; "
            f"valid keys include {sorted(known - _TRANSFORMERS_EXTRA_KEYS)[:12]}..."
        )


def _cast(model: Any, spec: ComponentSpec) -> Any:
    return model.to(torch_dtype(spec)) if torch_dtype(spec) is not None else model


def _no_dtype(kind: str, spec: ComponentSpec) -> None:
    if spec.dtype is not None:
        raise ParameterError(f"{kind}: 'dtype' does not apply to a {kind}; remove it")


# --------------------------------------------------------------------------- loaders


def _diffusers_model(class_name: str) -> Callable[[str, ComponentSpec], Any]:
    def load(kind: str, spec: ComponentSpec) -> Any:
        import diffusers

        cls = getattr(diffusers, class_name)
        if spec.init is not None:
            model, unused = cls.from_config(spec.init, return_unused_kwargs=True)
            _check_unused(kind, unused)
            return _cast(model, spec)
        # diffusers 0.42 reads `torch_dtype` (transformers 5 reads `dtype`)
        kwargs = {"torch_dtype": torch_dtype(spec)} if torch_dtype(spec) is not None else {}
        return _pretrained(kind, spec, cls.from_pretrained, **kwargs)

    return load


def _scheduler_class(name: str) -> type:
    import diffusers

    cls = getattr(diffusers, name, None)
    if not (isinstance(cls, type) and issubclass(cls, diffusers.SchedulerMixin)):
        valid = ["DDPMScheduler", "DDIMScheduler", "EulerDiscreteScheduler", "PNDMScheduler"]
        raise ParameterError(
            f"scheduler: unknown scheduler class '{name}'; use a diffusers scheduler class "
            f"name such as {valid}"
        )
    return cls


def _scheduler(kind: str, spec: ComponentSpec) -> Any:
    _no_dtype(kind, spec)
    if spec.init is not None:
        config = dict(spec.init)
        cls = _scheduler_class(config.pop("_class_name", "DDPMScheduler"))
        scheduler, unused = cls.from_config(config, return_unused_kwargs=True)
        _check_unused(kind, unused)
        return scheduler
    from diffusers import DDPMScheduler

    config = _pretrained(kind, spec, DDPMScheduler.load_config)
    return _scheduler_class(config.get("_class_name", "DDPMScheduler")).from_config(config)


def _transformers_model(
    model_attr: str, config_of: Callable[[dict[str, Any]], type]
) -> Callable[[str, ComponentSpec], Any]:
    def load(kind: str, spec: ComponentSpec) -> Any:
        import transformers

        model_cls = getattr(transformers, model_attr)
        if spec.init is not None:
            config_cls = config_of(spec.init)
            init = {k: v for k, v in spec.init.items() if k != "model_type"}
            _check_config_keys(kind, config_cls, init)
            config = config_cls(**init)
            if hasattr(model_cls, "from_config"):  # Auto classes
                return _cast(model_cls.from_config(config), spec)
            return _cast(model_cls(config), spec)
        dtype = torch_dtype(spec) if torch_dtype(spec) is not None else torch.float32
        return _pretrained(kind, spec, model_cls.from_pretrained, dtype=dtype)

    return load


def _fixed_config(name: str) -> Callable[[dict[str, Any]], type]:
    def config_of(init: dict[str, Any]) -> type:
        import transformers

        return getattr(transformers, name)

    return config_of


def _auto_config(init: dict[str, Any]) -> type:
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    model_type = init.get("model_type")
    if model_type is None:
        raise ParameterError("causal_lm: 'init' needs a 'model_type' (e.g. qwen2)")
    if model_type not in CONFIG_MAPPING:
        raise ParameterError(f"causal_lm: unknown model_type '{model_type}' (e.g. qwen2, llama)")
    return CONFIG_MAPPING[model_type]


def _tokenizer(kind: str, spec: ComponentSpec) -> Any:
    _no_dtype(kind, spec)
    if spec.init is not None:
        raise ParameterError(
            "tokenizer: 'init' is not supported for tokenizers; give 'pretrained' "
            "(a hub id or a tokenizer directory saved with save_pretrained)"
        )
    from transformers import AutoTokenizer

    return _pretrained(kind, spec, AutoTokenizer.from_pretrained)


def _pipeline_index(kind: str, spec: ComponentSpec) -> dict[str, Any]:
    _no_dtype(kind, spec)
    if spec.init is not None:
        raise ParameterError(f"{kind}: only 'pretrained' (a diffusers directory or hub id)")
    from diffusers import DiffusionPipeline

    return dict(_pretrained(kind, spec, DiffusionPipeline.load_config))


KINDS: dict[str, Callable[[str, ComponentSpec], Any]] = {
    "vae": _diffusers_model("AutoencoderKL"),
    "unet": _diffusers_model("UNet2DConditionModel"),
    "scheduler": _scheduler,
    "text_encoder": _transformers_model("CLIPTextModel", _fixed_config("CLIPTextConfig")),
    "text_encoder_with_projection": _transformers_model(
        "CLIPTextModelWithProjection", _fixed_config("CLIPTextConfig")
    ),
    "t5_encoder": _transformers_model("T5EncoderModel", _fixed_config("T5Config")),
    "sd3_transformer": _diffusers_model("SD3Transformer2DModel"),
    "flux_transformer": _diffusers_model("FluxTransformer2DModel"),
    "pipeline_index": _pipeline_index,
    "tokenizer": _tokenizer,
    "causal_lm": _transformers_model("AutoModelForCausalLM", _auto_config),
    "florence2": _transformers_model(
        "Florence2ForConditionalGeneration", _fixed_config("Florence2Config")
    ),
}


def _as_spec(spec: ComponentSpec | dict[str, Any]) -> ComponentSpec:
    return spec if isinstance(spec, ComponentSpec) else ComponentSpec.model_validate(spec)


def load_component(kind: str, spec: ComponentSpec | dict[str, Any]) -> Any:
    """Load (``pretrained``) or build (``init``) the component ``kind`` described by ``spec``.

    Raises:
        ValueError: unknown ``kind``, invalid spec, or unknown init config keys.
        FileNotFoundError: a local ``pretrained`` path (or its subfolder) does not exist.
        OSError: a hub id is not cached while the hub is offline.
        DamagedWeightsError: a safetensors file of a local directory does not read (named).
    """
    if kind not in KINDS:
        raise ValueError(f"unknown component kind '{kind}'; valid kinds: {sorted(KINDS)}")
    return KINDS[kind](kind, _as_spec(spec))


def load_processor(spec: ComponentSpec | dict[str, Any]) -> Any:
    """``transformers.AutoProcessor`` for a ``pretrained`` directory or hub id (e.g. Florence-2)."""
    spec = _as_spec(spec)
    _no_dtype("processor", spec)
    if spec.init is not None:
        raise ParameterError("processor: only 'pretrained' is supported")
    from transformers import AutoProcessor

    return _pretrained("processor", spec, AutoProcessor.from_pretrained)
