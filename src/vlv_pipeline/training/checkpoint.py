"""What a ``checkpoint-N`` folder holds: only what trains, plus what resuming needs.

An objective (``training/loop.py``) carries its frozen parts (a T2I UNet, a text encoder,
an LLM that only feeds gradients through): they never change, so a checkpoint does not
store them. It stores

- each trained model the objective names in ``trained_models()`` (``{folder: module}``), in
  ``save_pretrained`` form where the module has it (a VLV encoder's ``checkpoint-N/
  vlv_encoder/`` loads with ``VLVEncoder.from_pretrained``, as diffusers' training examples
  save ``checkpoint-N/unet``); a LoRA-wrapped LLM saves its adapter only; a module without
  ``save_pretrained`` (psi) becomes ``<folder>.safetensors``;
- for an objective that names none, its trainable parameters and its buffers in
  ``trainable.safetensors``;
- the EMA weights (when on) in ``ema.safetensors``: one tensor per trainable parameter,
  by name, and the EMA's counters as JSON metadata;
- and, written by Accelerate beside them: the optimizer, the LR schedule, every rank's RNG
  state. The data position is the step in ``history.json``.

``register(accelerator, objective, ema)`` installs the save and load hooks that make
``accelerator.save_state``/``load_state`` do this instead of pickling the whole objective
(single process and DDP; DeepSpeed and FSDP keep their engines' own checkpoint format for
the weights; the EMA file applies to them too).

Nothing in a checkpoint is unpickled as code, unless the user says the engine's own files
may be: what resuming checks before Accelerate reads anything is in
``training/checkpoint_safety.py``; ``training/convert_ema.py`` rewrites an old pickled EMA.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from vlv_pipeline.errors import InputError, MissingInputError
from vlv_pipeline.models.weights import tied_names
from vlv_pipeline.training.checkpoint_safety import (
    START_FRESH,
    CheckpointRefusedError,
    refuse_pickled_custom_states,
    resume_from_the_one_before,
)

TRAINABLE_FILE = "trainable.safetensors"
EMA_FILE = "ema.safetensors"


def trained_models(objective: nn.Module) -> dict[str, nn.Module]:
    """``objective.trained_models()``, checked to cover every trainable parameter ({} when
    the objective names none)."""
    named = getattr(objective, "trained_models", None)
    parts = dict(named()) if callable(named) else {}
    if parts:
        covered = {id(p) for module in parts.values() for p in module.parameters()}
        missed = [
            n for n, p in objective.named_parameters() if p.requires_grad and id(p) not in covered
        ]
        if missed:
            raise ValueError(
                f"{type(objective).__name__}.trained_models() leaves out trainable parameters "
                f"(e.g. {missed[:3]}): a checkpoint would lose them"
            )
    return parts


def _is_lora(module: nn.Module) -> bool:
    return hasattr(module, "peft_config") and hasattr(module, "get_base_model")


def _loose_tensors(module: nn.Module) -> dict[str, torch.Tensor]:
    """Trainable parameters and all buffers of ``module`` (contiguous, on the CPU)."""
    state = {n: p for n, p in module.named_parameters() if p.requires_grad}
    state.update(dict(module.named_buffers()))
    return {k: v.detach().contiguous().cpu() for k, v in state.items()}


def save_trained(objective: nn.Module, directory: str | Path) -> list[str]:
    """Write the trained models of ``objective`` into ``directory``; returns what was written."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    parts = trained_models(objective)
    if not parts:
        save_file(_loose_tensors(objective), str(directory / TRAINABLE_FILE))
        return [TRAINABLE_FILE]
    written = []
    for name, module in parts.items():
        if hasattr(module, "save_pretrained"):
            module.save_pretrained(directory / name)  # a LoRA model writes its adapter only
            written.append(name)
        else:
            save_file(
                {k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()},
                str(directory / f"{name}.safetensors"),
            )
            written.append(f"{name}.safetensors")
    return written


def _copy_into(module: nn.Module, state: dict[str, torch.Tensor], source: Path) -> None:
    missing, unexpected = module.load_state_dict(state, strict=False)
    missing = [k for k in missing if k not in tied_names(module)] if missing else missing
    if missing or unexpected:
        raise InputError(
            f"checkpoint {source} does not match the model being trained (missing "
            f"{missing[:3]}, unexpected {unexpected[:3]}): it was written for another "
            "architecture; delete that checkpoint folder or set training.resume: false"
        )


LEGACY_FILE = "model.safetensors"  # Accelerate's own: the whole objective, frozen parts too


def _saved(directory: Path, name: str) -> bool:
    return (directory / f"{name}.safetensors").is_file() or (directory / name).is_dir()


def _read(path: Path, directory: Path) -> dict[str, torch.Tensor]:
    """A safetensors file of a checkpoint; a damaged one is named, with what to do."""
    from vlv_pipeline.models.tensor_files import load_tensors

    return load_tensors(path, what_to_do=resume_from_the_one_before(directory))


def load_trained(objective: nn.Module, directory: str | Path) -> None:
    """Copy the trained models saved by ``save_trained`` back into ``objective`` in place.

    A checkpoint written before checkpoints held only what trains (Accelerate's
    ``model.safetensors`` of the whole objective) still loads."""
    directory = Path(directory)
    parts = trained_models(objective)
    expected = [f"{n}/" for n in parts] if parts else [TRAINABLE_FILE]
    present = (
        all(_saved(directory, n) for n in parts)
        if parts
        else (directory / TRAINABLE_FILE).is_file()
    )
    if not present:
        if (directory / LEGACY_FILE).is_file():
            _copy_into(objective, _read(directory / LEGACY_FILE, directory), directory)
            return
        raise MissingInputError(
            f"checkpoint {directory} has none of {expected}: it is incomplete or was written "
            "for another setup; " + resume_from_the_one_before(directory)
        )
    if not parts:
        state = _read(directory / TRAINABLE_FILE, directory)
        expected = _loose_tensors(objective)
        if set(state) != set(expected):
            raise InputError(
                f"checkpoint {directory / TRAINABLE_FILE} holds other parameters than the "
                f"objective trains ({sorted(set(state) ^ set(expected))[:3]}...); delete that "
                "checkpoint folder or set training.resume: false"
            )
        objective.load_state_dict(state, strict=False)  # the frozen rest stays as built
        return
    for name, module in parts.items():
        single = directory / f"{name}.safetensors"
        if single.is_file():
            _copy_into(module, _read(single, directory), single)
        elif _is_lora(module):
            from peft import set_peft_model_state_dict

            adapter = directory / name / "adapter_model.safetensors"
            result = set_peft_model_state_dict(module, _read(adapter, directory))
            if getattr(result, "unexpected_keys", None):
                raise InputError(f"{adapter}: keys the model lacks: {result.unexpected_keys[:3]}")
        else:
            from vlv_pipeline.models.tensor_files import naming_damaged

            with naming_damaged(directory / name, what_to_do=resume_from_the_one_before(directory)):
                saved = type(module).from_pretrained(directory / name)
            _copy_into(module, saved.state_dict(), directory / name)
            del saved


def _ema_names(objective: nn.Module) -> list[str]:
    """Names of the parameters the EMA follows, in its order (the loop's ``trainable``)."""
    return [n for n, p in objective.named_parameters() if p.requires_grad]


# what each EMA counter must be (diffusers' EMAModel.load_state_dict); JSON has no other
# numbers than int and float, and a bool is not a number here
EMA_KINDS: dict[str, tuple[type, ...]] = {
    "decay": (int, float),
    "min_decay": (float,),
    "optimization_step": (int,),
    "update_after_step": (int,),
    "use_ema_warmup": (bool,),
    "inv_gamma": (int, float),
    "power": (int, float),
}


def _ema_counters(text: str, path: Path) -> dict:
    """The EMA's counters from the ``ema`` metadata of ``ema.safetensors``: a JSON object of
    known names, each of the type the EMA keeps (``decay`` within [0, 1]); anything else is
    refused, naming the file and the counter."""
    hint = resume_from_the_one_before(path.parent)
    try:
        scalars = json.loads(text)
    except ValueError as error:
        raise CheckpointRefusedError(
            f"{path}: its metadata 'ema' (the EMA's counters) is not JSON ({error}); " + hint
        ) from None
    if not isinstance(scalars, dict):
        raise CheckpointRefusedError(
            f"{path}: its metadata 'ema' is {type(scalars).__name__}, not an object of the "
            "EMA's counters; " + hint
        )
    for name, value in scalars.items():
        kinds = EMA_KINDS.get(name)
        if kinds is None:
            raise CheckpointRefusedError(
                f"{path}: its metadata 'ema' holds {name!r}, which is not one of the EMA's "
                f"counters ({', '.join(EMA_KINDS)}); " + hint
            )
        fits = isinstance(value, kinds) and (bool in kinds or not isinstance(value, bool))
        if isinstance(value, float):
            fits = fits and math.isfinite(value)
        if name == "decay" and fits:
            fits = 0.0 <= value <= 1.0
        if not fits:
            raise CheckpointRefusedError(
                f"{path}: the EMA counter {name!r} is {value!r}, not "
                f"{' or '.join(k.__name__ for k in kinds)}"
                + (" within [0, 1]" if name == "decay" else "")
                + "; "
                + hint
            )
    return scalars


def save_ema(ema, names: list[str], directory: str | Path) -> Path:
    """``ema.safetensors``: the shadow weights by parameter name, the counters as metadata."""
    shadow = ema.shadow_params
    if len(shadow) != len(names):
        raise ValueError(f"the EMA follows {len(shadow)} tensors but {len(names)} are named")
    state = ema.state_dict()
    scalars = {k: state[k] for k in EMA_KINDS if k in state}
    path = Path(directory) / EMA_FILE
    save_file(
        {n: t.detach().contiguous().cpu() for n, t in zip(names, shadow, strict=True)},
        str(path),
        metadata={"ema": json.dumps(scalars)},
    )
    return path


def load_ema(ema, names: list[str], directory: str | Path, device=None) -> None:
    """Read ``ema.safetensors`` back into ``ema`` (on ``device``). Its tensors are named
    by parameter, or ``shadow.<i>`` by position (converted from an old pickle); names,
    count and shapes must match the run's."""
    from safetensors import safe_open

    path = Path(directory) / EMA_FILE
    fresh = START_FRESH.format(run=Path(directory).parent)
    if not path.is_file():
        raise CheckpointRefusedError(
            f"checkpoint {directory} has no {EMA_FILE} but this run keeps an EMA; " + fresh
        )
    try:
        tensors = load_file(str(path))
        with safe_open(str(path), "pt") as handle:
            text = (handle.metadata() or {}).get("ema", "{}")
    except Exception as error:
        raise CheckpointRefusedError(
            f"{path} is not a readable EMA file ({type(error).__name__}: {error}); "
            + resume_from_the_one_before(directory)
        ) from error
    scalars = _ema_counters(text, path)
    positional = [f"shadow.{i}" for i in range(len(names))]
    if set(tensors) == set(names):
        shadow = [tensors[n] for n in names]
    elif set(tensors) == set(positional):
        shadow = [tensors[n] for n in positional]
    else:
        differ = sorted(set(tensors) ^ set(names))
        raise CheckpointRefusedError(
            f"{path} holds the EMA of other parameters than this run trains (e.g. "
            f"{differ[:3]}); " + fresh
        )
    expected = [tuple(p.shape) for p in ema.shadow_params]
    if [tuple(t.shape) for t in shadow] != expected:
        raise CheckpointRefusedError(
            f"{path} holds EMA tensors of other shapes than this run trains; " + fresh
        )
    try:
        ema.load_state_dict({**scalars, "shadow_params": shadow})
    except (ValueError, TypeError) as error:  # diffusers' own checks, should ours miss one
        raise CheckpointRefusedError(
            f"{path}: the EMA refused its counters ({error}); "
            + resume_from_the_one_before(directory)
        ) from None
    ema.to(device)


def register(accelerator, objective: nn.Module, ema=None) -> bool:
    """Make ``accelerator.save_state``/``load_state`` store only what trains (see above)
    and the EMA (when given) in ``ema.safetensors``.

    Under DeepSpeed, FSDP or Megatron the engine shards the weights and saves them itself,
    in its own format: the checkpoint is then Accelerate's (returns False).

    The load hook runs inside ``load_state``, after the engine has read its files and before
    Accelerate reads the optimizer, RNG and custom files: call ``check_before_loading``
    first (the loop's resume does)."""
    from accelerate.utils import DistributedType

    sharding = {DistributedType.DEEPSPEED, DistributedType.FSDP, DistributedType.MEGATRON_LM}
    models_here = accelerator.distributed_type not in sharding
    names = _ema_names(objective) if ema is not None else []

    def save_hook(models, weights, output_dir):
        if models_here and weights:
            weights.pop()  # Accelerate would pickle the whole objective, frozen parts included
        if accelerator.is_main_process:
            if models_here:
                save_trained(objective, output_dir)
            if ema is not None:
                save_ema(ema, names, output_dir)

    def load_hook(models, input_dir):
        # again, for a caller that skipped check_before_loading: Accelerate reads the custom
        # pickles after this hook (only the folder is listed here)
        refuse_pickled_custom_states(input_dir)
        if models_here:
            if models:
                models.pop()
            load_trained(objective, input_dir)
        if ema is not None:
            load_ema(ema, names, input_dir, accelerator.device)

    accelerator.register_save_state_pre_hook(save_hook)
    accelerator.register_load_state_pre_hook(load_hook)
    return models_here
