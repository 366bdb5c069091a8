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
may be. ``check_before_loading`` runs before ``accelerator.load_state`` is called (the
loop's resume calls it; Accelerate's load hooks come too late for this: under DeepSpeed and
FSDP the engine has read its files before they run). It

- refuses a checkpoint that holds ``custom_checkpoint_<i>.pkl``: what Accelerate saves for
  an object registered with ``register_for_checkpointing`` and reads back with
  ``weights_only=False``. The loop registers none, so such a file was written by an older
  version (the EMA) or planted; ``convert_ema`` turns an old one into ``ema.safetensors``,
  reading tensors only;
- refuses a checkpoint under an engine that unpickles its own files (DeepSpeed's
  ``pytorch_model/*.pt`` with ``torch.load(weights_only=False)``, Megatron-LM's, FSDP's
  sharded ``.metadata`` with ``pickle.load``), which nothing here can vet, unless the run
  sets ``training.trust_engine_checkpoints: true``;
- reads every ``*.bin``/``*.pt``/``*.pkl`` file of the folder (optimizer, schedule,
  sampler, scaler, every rank's RNG state, FSDP's full state dict) with
  ``torch.load(weights_only=True)``, memory-mapped, and refuses the first that does not
  load that way by name (Accelerate would skip an unreadable RNG file without a word).
"""

from __future__ import annotations

import json
import math
import os
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

    return load_tensors(path, what_to_do=resume_from_the_one_before(directory))


def resume_from_the_one_before(directory: str | Path) -> str:
    """What to do about a checkpoint folder that cannot be resumed from."""
    directory = Path(directory)
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
_EMA_KINDS: dict[str, tuple[type, ...]] = {
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
        kinds = _EMA_KINDS.get(name)
        if kinds is None:
            raise CheckpointRefusedError(
                f"{path}: its metadata 'ema' holds {name!r}, which is not one of the EMA's "
                f"counters ({', '.join(_EMA_KINDS)}); " + hint
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
    scalars = {k: state[k] for k in _EMA_KINDS if k in state}
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


def pickled_custom_states(directory: str | Path) -> list[str]:
    """Accelerate's pickled ``custom_checkpoint_<i>.pkl`` files in a checkpoint folder."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    return sorted(p.name for p in directory.iterdir() if PICKLED_CUSTOM.match(p.name))


def refuse_pickled_custom_states(directory: str | Path) -> None:
    """Refuse a checkpoint that holds a ``custom_checkpoint_<i>.pkl`` (Accelerate reads it
    with ``weights_only=False``: code in it would run). Only the folder is listed."""
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


# what torch.save writes in a checkpoint folder: Accelerate's optimizer, scheduler, sampler,
# dataloader and scaler states, every rank's RNG state, FSDP's state dicts (all read with
# torch.load(weights_only=True)); custom_checkpoint_<i>.pkl is refused before, unread
TORCH_SUFFIXES = frozenset({".bin", ".pt", ".pkl"})


def torch_loaded_files(directory: str | Path) -> list[Path]:
    """The files of a checkpoint folder (not its subfolders) that resuming reads with
    ``torch.load``: every ``*.bin``, ``*.pt`` and ``*.pkl`` but the custom pickles."""
    return sorted(
        p
        for p in Path(directory).iterdir()
        if p.is_file() and p.suffix in TORCH_SUFFIXES and not PICKLED_CUSTOM.match(p.name)
    )


def refusal_reason(error: BaseException) -> str:
    """The line of torch's ``weights_only`` refusal that says what the file holds (not its
    advice to load it with ``weights_only=False``)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    telling = [line for line in lines if "GLOBAL" in line or "nsupported" in line]
    return (telling or [type(error).__name__])[0][:200]


def _first_line(error: BaseException) -> str:
    """The first sentence of an error's message (torch's go on with advice)."""
    text = str(error).strip()
    return text.splitlines()[0].split(". ")[0][:200] if text else type(error).__name__


def _file_error(error: BaseException) -> bool:
    """An OSError about the file itself (missing, not permitted), not about what it holds:
    torch reports a cut-short file as an OSError too (a seek past its end), naming no file."""
    return isinstance(error, OSError) and error.filename is not None


def _load_plain(path: Path) -> None:
    """``torch.load(path, weights_only=True)`` as Accelerate calls it (numpy's RNG types
    allowed), memory-mapped: the pickle is checked, the tensors' bytes are not read."""
    from accelerate.utils import load as accelerate_load

    try:
        accelerate_load(path, map_location="cpu", mmap=True)
    except pickle.UnpicklingError:
        raise
    except Exception:  # not the zip format, or damaged (mapping it fails in other ways)
        accelerate_load(path, map_location="cpu")  # says what is wrong, if anything is


def vet_torch_files(directory: str | Path) -> None:
    """Load every ``torch_loaded_files`` file with ``weights_only=True`` and refuse the
    checkpoint at the first that does not load that way, naming it. Accelerate would read
    the same files the same way (so nothing in them could run), but it skips an RNG file it
    cannot read without a word (the resumed run is then not the run it continues), and
    reports any other as an error that names no file."""
    directory = Path(directory)
    for path in torch_loaded_files(directory):
        try:
            _load_plain(path)
        except pickle.UnpicklingError as error:  # weights_only refused something
            raise CheckpointRefusedError(
                f"{path} is not plain tensors: torch.load("
                f"weights_only=True) refused it ({refusal_reason(error)}); nothing in it was "
                "run; " + resume_from_the_one_before(directory)
            ) from None
        except Exception as error:  # cut short, or not a torch file at all
            if _file_error(error):
                raise
            raise CheckpointRefusedError(
                f"{path} does not read as a torch file "
                f"({_first_line(error)}): it may be cut short or damaged; "
                + resume_from_the_one_before(directory)
            ) from None


def engine_reading_pickles(accelerator) -> str | None:
    """What, under ``accelerator``'s backend, reads the engine's own checkpoint files by
    unpickling them inside ``load_state`` (code in them would run, and nothing here can
    vet them: they hold the engine's objects, not plain tensors); None where nothing does."""
    from accelerate.utils import DistributedType

    backend = accelerator.distributed_type
    if backend == DistributedType.DEEPSPEED:
        return "DeepSpeed reads its pytorch_model/*.pt files with torch.load(weights_only=False)"
    if backend == DistributedType.MEGATRON_LM:
        return "Megatron-LM reads its own checkpoint files, which nothing here can vet"
    if backend == DistributedType.FSDP:
        plugin = getattr(accelerator.state, "fsdp_plugin", None)
        kind = getattr(plugin, "state_dict_type", None)
        if str(getattr(kind, "name", kind)).upper().endswith("SHARDED_STATE_DICT"):
            return (
                "FSDP with sharded state dicts reads torch.distributed.checkpoint's .metadata "
                "files with pickle.load"
            )
    return None


TRUST_ENGINE = "training.trust_engine_checkpoints: true"


def check_before_loading(directory: str | Path, accelerator, *, trust_engine: bool) -> None:
    """Every check of a checkpoint folder, run before ``accelerator.load_state`` is called
    (its load hooks come too late: under DeepSpeed and FSDP the engine reads its files
    before them). In order: no ``custom_checkpoint_<i>.pkl`` (only the folder is listed);
    no engine that unpickles its own files, unless ``trust_engine``; every torch file loads
    with ``weights_only=True`` (``vet_torch_files``). Each refusal names what it refused."""
    directory = Path(directory)
    refuse_pickled_custom_states(directory)
    engine = engine_reading_pickles(accelerator)
    if engine and not trust_engine:
        raise CheckpointRefusedError(
            f"checkpoint {directory} is not resumed: {engine}, before anything here can check "
            "them, so a file someone planted there would run code. If nobody else can write "
            f"under {directory.parent}, resume it with {TRUST_ENGINE} (the run folder stays "
            "the same); " + START_FRESH.format(run=directory.parent)
        )
    vet_torch_files(directory)


def _write_ema_file(folder: Path, shadow: list[torch.Tensor], scalars: dict) -> Path:
    """``ema.safetensors`` (by position) written atomically: a temporary in ``folder``,
    flushed to the disk, renamed into place."""
    from vlv_pipeline.errors import UnwritableError
    from vlv_pipeline.files import (
        fsync_file,
        fsync_folder,
        remove_quietly,
        temporary_for,
        unwritable,
    )

    final = folder / EMA_FILE
    temporary = temporary_for(final)
    try:
        save_file(  # by position: the names of the parameters are not in the pickle
            {f"shadow.{i}": t.contiguous() for i, t in enumerate(shadow)},
            str(temporary),
            metadata={"ema": json.dumps(scalars)},
        )
        fsync_file(temporary)
        os.replace(temporary, final)
    except OSError as error:
        remove_quietly(temporary)
        raise UnwritableError(error.errno, unwritable(final, error)) from error
    except BaseException:
        remove_quietly(temporary)
        raise
    fsync_folder(folder)
    return final


def convert_pickled_ema(directory: str | Path) -> list[Path]:
    """Rewrite the ``custom_checkpoint_0.pkl`` of an old checkpoint (or of every checkpoint
    in a run folder) as ``ema.safetensors``. The pickle is read with
    ``torch.load(weights_only=True)``: tensors, numbers and lists only; anything else, or a
    file that does not read, is refused and the file left as it was. ``ema.safetensors``
    is written atomically, then the pickle deleted. Returns the files written."""
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
                "custom_checkpoint_0.pkl); " + resume_from_the_one_before(folder)
            )
        source = folder / found[0]
        try:
            state = torch.load(source, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as error:
            raise CheckpointRefusedError(
                f"{source} is not a plain EMA state (torch.load(weights_only=True) refused "
                f"it: {refusal_reason(error)}); nothing in it was run and nothing was "
                "converted; " + resume_from_the_one_before(folder)
            ) from None
        except Exception as error:  # cut short, or not a torch file at all
            if _file_error(error):
                raise
            raise CheckpointRefusedError(
                f"{source} does not read as a torch file ({_first_line(error)}): "
                "it may be cut short or damaged; nothing was converted; "
                + resume_from_the_one_before(folder)
            ) from None
        shadow = state.get("shadow_params") if isinstance(state, dict) else None
        if not isinstance(shadow, list) or not all(isinstance(t, torch.Tensor) for t in shadow):
            raise CheckpointRefusedError(f"{source} is not an EMA state (no shadow_params list)")
        scalars = {k: state[k] for k in _EMA_KINDS if k in state}
        written.append(_write_ema_file(folder, shadow, scalars))
        source.unlink()
    return written


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
