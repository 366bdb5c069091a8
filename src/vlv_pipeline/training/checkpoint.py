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
- and, written by Accelerate beside them: the optimizer, the LR schedule, every rank's RNG
  state, the EMA weights (when on). The data position is the step in ``history.json``.

``register(accelerator, objective)`` installs the save and load hooks that make
``accelerator.save_state``/``load_state`` do this instead of pickling the whole objective
(single process and DDP; DeepSpeed and FSDP keep their engines' own checkpoint format).
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from vlv_pipeline.models.weights import tied_names

TRAINABLE_FILE = "trainable.safetensors"


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
        raise ValueError(
            f"checkpoint {source} does not match the model being trained (missing "
            f"{missing[:3]}, unexpected {unexpected[:3]}): it was written for another "
            "architecture; delete that checkpoint folder or set training.resume: false"
        )


LEGACY_FILE = "model.safetensors"  # Accelerate's own: the whole objective, frozen parts too


def _saved(directory: Path, name: str) -> bool:
    return (directory / f"{name}.safetensors").is_file() or (directory / name).is_dir()


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
            _copy_into(objective, load_file(str(directory / LEGACY_FILE)), directory)
            return
        raise FileNotFoundError(
            f"checkpoint {directory} has none of {expected}: it is incomplete or was written "
            "for another setup; delete it (the run resumes from the one before) or set "
            "training.resume: false"
        )
    if not parts:
        state = load_file(str(directory / TRAINABLE_FILE))
        expected = _loose_tensors(objective)
        if set(state) != set(expected):
            raise ValueError(
                f"checkpoint {directory / TRAINABLE_FILE} holds other parameters than the "
                f"objective trains ({sorted(set(state) ^ set(expected))[:3]}...); delete that "
                "checkpoint folder or set training.resume: false"
            )
        objective.load_state_dict(state, strict=False)  # the frozen rest stays as built
        return
    for name, module in parts.items():
        single = directory / f"{name}.safetensors"
        if single.is_file():
            _copy_into(module, load_file(str(single)), single)
        elif _is_lora(module):
            from peft import set_peft_model_state_dict

            adapter = directory / name / "adapter_model.safetensors"
            result = set_peft_model_state_dict(module, load_file(str(adapter)))
            if getattr(result, "unexpected_keys", None):
                raise ValueError(f"{adapter}: keys the model lacks: {result.unexpected_keys[:3]}")
        else:
            saved = type(module).from_pretrained(directory / name)
            _copy_into(module, saved.state_dict(), directory / name)
            del saved


def register(accelerator, objective: nn.Module) -> bool:
    """Make ``accelerator.save_state``/``load_state`` store only what trains (see above).

    Under DeepSpeed, FSDP or Megatron the engine shards the weights and saves them itself,
    in its own format: the checkpoint is then Accelerate's (returns False)."""
    from accelerate.utils import DistributedType

    sharding = {DistributedType.DEEPSPEED, DistributedType.FSDP, DistributedType.MEGATRON_LM}
    if accelerator.distributed_type in sharding:
        return False

    def save_hook(models, weights, output_dir):
        if weights:
            weights.pop()  # Accelerate would pickle the whole objective, frozen parts included
        if accelerator.is_main_process:
            save_trained(objective, output_dir)

    def load_hook(models, input_dir):
        if models:
            models.pop()
        load_trained(objective, input_dir)

    accelerator.register_save_state_pre_hook(save_hook)
    accelerator.register_load_state_pre_hook(load_hook)
    return True
