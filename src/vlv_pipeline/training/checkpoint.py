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
the weights; the EMA file and the checks below apply to them too).

Nothing in a checkpoint is unpickled as code. Accelerate reads its optimizer, schedule and
RNG files with ``torch.load(weights_only=True)``; it would read an object registered with
``register_for_checkpointing`` (``custom_checkpoint_<i>.pkl``) with ``weights_only=False``,
so the loop registers none, and loading refuses a checkpoint that holds such a file (it
was written by an older version, or planted) before anything is read. ``convert_ema``
turns an old one into ``ema.safetensors``, reading tensors only.
"""

from __future__ import annotations

import json
import pickle
import re
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from vlv_pipeline.errors import InputError, MissingInputError, UserError
from vlv_pipeline.models.weights import tied_names

TRAINABLE_FILE = "trainable.safetensors"
EMA_FILE = "ema.safetensors"
# what Accelerate writes for register_for_checkpointing objects, and reads unsafely
PICKLED_CUSTOM = re.compile(r"^custom_checkpoint_\d+\.pkl$")
CONVERT_COMMAND = "python -m vlv_pipeline.training.convert_ema"
START_FRESH = (
    "or start fresh: delete the run folder {run} (or set training.resume: false for this run)"
)


class CheckpointRefusedError(UserError, ValueError):
    """A checkpoint holds something resuming will not read (a pickle, an unreadable file)."""


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

    return load_tensors(path, what_to_do=_damaged_hint(directory))


def _damaged_hint(directory: Path) -> str:
    return (
        f"delete that checkpoint folder ({directory}: the run resumes from the one before), "
        + START_FRESH.format(run=directory.parent)
    )


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
            "for another setup; delete it (the run resumes from the one before) or set "
            "training.resume: false"
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

            with naming_damaged(directory / name, what_to_do=_damaged_hint(directory)):
                saved = type(module).from_pretrained(directory / name)
            _copy_into(module, saved.state_dict(), directory / name)
            del saved


def _ema_names(objective: nn.Module) -> list[str]:
    """Names of the parameters the EMA follows, in its order (the loop's ``trainable``)."""
    return [n for n, p in objective.named_parameters() if p.requires_grad]


_EMA_SCALARS = (
    "decay",
    "min_decay",
    "optimization_step",
    "update_after_step",
    "use_ema_warmup",
    "inv_gamma",
    "power",
)


def save_ema(ema, names: list[str], directory: str | Path) -> Path:
    """``ema.safetensors``: the shadow weights by parameter name, the counters as metadata."""
    shadow = ema.shadow_params
    if len(shadow) != len(names):
        raise ValueError(f"the EMA follows {len(shadow)} tensors but {len(names)} are named")
    state = ema.state_dict()
    scalars = {k: state[k] for k in _EMA_SCALARS if k in state}
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
            scalars = json.loads((handle.metadata() or {}).get("ema", "{}"))
    except Exception as error:
        raise CheckpointRefusedError(
            f"{path} is not a readable EMA file ({type(error).__name__}: {error}); " + fresh
        ) from error
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
    ema.load_state_dict({**scalars, "shadow_params": shadow})
    ema.to(device)


def pickled_custom_states(directory: str | Path) -> list[str]:
    """Accelerate's pickled ``custom_checkpoint_<i>.pkl`` files in a checkpoint folder."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    return sorted(p.name for p in directory.iterdir() if PICKLED_CUSTOM.match(p.name))


def refuse_pickled_custom_states(directory: str | Path) -> None:
    """Stop before Accelerate reads a ``custom_checkpoint_<i>.pkl`` (with
    ``weights_only=False``: code in it would run). Nothing in the folder is read."""
    found = pickled_custom_states(directory)
    if found:
        directory = Path(directory)
        raise CheckpointRefusedError(
            f"checkpoint {directory} holds {', '.join(found)}: a pickle, as Accelerate saved "
            "the EMA state before this version (or a file someone planted). It is not "
            "loaded: unpickling it could run code. If you wrote it, convert it with "
            f"`{CONVERT_COMMAND} {directory.parent}` (it reads tensors only, refuses "
            "anything else, and writes ema.safetensors), then rerun; "
            + START_FRESH.format(run=directory.parent)
        )


def torch_loaded_files(directory: str | Path) -> list[str]:
    """The files of a checkpoint that Accelerate reads with ``torch.load(weights_only=True)``
    (optimizer, schedule, sampler, scaler, RNG states)."""
    pattern = re.compile(r"^(optimizer|scheduler|sampler|dl_state_dict|scaler|random_states)")
    return sorted(p.name for p in Path(directory).iterdir() if pattern.match(p.name))


def refusal_reason(error: BaseException) -> str:
    """The line of torch's ``weights_only`` refusal that says what the file holds (not its
    advice to load it with ``weights_only=False``)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    telling = [line for line in lines if "GLOBAL" in line or "nsupported" in line]
    return (telling or [type(error).__name__])[0][:200]


def _check_rng_state(directory: Path, process_index: int) -> None:
    """Accelerate skips an RNG file it cannot read (``weights_only``) without a word, and
    the resumed run is then not the run it continues: refuse it instead."""
    from accelerate.utils import RNG_STATE_NAME
    from accelerate.utils import load as accelerate_load

    path = directory / f"{RNG_STATE_NAME}_{process_index}.pkl"
    if not path.is_file():
        return
    try:
        accelerate_load(path)  # weights_only=True, plus the numpy types RNG states hold
    except Exception as error:
        raise CheckpointRefusedError(
            f"checkpoint {directory}: {path.name} is not an RNG state torch.load("
            f"weights_only=True) can read ({refusal_reason(error)}); nothing in it was run. "
            "Delete that checkpoint folder (the run resumes from the one before), "
            + START_FRESH.format(run=directory.parent)
        ) from None


def convert_pickled_ema(directory: str | Path) -> list[Path]:
    """Rewrite the ``custom_checkpoint_0.pkl`` of an old checkpoint (or of every checkpoint
    in a run folder) as ``ema.safetensors``. The pickle is read with
    ``torch.load(weights_only=True)``: tensors, numbers and lists only; anything else is
    refused and the file left as it was. Returns the files written."""
    directory = Path(directory)
    folders = [directory] if pickled_custom_states(directory) else []
    if not folders and directory.is_dir():
        folders = sorted(p for p in directory.iterdir() if pickled_custom_states(p))
    if not folders:
        raise MissingInputError(f"no custom_checkpoint_*.pkl in {directory} or its folders")
    written = []
    for folder in folders:
        found = pickled_custom_states(folder)
        if found != ["custom_checkpoint_0.pkl"]:
            raise CheckpointRefusedError(
                f"{folder} holds {found}: the loop only ever saved one (the EMA, "
                "custom_checkpoint_0.pkl); start fresh instead"
            )
        source = folder / found[0]
        try:
            state = torch.load(source, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as error:
            raise CheckpointRefusedError(
                f"{source} is not a plain EMA state (torch.load(weights_only=True) refused "
                f"it: {refusal_reason(error)}); nothing in it was run. Delete it "
                "and start fresh"
            ) from None
        shadow = state.get("shadow_params") if isinstance(state, dict) else None
        if not isinstance(shadow, list) or not all(isinstance(t, torch.Tensor) for t in shadow):
            raise CheckpointRefusedError(f"{source} is not an EMA state (no shadow_params list)")
        scalars = {k: state[k] for k in _EMA_SCALARS if k in state}
        save_file(  # by position: the names of the parameters are not in the pickle
            {f"shadow.{i}": t.contiguous() for i, t in enumerate(shadow)},
            str(folder / EMA_FILE),
            metadata={"ema": json.dumps(scalars)},
        )
        source.unlink()
        written.append(folder / EMA_FILE)
    return written


def register(accelerator, objective: nn.Module, ema=None) -> bool:
    """Make ``accelerator.save_state``/``load_state`` store only what trains (see above),
    the EMA (when given) in ``ema.safetensors``, and refuse pickled custom states.

    Under DeepSpeed, FSDP or Megatron the engine shards the weights and saves them itself,
    in its own format: the checkpoint is then Accelerate's (returns False)."""
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
        # runs before Accelerate reads anything of the checkpoint
        refuse_pickled_custom_states(input_dir)
        _check_rng_state(Path(input_dir), accelerator.process_index)
        if models_here:
            if models:
                models.pop()
            load_trained(objective, input_dir)
        if ema is not None:
            load_ema(ema, names, input_dir, accelerator.device)

    accelerator.register_save_state_pre_hook(save_hook)
    accelerator.register_load_state_pre_hook(load_hook)
    return models_here
