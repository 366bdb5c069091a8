"""The one Accelerate training loop that every stage uses (teacher, stage 1, stage 2).

A stage hands over an ``objective``: an ``nn.Module`` whose ``forward(batch)`` returns
the scalar loss. Its trainable parameters are those with ``requires_grad``; frozen parts
live inside it with ``requires_grad=False``. Calling the module itself (not a submodule)
keeps Accelerate's DDP wrapper in the gradient path, so the same code runs on one CPU
core or under ``accelerate launch`` on many GPUs.

What the loop does: device placement, mixed precision, gradient accumulation, AdamW with
warmup then a cosine, linear or constant schedule (transformers' schedule functions),
gradient clipping, optional EMA of the trainable weights, ``checkpoint-N`` folders every K
steps (last M kept, written atomically), resume from the latest checkpoint, a NaN guard that
stops before anything bad is saved, a progress bar on the main process, and the loss history
for plots. The optimiser and its schedule are in ``training/optimization.py``; the run
folder, its ``checkpoint-N`` folders and resuming from them in ``training/run_folders.py``.

Batches come from a map-style ``Dataset`` through a seeded sampler, read in the loop or
by ``num_workers`` DataLoader worker processes (``prefetch_factor`` batches each, pinned
memory on CUDA). The sampler alone decides which items a step sees, so the reading
settings never change a run, and resume mid-epoch skips the consumed indices without
loading them (``skip_first_batches``): the resumed run reads the same next batches.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import DataLoaderConfiguration, set_seed
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from vlv_pipeline.errors import ParameterError, UserError
from vlv_pipeline.params.training import TrainParams
from vlv_pipeline.tracking import flatten
from vlv_pipeline.training import checkpoint
from vlv_pipeline.training.optimization import lr_multiplier, make_optimizer
from vlv_pipeline.training.run_folders import list_checkpoints, resume_latest, save_checkpoint
from vlv_pipeline.training.trackers import (
    figure_array,
    log_images,
    make_trackers,
    plain_config,
)
from vlv_pipeline.training.trackers import init_kwargs as tracker_init_kwargs

logger = logging.getLogger(__name__)


class TrainingDivergedError(UserError, FloatingPointError):
    """The loss stopped being finite; nothing after the last good checkpoint was saved."""


@dataclass
class TrainResult:
    """What a finished run returns besides the trained objective (updated in place)."""

    history: list[dict] = field(default_factory=list)  # {"step", "loss", "lr", "grad_norm"} per log
    steps: int = 0
    resumed_from: int | None = None
    seconds: float = 0.0  # training time, summed over every resumed run
    ema: object | None = None  # diffusers EMAModel when ema_decay is set


def loader_options(params: TrainParams) -> dict:
    """DataLoader keywords for reading: worker processes (kept alive across epochs), read
    ahead, pinned memory on CUDA. The sampler alone decides the batches, so a run sees the
    same batches with any of these settings."""
    options: dict = {"pin_memory": params.pin_memory and torch.cuda.is_available()}
    if params.num_workers:
        options.update(num_workers=params.num_workers, persistent_workers=True)
        if params.prefetch_factor is not None:
            options["prefetch_factor"] = params.prefetch_factor
    return options


def _make_accelerator(params: TrainParams, logging_dir: Path | None, name: str) -> Accelerator:
    # Accelerate keeps one process-wide state; a later stage with another precision in the
    # same `kedro run` (stage 1 fp32, then stage 2 bf16) would be refused. Drop the old
    # precision choice but keep the distributed state (the process group) as it is.
    state = AcceleratorState._shared_state
    if (
        state
        and str(state.get("_mixed_precision", params.mixed_precision)) != params.mixed_precision
    ):
        AcceleratorState._reset_state(reset_partial_state=False)
    trackers = make_trackers(params.trackers, name) if logging_dir is not None else []
    return Accelerator(
        gradient_accumulation_steps=params.gradient_accumulation,
        mixed_precision=params.mixed_precision,
        # one shuffle order on every rank (each takes its own slice of it); per-rank RNG is
        # only for noise draws
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=params.seed),
        cpu=not torch.cuda.is_available(),
        log_with=trackers or None,
        project_dir=str(logging_dir) if trackers else None,
    )


def _batches(accelerator: Accelerator, loader: DataLoader, start_micro: int):
    """Endless micro-batches, reshuffled each epoch, starting at micro-batch ``start_micro``."""
    per_epoch = len(loader)
    if per_epoch == 0:
        raise ParameterError(
            "the training set is smaller than one batch: lower batch_size or add data"
        )
    epoch, offset = divmod(start_micro, per_epoch)
    while True:
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(epoch)
        iterator = accelerator.skip_first_batches(loader, offset) if offset else loader
        yield from iterator
        epoch, offset = epoch + 1, 0


def enable_gradient_checkpointing(objective: nn.Module) -> list[str]:
    """Turn on activation recomputation in every outermost submodule that supports it (a
    diffusers model, a transformers model); returns their names."""
    enabled: list[str] = []
    for name, module in objective.named_modules():
        if any(name.startswith(f"{done}.") for done in enabled if done):
            continue
        if getattr(module, "_supports_gradient_checkpointing", False) and hasattr(
            module, "enable_gradient_checkpointing"
        ):  # diffusers
            module.enable_gradient_checkpointing()
        elif getattr(module, "supports_gradient_checkpointing", False) and hasattr(
            module, "gradient_checkpointing_enable"
        ):  # transformers; the non-reentrant form works with frozen inputs
            module.gradient_checkpointing_enable({"use_reentrant": False})
        else:
            continue
        enabled.append(name)
    return enabled


@dataclass
class Validation:
    """Run during training every ``every`` steps, on the main process: ``run(step)`` returns
    (scalar metrics, {name: matplotlib figure}), logged to the trackers. With EMA on it sees
    the EMA weights. It draws from its own RNG: training's random state is left as it was."""

    every: int
    run: Callable[[int], tuple[dict, dict]]


def _validate(accelerator, validation: Validation, step: int, trainable, ema) -> None:
    if accelerator.is_main_process:
        if ema is not None:
            ema.store(trainable)
            ema.copy_to(trainable)
        devices = [accelerator.device] if accelerator.device.type == "cuda" else []
        try:
            with torch.random.fork_rng(devices=devices):
                metrics, figures = validation.run(step)
        finally:
            if ema is not None:
                ema.restore(trainable)
        accelerator.log({f"validation/{k}": v for k, v in flatten(metrics).items()}, step=step)
        log_images(
            accelerator, {f"validation/{k}": figure_array(f) for k, f in figures.items()}, step
        )
    accelerator.wait_for_everyone()


class _Window:
    """Running sums between two log lines: mean loss and grad norm, images per second."""

    def __init__(self, images_per_step: int):
        self.images_per_step = images_per_step
        self.reset()

    def reset(self) -> None:
        self.loss, self.norm, self.steps, self.started = 0.0, 0.0, 0, time.perf_counter()

    def add(self, loss: float, norm: float) -> None:
        self.loss, self.norm, self.steps = self.loss + loss, self.norm + norm, self.steps + 1

    def entry(self, step: int, lr: float) -> tuple[dict, float]:
        """The history entry (deterministic) and the throughput (not part of the history)."""
        seconds = max(time.perf_counter() - self.started, 1e-9)
        entry = {
            "step": step,
            "loss": self.loss / self.steps,
            "lr": lr,
            "grad_norm": self.norm / self.steps,
        }
        return entry, self.images_per_step * self.steps / seconds


@dataclass
class _Prepared:
    """What one training run steps: the objective as Accelerate wrapped it, and its state."""

    accelerator: Accelerator
    model: nn.Module
    optimizer: torch.optim.Optimizer
    schedule: torch.optim.lr_scheduler.LRScheduler
    loader: DataLoader
    trainable: list[nn.Parameter]
    ema: Any


def train(
    objective: nn.Module,
    dataset: Dataset,
    params: TrainParams,
    *,
    checkpoint_dir: str | Path | None = None,
    desc: str = "train",
    collate_fn=None,
    validation: Validation | None = None,
) -> TrainResult:
    """Train ``objective`` on ``dataset`` for ``params.steps`` optimiser steps.

    ``checkpoint_dir`` holds ``checkpoint-N`` folders and the tracker logs (``logs/``); with
    ``params.resume`` a rerun continues from the latest checkpoint (a finished run returns
    at once). After training, the objective's weights are the trained ones (the EMA
    weights, if EMA is on, are in ``result.ema``; call ``result.ema.copy_to(params)`` to
    use them). ``validation`` runs every ``validation.every`` steps.
    """
    directory = Path(checkpoint_dir) if checkpoint_dir is not None else None
    name = desc.replace(" ", "")
    run = _prepare(objective, dataset, params, directory, name, desc, collate_fn)
    start, history, earlier_seconds, resumed_from = resume_latest(
        run.accelerator, directory, params, desc
    )
    if run.accelerator.log_with:
        run.accelerator.init_trackers(
            name,
            config=plain_config(params.model_dump(mode="json")),
            init_kwargs=tracker_init_kwargs(params.trackers, directory / "logs", directory.name),
        )
    started = time.perf_counter()
    _run_steps(run, params, start, history, directory, desc, validation, earlier_seconds)
    seconds = time.perf_counter() - started if params.steps > start else 0.0
    if params.steps > start:
        logger.info(
            "%s: %d steps in %.1f s (%.3f s/step), final loss %.4g",
            desc,
            params.steps - start,
            seconds,
            seconds / (params.steps - start),
            history[-1]["loss"] if history else float("nan"),
        )
    run.accelerator.wait_for_everyone()
    return TrainResult(
        history=history,
        steps=params.steps,
        resumed_from=resumed_from,
        seconds=earlier_seconds + seconds,
        ema=run.ema,
    )


def _prepare(
    objective: nn.Module,
    dataset: Dataset,
    params: TrainParams,
    directory: Path | None,
    name: str,
    desc: str,
    collate_fn,
) -> _Prepared:
    """The accelerator, optimizer, schedule, shuffled loader and EMA of a run, prepared by
    Accelerate, with the checkpoint hooks registered (nothing trained yet)."""
    from diffusers.training_utils import EMAModel  # heavy import, only when training

    accelerator = _make_accelerator(params, directory / "logs" if directory else None, name)
    set_seed(params.seed, device_specific=True)
    if params.gradient_checkpointing:
        logger.info(
            "%s: gradient checkpointing in %s", desc, enable_gradient_checkpointing(objective)
        )
    trainable = [p for p in objective.parameters() if p.requires_grad]
    if not trainable:
        raise ValueError(f"{desc}: the objective has no trainable parameters")
    checkpoint.trained_models(objective)  # names every trainable weight, or fails here
    objective.to(accelerator.device)
    optimizer = make_optimizer(trainable, params, accelerator.device)
    # Accelerate's prepared schedule steps once per process at each optimiser step (it counts
    # per-process batches); the multiplier counts optimiser steps
    multiplier, processes = lr_multiplier(params), accelerator.num_processes
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda index: multiplier(index // processes)
    )
    loader = DataLoader(
        dataset,
        batch_size=params.batch_size,
        shuffle=True,
        drop_last=True,
        collate_fn=collate_fn,
        generator=torch.Generator().manual_seed(params.seed),
        **loader_options(params),
    )
    model, optimizer, loader, schedule = accelerator.prepare(objective, optimizer, loader, schedule)
    ema = None
    if params.ema_decay is not None:
        ema = EMAModel(trainable, decay=params.ema_decay)
        ema.to(accelerator.device)
    # the EMA goes into ema.safetensors through the checkpoint hooks, never through
    # register_for_checkpointing (whose file Accelerate reads with weights_only=False)
    checkpoint.register(accelerator, objective, ema)
    return _Prepared(accelerator, model, optimizer, schedule, loader, trainable, ema)


def _run_steps(
    run: _Prepared,
    params: TrainParams,
    start: int,
    history: list[dict],
    directory: Path | None,
    desc: str,
    validation: Validation | None,
    earlier_seconds: float,
) -> None:
    """Steps ``start`` to ``params.steps``: log, validate and checkpoint on schedule; the
    trackers are finished even when a step fails."""
    accelerator, model = run.accelerator, run.model
    started = time.perf_counter()
    batches = _batches(accelerator, run.loader, start * params.gradient_accumulation)
    bar = tqdm(
        total=params.steps,
        initial=start,
        desc=desc,
        disable=not accelerator.is_local_main_process,
        dynamic_ncols=True,
    )
    model.train()
    window = _Window(params.batch_size * params.gradient_accumulation * accelerator.num_processes)
    try:
        for step in range(start, params.steps):
            loss, norm = _step(
                accelerator, model, run.optimizer, run.schedule, batches, run.trainable, params
            )
            if not math.isfinite(loss):
                _diverged(loss, step, directory, desc)
            window.add(loss, norm)
            if run.ema is not None:
                run.ema.step(run.trainable)
            done = step + 1
            if done % params.log_every == 0 or done == params.steps:
                entry, images_per_s = window.entry(done, run.schedule.get_last_lr()[0])
                history.append(entry)
                accelerator.log({**entry, "images_per_s": images_per_s}, step=done)
                bar.set_postfix(loss=f"{entry['loss']:.4g}")
                window.reset()
            bar.update(1)
            if validation is not None and done % validation.every == 0:
                _validate(accelerator, validation, done, run.trainable, run.ema)
                model.train()
            if directory is not None and (
                done % params.checkpoint_every == 0 or done == params.steps
            ):
                elapsed = earlier_seconds + time.perf_counter() - started
                save_checkpoint(
                    accelerator, directory, done, history, params.keep_checkpoints, elapsed
                )
    finally:  # a failed run still leaves readable curves up to where it stopped
        bar.close()
        # not accelerator.end_training(): it also destroys the process group, which the
        # nodes after training (rank-0 saves, gathers) still need in the same launch
        for tracker in accelerator.trackers:
            tracker.finish()


def _diverged(loss: float, step: int, directory: Path | None, desc: str) -> None:
    saved = list_checkpoints(directory) if directory is not None else []
    last = saved[-1][1] if saved else None
    raise TrainingDivergedError(
        f"{desc}: the loss became {loss} at step {step}; stopped before "
        f"saving anything. Last good checkpoint: {last or 'none'}. "
        "Lower learning_rate, raise warmup_steps or set max_grad_norm."
    )


def _step(
    accelerator, model, optimizer, schedule, batches, trainable, params
) -> tuple[float, float]:
    """One optimiser step over ``gradient_accumulation`` micro-batches: (loss averaged over
    the micro-batches and ranks, gradient norm before clipping; nan for a non-finite loss,
    in which case nothing was stepped)."""
    total, norm = 0.0, 0.0
    for _ in range(params.gradient_accumulation):
        batch = next(batches)
        with accelerator.accumulate(model):
            loss = model(batch)
            if not torch.isfinite(loss.detach()):
                return float(loss.item()), 0.0
            accelerator.backward(loss)
            if accelerator.sync_gradients:
                # the norm is measured either way; an infinite bound clips nothing
                limit = params.max_grad_norm if params.max_grad_norm is not None else math.inf
                norm = float(accelerator.clip_grad_norm_(trainable, limit))
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
        total += accelerator.gather(loss.detach()).mean().item() / params.gradient_accumulation
    return total, norm
