"""Benchmark: where the default run's training time goes, step by step (issue 28, part 1).

    python bench/bench_step.py                          # every section (about 5 min on 2 cores)
    python bench/bench_step.py --only stage1 baseline --steps 20 --json step.json
    python bench/bench_step.py --synthetic --batch 4 --render-batch 2 --render-steps 2 --steps 1

Everything is built as `make run` builds it: parameters from the default config through
Kedro (conf/base), data through its catalog, and each stage's objective and training set by
the stage's own node (``train_stage1``, ``train_stage2``, ``train_baseline``), which the
bench stops where it calls ``train()``. The real loop (``training/loop.py``) then trains
that objective on that training set, and evaluate's ``EvalRenders`` renders.

Sections (``--only`` picks some):

- gemm: the fp32 matrix product of 1024 and of 2048 on this device; the best is the ceiling.
- stage1: the step's FLOPs (``FlopCounterMode``, forward and backward; the frozen UNet's share
  by replaying its call, forward and the backward through it), the bare step (forward,
  backward, AdamW step on batches held in memory) and its GFLOP/s as a share of the ceiling,
  then the real loop against the bare step, with a breakdown.
- stage2, baseline: the same for stage 2's step and the "without stage 1" baseline's step.
- render: one batch of evaluate's reconstructions from embeddings (``evaluate.sampling``),
  through ``EvalRenders`` against the bare sampler call on conditions held in memory.
- levers: each as a ratio of its time to today's, measured in this run (with ``--compile``,
  also the baseline's encoder under ``torch.compile``; the render in calls of half the batch).

How the loop's overhead is measured: the real ``train()`` runs ``warmup + steps + profile``
steps (one more without a profile), with a timer around each call it makes: reading the
batch (``loop._batches``), the objective's forward (module hooks), ``accelerator.backward``,
``clip_grad_norm_``, the optimizer's step and zero_grad and the schedule's step, the loss
gather, the progress bar, the log line (``_Window.entry``, ``accelerator.log``, the bar's
postfix), ``save_checkpoint``, ``_validate`` and the EMA's step. The timed window runs from
the forward of step ``warmup`` to the forward of step ``warmup + steps``; whatever in it no
timer covers is "other". Log lines and checkpoints come every K steps: each is timed per call
(a run always logs and saves at its last step) and counted at the rate the default run makes
them. Before the loop runs, every item of the training set is read once, as the first epoch
reads it: later epochs find the items in the loop's ``BoundedCache``, and the timed steps
see that steady state (the first epoch's read is printed on its own). The loop's overhead is
its s/step minus the bare step's; the loop's own parts are everything but forward, backward
and the optimizer.

Inputs: data/ after ``kedro run --pipelines world,ingest,cache`` (stage 1, render). Stage 2's
caption pairs, the stage-1 encoder and the embedding cache are read where `make run` made
them; otherwise the pairs and the embedding cache are built by the synthesize nodes into a
temporary folder, and the encoder is a fresh one with random weights (speed does not depend
on the weights), each with a printed note. Without usable data/ (or with ``--synthetic``) a
small world is rendered, ingested and cached into a temporary folder by the world, ingest and
cache nodes, also with a note. Timings mean something only on a quiet machine.
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import logging
import math
import os
import platform
import sys
import tempfile
import time
import warnings
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from unittest import mock

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from steps import step_phases, synchronize  # noqa: E402

from vlv_pipeline.models.stage2 import Stage2Objective  # noqa: E402

SECTIONS = ("gemm", "stage1", "stage2", "baseline", "render")
# what the loop does at every step, and what it does every K steps
PER_STEP = (
    "data",
    "forward",
    "backward",
    "optimizer",
    "grad_norm",
    "loss_sync",
    "progress_bar",
    "ema",
)
SCHEDULED = {"logging": "log", "checkpoint": "save_checkpoint", "validation": "_validate"}
COMPUTE = ("forward", "backward", "optimizer")
LABELS = {
    "data": "data (read + collate + to device)",
    "forward": "forward",
    "backward": "backward",
    "optimizer": "optimizer (step, schedule, zero_grad)",
    "grad_norm": "grad norm + clipping",
    "loss_sync": "loss gather",
    "progress_bar": "progress bar",
    "ema": "EMA",
    "logging": "log lines (trackers, history)",
    "checkpoint": "checkpoint saves",
    "validation": "validation",
    "other": "other (loop's own Python)",
}


def note(notes: list[str], text: str) -> None:
    notes.append(text)
    print(f"note: {text}", flush=True)


# -- the machine's ceiling ---------------------------------------------------------------


def gemm_ceiling(device: torch.device, sizes=(1024, 2048), repeats: int = 8) -> dict:
    """Best GFLOP/s of an fp32 n x n matrix product for each n; the ceiling is the best."""
    rates = {}
    for n in sizes:
        a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
        a @ b  # warm-up
        best = math.inf
        for _ in range(repeats):
            synchronize(device)
            start = time.perf_counter()
            a @ b
            synchronize(device)
            best = min(best, time.perf_counter() - start)
        rates[str(n)] = 2 * n**3 / best / 1e9
    return {"gflops": rates, "ceiling_gflops": max(rates.values())}


# -- FLOPs ---------------------------------------------------------------------------------


FROZEN_LABELS = {
    "unet": "UNet",  # the denoiser (a transformer for SD 3 and FLUX)
    "text_encoder": "text encoder",
    "text_encoder_2": "second text encoder",
    "vae_tower": "VAE tower",
}


def frozen_parts(objective) -> dict:
    """The frozen modules an objective may run, by key: the teacher's denoiser (stage 1),
    the transformer of each text encoder the caption embeddings feed (``encoder_states``
    calls its layers, not the model), the encoder's VAE tower."""
    parts = {}
    teacher = getattr(objective, "teacher", None)  # stage 1: the whole teacher
    if teacher is not None:
        parts["unet"] = teacher.denoiser
    side = teacher if teacher is not None else getattr(objective, "text_encoder", None)
    if side is not None:
        for key, encoder in zip(
            ("text_encoder", "text_encoder_2"), side.text_encoders(), strict=False
        ):
            parts[key] = getattr(encoder, "text_model", encoder).encoder
    tower = getattr(getattr(objective, "encoder", None), "vae_tower", None)
    if tower is not None:
        parts["vae_tower"] = tower["encoder"]
    return parts


def count_flops(objective, batch, frozen: dict | None = None) -> dict:
    """GFLOP of one training step's forward and backward (``FlopCounterMode``), and the share
    of each ``frozen`` part that the step runs: its forward plus the backward through it,
    counted by replaying its call from this step (its weights are frozen: only its inputs'
    gradients are made). One counter over the whole step would not do: its module tracker
    puts every backward FLOP under the module whose backward hooks fired last (the UNet)."""
    from torch.utils.flop_counter import FlopCounterMode

    calls: dict = {}

    def keep(name, module, args, kwargs):
        calls.setdefault(name, (args, kwargs))

    hooks = [
        module.register_forward_pre_hook(functools.partial(keep, name), with_kwargs=True)
        for name, module in (frozen or {}).items()
    ]
    try:
        with FlopCounterMode(display=False) as forward:
            loss = objective(batch)
        with FlopCounterMode(display=False) as backward:
            loss.backward()
    finally:
        for hook in hooks:
            hook.remove()
    objective.zero_grad(set_to_none=True)
    out = {
        "forward_gflop": forward.get_total_flops() / 1e9,
        "backward_gflop": backward.get_total_flops() / 1e9,
    }
    out["total_gflop"] = out["forward_gflop"] + out["backward_gflop"]
    for name, module in (frozen or {}).items():
        if name not in calls:  # not run by this objective (a tower the cache replaces)
            continue
        args, kwargs = calls[name]
        out[f"{name}_gflop"] = _replay_flops(module, args, kwargs)
        out[f"{name}_share"] = out[f"{name}_gflop"] / out["total_gflop"]
    return out


def _replay_flops(module, args, kwargs) -> float:
    def leaf(x):
        if torch.is_tensor(x) and x.requires_grad:
            return x.detach().requires_grad_()
        return x.detach() if torch.is_tensor(x) else x

    args = tuple(leaf(a) for a in args)
    kwargs = {k: leaf(v) for k, v in kwargs.items()}
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        out = module(*args, **kwargs)
        out = out if torch.is_tensor(out) else out[0]
        if out.requires_grad:
            out.backward(torch.ones_like(out))
    return counter.get_total_flops() / 1e9


# -- the real loop, timed ----------------------------------------------------------------


@dataclass
class Captured:
    """What a stage's node hands to ``train()``."""

    objective: torch.nn.Module
    dataset: object
    params: object  # TrainParams
    kwargs: dict


class _Stop(Exception):
    def __init__(self, captured: Captured):
        super().__init__("train() reached")
        self.captured = captured


def capture_training(module, call) -> Captured:
    """Run ``call`` (a stage's node) until it calls ``module.train``; return its arguments."""

    def stop(objective, dataset, params, **kwargs):
        raise _Stop(Captured(objective, dataset, params, kwargs))

    with mock.patch.object(module, "train", stop):
        try:
            call()
        except _Stop as stopped:
            return stopped.captured
    raise RuntimeError(f"{call} returned without calling train()")


@dataclass
class _Event:
    category: str
    name: str
    start: float
    seconds: float


class LoopProbe:
    """Timers around the calls ``training.loop`` makes, patched in for one ``train()``.

    ``lean``: the loop's logging and grad-norm work taken out (the lever): the grad norm is
    not computed (nothing is clipped), the progress bar does nothing. Outermost calls only
    are timed (a log inside a validation counts as validation)."""

    def __init__(
        self, objective, device, profile_from: int | None = None, lean: bool = False, micro=1
    ):
        self.objective, self.device, self.lean, self.micro = objective, device, lean, micro
        self.events: list[_Event] = []
        self.forward_starts: list[float] = []
        self.profile_from = profile_from
        self.profiler = None
        self.profile_seconds = 0.0
        self._depth = 0
        self._patches: list = []
        self._hooks: list = []

    def _timed(self, category: str, name: str, fn, before=None):
        probe = self

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            if before is not None:
                before()
            if probe._depth:
                return fn(*args, **kwargs)
            probe._depth += 1
            start = time.perf_counter()
            try:
                with torch.profiler.record_function(f"loop: {category}"):
                    return fn(*args, **kwargs)
            finally:
                synchronize(probe.device)
                probe.events.append(_Event(category, name, start, time.perf_counter() - start))
                probe._depth -= 1

        return wrapper

    def _batches(self, original):
        probe = self

        @functools.wraps(original)
        def batches(*args, **kwargs):
            iterator = original(*args, **kwargs)
            while True:
                start = time.perf_counter()
                with torch.profiler.record_function("loop: data"):
                    item = next(iterator)
                probe.events.append(_Event("data", "next", start, time.perf_counter() - start))
                yield item

        return batches

    def _pre_forward(self, module, args):
        if len(self.forward_starts) == self.profile_from:
            activities = [torch.profiler.ProfilerActivity.CPU]
            if torch.device(self.device).type == "cuda":
                activities.append(torch.profiler.ProfilerActivity.CUDA)
            self.profiler = torch.profiler.profile(activities=activities)
            self.profiler.start()
            self._profile_started = time.perf_counter()
        self._depth += 1
        self._forward_started = time.perf_counter()
        self.forward_starts.append(self._forward_started)

    def _post_forward(self, module, args, output):
        synchronize(self.device)
        now = time.perf_counter()
        self.events.append(
            _Event("forward", "forward", self._forward_started, now - self._forward_started)
        )
        self._depth -= 1

    def _stop_profile(self) -> None:
        if self.profiler is not None and self.profile_seconds == 0.0:
            synchronize(self.device)
            self.profile_seconds = time.perf_counter() - self._profile_started
            self.profiled_steps = (len(self.forward_starts) - self.profile_from) // self.micro
            self.profiler.stop()

    def __enter__(self) -> LoopProbe:
        from accelerate import Accelerator
        from accelerate.optimizer import AcceleratedOptimizer
        from accelerate.scheduler import AcceleratedScheduler
        from diffusers.training_utils import EMAModel

        from vlv_pipeline.training import loop

        def nothing(*args, **kwargs):
            return None

        def no_norm(self, parameters, max_norm, norm_type=2):
            return torch.zeros(())

        targets = [
            (Accelerator, "backward", "backward", None),
            (Accelerator, "clip_grad_norm_", "grad_norm", no_norm if self.lean else None),
            (Accelerator, "gather", "loss_sync", None),
            (Accelerator, "log", "logging", None),
            (AcceleratedOptimizer, "step", "optimizer", None),
            (AcceleratedOptimizer, "zero_grad", "optimizer", None),
            (AcceleratedScheduler, "step", "optimizer", None),
            (loop._Window, "entry", "logging", None),
            (loop.tqdm, "set_postfix", "logging", nothing if self.lean else None),
            (loop.tqdm, "update", "progress_bar", nothing if self.lean else None),
            (loop, "_validate", "validation", None),
            (EMAModel, "step", "ema", None),
        ]
        for owner, name, category, replacement in targets:
            fn = replacement or getattr(owner, name)
            self._patch(owner, name, self._timed(category, name, fn))
        save = self._timed(
            "checkpoint", "save_checkpoint", loop.save_checkpoint, before=self._stop_profile
        )
        self._patch(loop, "save_checkpoint", save)
        self._patch(loop, "_batches", self._batches(loop._batches))
        self._hooks = [
            self.objective.register_forward_pre_hook(self._pre_forward),
            self.objective.register_forward_hook(self._post_forward),
        ]
        return self

    def _patch(self, owner, name, value) -> None:
        patch = mock.patch.object(owner, name, value)
        patch.start()
        self._patches.append(patch)

    def __exit__(self, *exc) -> None:
        self._stop_profile()
        for hook in self._hooks:
            hook.remove()
        for patch in reversed(self._patches):
            patch.stop()

    def profile_top(self, rows: int = 6) -> list[dict]:
        """The profiled steps' largest self CPU times (ms per step, share of their wall time)."""
        if self.profiler is None or not self.profile_seconds:
            return []
        steps = max(1, self.profiled_steps)
        averages = sorted(
            self.profiler.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True
        )
        return [
            {
                "name": e.key,
                "ms_per_step": e.self_cpu_time_total / 1e3 / steps,
                "share": e.self_cpu_time_total / 1e6 / self.profile_seconds,
                "calls_per_step": e.count / steps,
            }
            for e in averages[:rows]
        ]


def _rate(steps: int, every: int | None) -> float:
    """Calls per step of something done every ``every`` steps and at the last one."""
    if not every:
        return 0.0
    return (steps // every + (steps % every != 0)) / steps


def time_loop(
    got: Captured, args, device, folder: Path, lean: bool = False, profile: bool = True
) -> dict:
    """The real ``train()`` on the captured objective and training set, timed (see the
    module's docstring); seconds per step projected to the default run's schedule."""
    from vlv_pipeline.training import loop

    params = got.params
    extra = args.profile if profile and args.profile else 1
    total = args.warmup + args.steps + extra
    update = {"steps": total, "warmup_steps": min(params.warmup_steps, total), "resume": False}
    if lean:
        update.update(trackers=[], log_every=total)
    run = params.model_copy(update=update)
    kwargs = {k: v for k, v in got.kwargs.items() if k not in ("checkpoint_dir", "validation")}
    micro = params.gradient_accumulation  # forward calls per optimiser step
    profile_from = (args.warmup + args.steps) * micro if profile and args.profile else None
    probe = LoopProbe(got.objective, device, profile_from, lean, micro)
    started = time.perf_counter()
    with probe:
        loop.train(got.objective, got.dataset, run, checkpoint_dir=folder, **kwargs)
    starts = probe.forward_starts[::micro]  # where each optimiser step starts
    t0, t1 = starts[args.warmup], starts[args.warmup + args.steps]
    in_window = [e for e in probe.events if t0 <= e.start < t1]
    sums: dict[str, float] = defaultdict(float)
    for e in in_window:
        sums[e.category] += e.seconds
    real_steps = params.steps
    validation = got.kwargs.get("validation")
    every = {
        "logging": real_steps if lean else params.log_every,
        "checkpoint": params.checkpoint_every,
        "validation": validation.every if validation is not None else None,
    }
    per_call: dict[str, float | None] = {}
    for category, primary in SCHEDULED.items():
        calls = sum(e.name == primary for e in probe.events)
        spent = sum(e.seconds for e in probe.events if e.category == category)
        per_call[category] = spent / calls if calls else None
    breakdown = {c: sums[c] / args.steps for c in PER_STEP}
    for category in SCHEDULED:
        rate = (
            real_steps // every[category] / real_steps
            if category == "validation" and every[category]
            else _rate(real_steps, every[category])
        )
        breakdown[category] = (per_call[category] or 0.0) * rate
    window = t1 - t0
    breakdown["other"] = (window - sum(sums.values())) / args.steps
    step = sum(breakdown.values())
    return {
        "measured_step_s": window / args.steps,
        "step_s": step,
        "compute_s": sum(breakdown[c] for c in COMPUTE),
        "own_overhead_s": step - sum(breakdown[c] for c in COMPUTE),
        "breakdown": breakdown,
        "per_call_s": per_call,
        "every": every,
        "setup_s": starts[0] - started,
        "profile_top": probe.profile_top(),
    }


# -- data ------------------------------------------------------------------------------


def prewarm(dataset, params) -> dict:
    """Every item read once, in batches, as the first epoch reads them (filling the loop's
    ``BoundedCache``, where every later epoch finds them): seconds per batch, and how many
    items stayed cached. With DataLoader workers each worker keeps its own cache, so the
    timed steps then read cold (noted)."""
    n, size = len(dataset), params.batch_size
    getitems = getattr(dataset, "__getitems__", None) or (lambda ix: [dataset[i] for i in ix])
    start = time.perf_counter()
    for i in range(0, n, size):
        getitems(list(range(i, min(n, i + size))))
    seconds = time.perf_counter() - start
    held = len(getattr(dataset, "_items", ()))
    return {
        "first_epoch_s_per_batch": seconds / max(1, n / size),
        "items": n,
        "items_cached": held,
        "epochs_in_default_run": params.steps * size * params.gradient_accumulation / n,
    }


def held_batches(dataset, params, collate_fn, device, count: int = 4) -> list:
    """A few shuffled batches of the training set, collated as the loop collates, on device."""
    from accelerate.utils import send_to_device
    from torch.utils.data import DataLoader

    loader = DataLoader(
        dataset,
        batch_size=params.batch_size,
        shuffle=True,
        drop_last=True,
        collate_fn=collate_fn,
        generator=torch.Generator().manual_seed(0),
    )
    batches = [send_to_device(b, device) for b, _ in zip(loader, range(count), strict=False)]
    if not batches:
        raise SystemExit(f"the training set ({len(dataset)} items) is smaller than one batch")
    return batches


def _plain(value):
    return value.model_dump(mode="json") if hasattr(value, "model_dump") else value


def _set(raw: dict, dotted: str, value) -> None:
    *path, last = dotted.split(".")
    for key in path:
        if raw.get(key) is None:
            raw[key] = {}
        raw = raw[key]
    raw[last] = value


class Inputs:
    """The default run's parameters and inputs: from the Kedro catalog where `make run` made
    them; otherwise built by the project's nodes into ``tmp``, with a printed note."""

    def __init__(self, catalog, raw_params: dict, args, tmp: Path, notes: list[str]):
        from vlv_pipeline.params.evaluate import EvaluateParams
        from vlv_pipeline.params.stage1 import Stage1Params
        from vlv_pipeline.params.stage2 import Stage2Params
        from vlv_pipeline.params.synthesize import SynthesizeParams
        from vlv_pipeline.params.t2i import T2IParams

        self.catalog, self.raw, self.tmp, self.notes = catalog, raw_params, tmp, notes
        t2i = raw_params["t2i"]  # params:t2i, the T2I model every stage reads
        self.t2i_block = t2i if isinstance(t2i, T2IParams) else T2IParams(**t2i)
        stage1, stage2 = copy.deepcopy(raw_params["stage1"]), copy.deepcopy(raw_params["stage2"])
        evaluate = copy.deepcopy(raw_params["evaluate"])
        if args.batch:
            _set(stage1, "training.batch_size", args.batch)
            _set(stage2, "training.batch_size", args.batch)
            if (stage2.get("baseline") or {}).get("training"):
                _set(stage2, "baseline.training.batch_size", args.batch)
        if args.render_batch:
            _set(evaluate, "sampling.batch_size", args.render_batch)
            evaluate["images"] = max(evaluate.get("images", 2), args.render_batch)
        if args.render_steps:
            _set(evaluate, "sampling.steps", args.render_steps)
        self.stage1 = Stage1Params(**stage1)
        self.stage2 = Stage2Params(**stage2)
        self.evaluate = EvaluateParams(**evaluate)
        self.synthesize = SynthesizeParams(**raw_params["synthesize"])
        self.synthetic = bool(args.synthetic)
        self._cache: dict = {}
        if not self.synthetic:
            try:
                self._from_catalog()
            except Exception as error:  # said, and replaced by a world of our own
                note(
                    notes,
                    f"the default run's data is not usable ({type(error).__name__}: {error}); "
                    "using a small synthetic world instead. For the default run's data, run "
                    "`kedro run --pipelines world,ingest,cache` first",
                )
                self.synthetic = True
        if self.synthetic:
            self._synthetic_world()

    def _from_catalog(self) -> None:
        from vlv_pipeline.pipelines.stage1.nodes import load_stage1_data

        self.raw_images = self.catalog.load("raw_images")
        self.manifest = self.catalog.load("image_manifest")
        self.latent_cache = self.catalog.load("latent_cache")
        self._cache["stage1_data"] = load_stage1_data(
            self.raw_images, self.manifest, self.latent_cache, self.stage1, self.t2i_block
        )
        print(
            f"data: the default run's ({len(self.manifest)} images in the manifest, "
            f"{len(self._cache['stage1_data']['train'])} in train)"
        )

    def _synthetic_world(self) -> None:
        from vlv_pipeline.datasets.image_source import ImageSourceDataset
        from vlv_pipeline.datasets.shard_store import LatentCache
        from vlv_pipeline.imaging.screen_table import screen_images
        from vlv_pipeline.params.cache import CacheParams
        from vlv_pipeline.params.ingest import IngestParams
        from vlv_pipeline.params.world import WorldParams
        from vlv_pipeline.pipelines.cache.nodes import encode_latents
        from vlv_pipeline.pipelines.ingest.nodes import build_manifest
        from vlv_pipeline.world.generate import generate_labels, render_images

        batch = max(self.stage1.training.batch_size, self.stage2.training.batch_size)
        train = 20 * batch  # stage 2's pairs (synthesize.fraction of train) fill a batch or two
        test = max(2, self.evaluate.sampling.batch_size)
        root = self.tmp / "world"
        root.mkdir(parents=True)
        world = WorldParams(
            **{**self.raw["world"], "counts": {"train": train, "val": 0, "test": test}}
        )
        labels = generate_labels(world)
        labels.to_parquet(root / "labels.parquet")
        source = ImageSourceDataset(
            kind="folder",
            path=str(root / "images"),
            captions=str(root / "labels.parquet"),
            writable=True,
        )
        source.save(render_images(labels, world))
        self.raw_images = source.load()
        ingest = IngestParams(**{**self.raw["ingest"], "parts_dir": str(root / "parts")})
        self.manifest = build_manifest(screen_images(self.raw_images, ingest), ingest)
        self.latent_cache = encode_latents(
            self.raw_images,
            self.manifest,
            LatentCache(root / "latent_cache"),
            CacheParams(**self.raw["cache"]),
            self.t2i_block,
        )
        note(
            self.notes,
            f"synthetic world: {train} train and {test} test images of conf/base's world, "
            f"rendered, ingested and cached by the world, ingest and cache nodes in {root}",
        )

    def _once(self, key: str, make):
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]

    def stage1_data(self):
        from vlv_pipeline.pipelines.stage1.nodes import load_stage1_data

        return self._once(
            "stage1_data",
            lambda: load_stage1_data(
                self.raw_images, self.manifest, self.latent_cache, self.stage1, self.t2i_block
            ),
        )

    def _exists(self, name: str) -> bool:
        if self.synthetic:
            return False
        try:
            return bool(self.catalog.exists(name))
        except Exception:  # a dataset that cannot say is not there
            return False

    def caption_pairs(self):
        def make():
            from vlv_pipeline.pipelines.synthesize import nodes as synth

            if self._exists("caption_pairs"):
                pairs = self.catalog.load("caption_pairs")
                if set(pairs["image_id"]) <= set(self.manifest["image_id"]):
                    return pairs
            if self.synthesize.captioner.backend != "manifest":
                raise SystemExit(
                    "stage 2 needs caption pairs: run `kedro run --pipeline synthesize` first "
                    f"(captioner backend {self.synthesize.captioner.backend!r})"
                )
            pairs = synth.synthesize_captions(
                self.raw_images,
                synth.select_images(self.manifest, self.synthesize),
                self.synthesize,
                {},
            )
            note(
                self.notes,
                f"caption pairs: {len(pairs)}, made now by the synthesize nodes (the default "
                "`manifest` captioner), as `make run` makes them",
            )
            return pairs

        return self._once("pairs", make)

    def t2i(self):
        from vlv_pipeline.models.teachers import load_teacher

        return self._once("t2i", lambda: load_teacher(self.t2i_block.model, self.t2i_block.dtype))

    def vlv_encoder(self):
        def make():
            from vlv_pipeline.models.encoders import build_encoder

            if self._exists("vlv_encoder"):
                return self.catalog.load("vlv_encoder").eval()
            t2i = self.t2i()
            torch.manual_seed(self.stage1.training.seed)
            encoder = build_encoder(
                self.stage1.encoder,
                t2i.width,
                t2i.vae,
                t2i.text_encoder.get_input_embeddings().weight,
            )
            note(
                self.notes,
                "stage-1 encoder: none saved yet (data/06_models/vlv_encoder), so a fresh one "
                "of conf/base's architecture with random weights (speed does not depend on "
                "the weights)",
            )
            return encoder.eval()

        return self._once("encoder", make)

    def embedding_cache(self):
        def make():
            from vlv_pipeline.datasets.fingerprints import embedding_fingerprint
            from vlv_pipeline.datasets.shard_store import EmbeddingCache
            from vlv_pipeline.errors import MissingEntryError
            from vlv_pipeline.models.registry import load_component
            from vlv_pipeline.pipelines.synthesize.nodes import cache_pair_embeddings

            encoder, pairs = self.vlv_encoder(), self.caption_pairs()
            if self._exists("embedding_cache"):
                cache = self.catalog.load("embedding_cache")
                text_encoder = load_component(
                    "text_encoder",
                    {"pretrained": self.t2i_block.model, "subfolder": "text_encoder"},
                )
                fingerprint = embedding_fingerprint(encoder, text_encoder, self.stage2.resolution)
                try:
                    if cache.fingerprint == fingerprint:
                        cache.rows(pairs["image_id"].astype(str).tolist())
                        return cache
                except MissingEntryError:
                    pass
            cache = cache_pair_embeddings(
                self.raw_images,
                self.manifest,
                pairs,
                encoder,
                EmbeddingCache(self.tmp / "embedding_cache"),
                self.stage2,
                self.synthesize,
                self.t2i_block,
            )
            note(
                self.notes,
                f"embedding cache: made now by the synthesize node for the {len(pairs)} pairs "
                f"and the stage-1 encoder above, in {self.tmp / 'embedding_cache'}",
            )
            return cache

        return self._once("embedding_cache", make)

    def stage2_data(self):
        from vlv_pipeline.pipelines.stage2.nodes import load_stage2_data

        return self._once(
            "stage2_data",
            lambda: load_stage2_data(
                self.raw_images, self.manifest, self.caption_pairs(), self.stage2
            ),
        )


# -- sections ----------------------------------------------------------------------------


def measure_training(
    title: str,
    got: Captured,
    args,
    device,
    tmp: Path,
    ceiling: float | None,
) -> dict:
    """FLOPs, the bare step and the real loop (today's and lean) of one captured training."""
    from vlv_pipeline.training import optimization

    objective, params = got.objective, got.params
    objective.to(device).train()
    data = prewarm(got.dataset, params)
    batches = held_batches(got.dataset, params, got.kwargs.get("collate_fn"), device)
    flops = count_flops(objective, batches[0], frozen_parts(objective))
    trainable = [p for p in objective.parameters() if p.requires_grad]
    optimizer = optimization.make_optimizer(trainable, params, torch.device(device))
    bare = step_phases(objective, batches, args.steps, args.warmup, optimizer)
    del optimizer
    optimizers = {}  # levers: AdamW's multi-tensor and fused kernels (the loop: fused on CUDA)
    for kind in ("foreach", "fused"):
        try:
            made = torch.optim.AdamW(
                optimization.parameter_groups(trainable, params),
                lr=params.learning_rate,
                betas=params.betas,
                weight_decay=params.weight_decay,
                **{kind: True},
            )
        except (RuntimeError, ValueError) as error:
            optimizers[kind] = {"applicable": False, "reason": str(error)}
            continue
        optimizers[kind] = step_phases(objective, batches, args.steps, args.warmup, made)
    key = title.replace(" ", "_")
    today = time_loop(got, args, device, tmp / f"{key}-loop")
    lean = time_loop(got, args, device, tmp / f"{key}-lean", lean=True, profile=False)
    result = {
        "batch": params.batch_size,
        "default_run_steps": params.steps,
        "flops": flops,
        "bare": bare,
        "bare_optimizers": optimizers,
        "achieved_gflops": flops["total_gflop"] / bare["step"],
        "data": data,
        "loop": today,
        "lean_loop": lean,
    }
    result["loop"]["overhead_s"] = today["step_s"] - bare["step"]
    result["loop"]["overhead_fraction"] = result["loop"]["overhead_s"] / bare["step"]
    if ceiling:
        result["fraction_of_ceiling"] = result["achieved_gflops"] / ceiling
    print_training(title, result, args, params)
    return result


def print_training(title: str, r: dict, args, params) -> None:
    f, bare, lp = r["flops"], r["bare"], r["loop"]
    print(
        f"\n{title}: batch {r['batch']}, {args.steps} timed steps after {args.warmup} warm-up, "
        f"{torch.get_num_threads()} threads"
    )
    frozen = [k for k in FROZEN_LABELS if f"{k}_gflop" in f]
    shares = "".join(
        f"; frozen {FROZEN_LABELS[k]} {f[f'{k}_gflop']:.2f} ({f[f'{k}_share']:.0%})" for k in frozen
    )
    if frozen:
        rest = f["total_gflop"] - sum(f[f"{k}_gflop"] for k in frozen)
        shares += f"; the rest (trainable parts, loss) {rest:.2f} ({rest / f['total_gflop']:.0%})"
    print(
        f"  FLOPs per step: {f['total_gflop']:.2f} GFLOP (forward {f['forward_gflop']:.2f}, "
        f"backward {f['backward_gflop']:.2f}){shares}"
    )
    ceiling = (
        f", {r['fraction_of_ceiling']:.0%} of the GEMM ceiling"
        if "fraction_of_ceiling" in r
        else ""
    )
    print(
        f"  bare step: {bare['step']:.4f} s (forward {bare['forward']:.4f}, backward "
        f"{bare['backward']:.4f}, optimizer {bare['optimizer']:.4f}): "
        f"{r['achieved_gflops']:.1f} GFLOP/s{ceiling}"
    )
    print(
        f"  real loop: {lp['step_s']:.4f} s/step at the default run's rates "
        f"(timed window {lp['measured_step_s']:.4f} s/step); setup before its first step "
        f"{lp['setup_s']:.2f} s once"
    )
    print(
        f"  loop overhead over the bare step: {lp['overhead_s']:+.4f} s/step "
        f"({lp['overhead_fraction']:+.1%}); the loop's own parts (all but forward, backward, "
        f"optimizer): {lp['own_overhead_s']:.4f} s/step ({lp['own_overhead_s'] / bare['step']:.1%})"
    )
    print(f"    {'part':40s} {'s/step':>9s} {'% bare':>7s}")
    for part, seconds in lp["breakdown"].items():
        extra = ""
        if part in SCHEDULED:
            every, call = lp["every"][part], lp["per_call_s"][part]
            if every and call is None:
                extra = f"every {every} steps: not measured here (its run is a long render)"
            elif every:
                extra = f"every {every} steps, {call:.3f} s a call" if call else f"every {every}"
            else:
                extra = "off"
        elif part == "ema" and not seconds:
            extra = "off" if params.ema_decay is None else ""
        elif part == "data":
            d = r["data"]
            extra = (
                f"first epoch (cold) {d['first_epoch_s_per_batch']:.4f} s/batch; "
                f"{d['epochs_in_default_run']:.0f} epochs in the default run"
            )
        print(f"    {LABELS[part]:40s} {seconds:9.4f} {seconds / bare['step']:7.1%}  {extra}")
    if lp["profile_top"]:
        print(f"    torch.profiler, {args.profile} loop steps, largest self CPU time:")
        for row in lp["profile_top"]:
            print(
                f"      {row['name'][:48]:48s} {row['ms_per_step']:8.1f} ms/step "
                f"{row['share']:6.1%}  ({row['calls_per_step']:.0f} calls/step)"
            )


def stage1_section(inputs: Inputs, args, device, tmp: Path, ceiling) -> dict:
    from vlv_pipeline.pipelines.stage1 import nodes

    data = inputs.stage1_data()
    got = capture_training(nodes, lambda: nodes.train_stage1(data, inputs.stage1, inputs.t2i_block))
    return measure_training("stage 1", got, args, device, tmp, ceiling)


def stage2_section(inputs: Inputs, args, device, tmp: Path, ceiling) -> dict:
    from vlv_pipeline.pipelines.stage2 import nodes

    data, encoder, cache = inputs.stage2_data(), inputs.vlv_encoder(), inputs.embedding_cache()
    got = capture_training(
        nodes, lambda: nodes.train_stage2(data, encoder, cache, inputs.stage2, inputs.t2i_block)
    )
    return measure_training("stage 2", got, args, device, tmp, ceiling)


def latent_lever(got: Captured, inputs: Inputs) -> tuple[Captured | None, str, dict]:
    """The baseline read from the latent cache, if that leaves its definition unchanged: the
    encoder's tower is the T2I VAE's encoder, frozen; the cache holds that VAE's posterior
    means at the baseline's resolution for every pair; the embeddings agree on a batch."""
    from vlv_pipeline.datasets.fingerprints import vae_fingerprint
    from vlv_pipeline.errors import MissingEntryError
    from vlv_pipeline.models.registry import load_component
    from vlv_pipeline.training.data import BoundedCache, Zipped
    from vlv_pipeline.world.data import to_unit_range

    objective = got.objective
    encoder = objective.encoder
    if not getattr(encoder, "reads_vae_latents", False):
        return None, "the baseline's encoder has no VAE tower: its input is not a VAE latent", {}
    if any(p.requires_grad for p in encoder.vae_tower.parameters()):
        return None, "the baseline trains its VAE tower, so cached latents would change it", {}
    vae = load_component("vae", {"pretrained": inputs.t2i_block.model, "subfolder": "vae"})
    if inputs.latent_cache.fingerprint != vae_fingerprint(vae, inputs.stage2.resolution):
        return None, "the latent cache was made by another VAE or resolution than the tower's", {}
    pair_ids = inputs.stage2_data().pair_ids
    try:
        rows = inputs.latent_cache.rows(pair_ids, fields=("mean",))
    except MissingEntryError as error:
        return None, f"the latent cache lacks pair images ({error})", {}
    tokens = got.dataset.dataset.parts[1]
    pixels = got.dataset.dataset.parts[0]
    n = min(16, len(pair_ids))
    was_training = encoder.training
    encoder.eval()
    with torch.no_grad():
        device = next(encoder.parameters()).device
        image = torch.stack([to_unit_range(pixels[i]) for i in range(n)]).to(device)
        mean = torch.stack([rows[i][0] for i in range(n)]).to(device)
        from_pixels, from_cache = encoder(image), encoder.from_features(mean)
    encoder.train(was_training)
    scale = from_pixels.abs().max().item()
    diff = (from_pixels - from_cache).abs().max().item()
    check = {"max_abs_diff": diff, "max_abs": scale, "images": n}
    if diff > 1e-4 * max(1.0, scale):
        return None, f"embeddings from the cache differ from the tower's ({diff:.2e})", check
    lever = Captured(
        Stage2Objective(
            objective.decoder, objective.encoder, objective.text_encoder, from_latents=True
        ),
        BoundedCache(Zipped(rows, tokens), got.params.cache_mb * 2**20),
        got.params,
        dict(got.kwargs),
    )
    return lever, "", check


def compiled_encoder(objective, batches, args, optimizer, device) -> dict:
    """The cached-path step with the VLV encoder's ``from_features`` under ``torch.compile``
    (inductor, default mode): the first step's seconds (compiling included) and the steady
    bare step; not applicable where compiling fails (no C++ compiler, an unsupported op)."""
    encoder = objective.encoder
    try:
        encoder.from_features = torch.compile(encoder.from_features)
        start = time.perf_counter()
        objective(batches[0]).backward()
        optimizer.zero_grad(set_to_none=True)
        synchronize(device)
        first = time.perf_counter() - start
        steady = step_phases(objective, batches, args.steps, args.warmup, optimizer)
    except Exception as error:  # said, not raised: a lever that cannot run here
        return {"applicable": False, "reason": f"{type(error).__name__}: {error}"[:300]}
    finally:
        encoder.__dict__.pop("from_features", None)  # back to the class's method
    return {"applicable": True, "first_step_s": first, "step_s": steady["step"]}


def baseline_section(inputs: Inputs, args, device, tmp: Path, ceiling) -> tuple[dict, dict]:
    from vlv_pipeline.pipelines.stage2 import nodes
    from vlv_pipeline.training import optimization

    data = inputs.stage2_data()
    # "today" is the pixel path (no latent cache handed over), the lever the cached means:
    # since issue 28 the default run's node takes the lever whenever the cache fits
    got = capture_training(
        nodes, lambda: nodes.train_baseline(data, inputs.stage2, inputs.stage1, inputs.t2i_block)
    )
    result = measure_training("baseline (without stage 1)", got, args, device, tmp, ceiling)
    lever, reason, check = latent_lever(got, inputs)
    entry: dict = {"applicable": lever is not None, "check": check}
    if lever is None:
        entry["reason"] = reason
        return result, entry
    params = lever.params
    lever.objective.to(device).train()
    prewarm(lever.dataset, params)
    batches = held_batches(lever.dataset, params, lever.kwargs.get("collate_fn"), device)
    trainable = [p for p in lever.objective.parameters() if p.requires_grad]
    optimizer = optimization.make_optimizer(trainable, params, torch.device(device))
    bare_today = step_phases(
        got.objective,
        held_batches(got.dataset, params, got.kwargs.get("collate_fn"), device),
        args.steps,
        args.warmup,
        optimization.make_optimizer(trainable, params, torch.device(device)),
    )
    bare = step_phases(lever.objective, batches, args.steps, args.warmup, optimizer)
    compiled = (
        compiled_encoder(lever.objective, batches, args, optimizer, device)
        if args.compile
        else None
    )
    looped = time_loop(lever, args, device, tmp / "baseline-latents", profile=False)
    entry.update(
        bare_today_s=bare_today["step"],
        bare_s=bare["step"],
        loop_today_s=result["loop"]["step_s"],
        loop_s=looped["step_s"],
        loop=looped,
    )
    if compiled is not None:
        entry["compiled"] = compiled
    return result, entry


def render_section(inputs: Inputs, args, device) -> tuple[dict, dict]:
    """One batch of evaluate's reconstructions from embeddings: ``EvalRenders``' first batch
    (decode the originals, encode them, seed each image's generator, assemble the pipeline,
    sample) against the bare sampler call on conditions held in memory."""
    import pandas as pd

    from vlv_pipeline.models import teacher
    from vlv_pipeline.models.teachers import Teacher, load_teacher
    from vlv_pipeline.pipelines.evaluate import nodes as ev
    from vlv_pipeline.pipelines.evaluate import renders as ev_renders

    params, s = inputs.evaluate, inputs.evaluate.sampling
    data = ev.load_eval_data(inputs.raw_images, inputs.manifest, params)
    encoder = inputs.vlv_encoder()
    spent: dict[str, float] = defaultdict(float)

    def timed(name, fn):
        @functools.wraps(fn)
        def wrapper(*a, **k):
            start = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                synchronize(device)
                spent[name] += time.perf_counter() - start

        return wrapper

    def hooks_on(t2i) -> list:
        def pre(module, args):
            module._bench_started = time.perf_counter()

        def post(name):
            def hook(module, args, out):
                synchronize(device)
                spent[name] += time.perf_counter() - module._bench_started

            return hook

        return [
            t2i.unet.register_forward_pre_hook(pre),
            t2i.unet.register_forward_hook(post("UNet")),
            t2i.vae.decoder.register_forward_pre_hook(pre),
            t2i.vae.decoder.register_forward_hook(post("VAE decode")),
        ]

    t2i = load_teacher(inputs.t2i_block.model, params.t2i_dtype, device)
    n = min(s.batch_size, len(data.image_ids))
    originals = data.images(0, n)
    conditions = t2i.condition_images(encoder, originals, s.batch_size)
    pipeline = t2i.pipeline()

    def sample(scheduler: str, steps: int, images: int = n) -> float:
        synchronize(device)
        start = time.perf_counter()
        teacher.render(
            pipeline,
            conditions=conditions[:images],
            steps=steps,
            guidance=s.guidance,
            batch_size=s.batch_size,
            scheduler=scheduler,
            generator=ev_renders.image_generators(s.seed, range(images)),
        )
        synchronize(device)
        return time.perf_counter() - start

    sample(s.scheduler, 2, min(2, n))  # warm-up; also swaps the pipeline's scheduler in
    hooks = hooks_on(t2i)
    bare = sample(s.scheduler, s.steps)
    for hook in hooks:
        hook.remove()
    bare_parts = dict(spent)
    spent.clear()

    # the real path: EvalRenders' first batch, with timers around what it calls
    hooks = []
    load = timed("load", load_teacher)

    def load_and_hook(*a, **k):
        made = load(*a, **k)
        hooks.extend(hooks_on(made))
        return made

    patches = [
        mock.patch.object(ev_renders, "load_teacher", load_and_hook),
        mock.patch.object(ev.EvalData, "images", timed("decode originals", ev.EvalData.images)),
        mock.patch.object(
            Teacher,
            "condition_images",
            timed("encode (VLV encoder, text encoder)", Teacher.condition_images),
        ),
        mock.patch.object(
            ev_renders, "image_generators", timed("seed generators", ev_renders.image_generators)
        ),
        mock.patch.object(
            teacher,
            "assemble_pipeline",
            timed("assemble pipeline", teacher.assemble_pipeline),
        ),
        mock.patch.object(teacher, "_scheduler", timed("swap scheduler", teacher._scheduler)),
        mock.patch.object(Teacher, "render", timed("render", Teacher.render)),
    ]
    for patch in patches:
        patch.start()
    try:
        renders = iter(
            ev_renders.EvalRenders(encoder, data, pd.DataFrame(), params, inputs.t2i_block)
        )
        start = time.perf_counter()
        next(renders)
        full = time.perf_counter() - start
        renders.close()
    finally:
        for patch in reversed(patches):
            patch.stop()
        for hook in hooks:
            hook.remove()
    load_s = spent.pop("load", 0.0)
    per_batch = full - load_s
    inside = spent.pop("render", 0.0)
    unet, vae = spent.pop("UNet", 0.0), spent.pop("VAE decode", 0.0)
    breakdown = dict(spent)
    breakdown["UNet"], breakdown["VAE decode"] = unet, vae
    nested = spent.get("assemble pipeline", 0.0) + spent.get("swap scheduler", 0.0)
    breakdown["sampler steps, pipeline call (rest)"] = inside - unet - vae - nested
    breakdown["other"] = per_batch - sum(breakdown.values())
    result = {
        "batch": n,
        "steps": s.steps,
        "scheduler": s.scheduler,
        "bare_s": bare,
        "bare_parts_s": bare_parts,
        "batch_s": per_batch,
        "overhead_s": per_batch - bare,
        "overhead_fraction": (per_batch - bare) / bare,
        "load_t2i_s": load_s,
        "breakdown": breakdown,
    }
    print(
        f"\nrender: one evaluate batch of {n} images, {s.scheduler} {s.steps} steps, "
        f"guidance {s.guidance}"
    )
    print(
        f"  bare sampler call: {bare:.3f} s (UNet {bare_parts.get('UNet', 0.0):.3f}, "
        f"VAE decode {bare_parts.get('VAE decode', 0.0):.3f})"
    )
    print(
        f"  EvalRenders' batch: {per_batch:.3f} s; overhead over the bare call "
        f"{per_batch - bare:+.3f} s ({(per_batch - bare) / bare:+.1%}); loading the T2I: "
        f"{load_s:.2f} s once per evaluate run"
    )
    print(f"    {'part':40s} {'s':>8s} {'% bare':>7s}")
    for part, seconds in breakdown.items():
        print(f"    {part:40s} {seconds:8.3f} {seconds / bare:7.1%}")
    lever_name, lever_steps = "DPMSolverMultistepScheduler", max(1, round(s.steps * 0.4))
    lever = {
        "applicable": True,
        "today_s": bare,
        "lever_s": sample(lever_name, lever_steps),
        "scheduler": lever_name,
        "steps": lever_steps,
        "note": "speed only: whether quality holds is issue 28, part 2",
    }
    if n >= 2:  # the same images in calls of half the batch: is the batch too large for the CPU?
        half = max(1, s.batch_size // 2)
        start = time.perf_counter()
        teacher.render(
            pipeline,
            conditions=conditions,
            steps=s.steps,
            guidance=s.guidance,
            batch_size=half,
            scheduler=s.scheduler,
            generator=ev_renders.image_generators(s.seed, range(n)),
        )
        synchronize(device)
        lever["half_batch"] = {"batch": half, "lever_s": time.perf_counter() - start}
    return result, lever


# -- main ------------------------------------------------------------------------------


def _ratio_line(name: str, today: float, lever: float, what: str = "s", extra: str = "") -> dict:
    ratio = lever / today
    print(
        f"  {name:58s} {today:8.4f} -> {lever:8.4f} {what}  {ratio:5.2f}x the time "
        f"({today / lever:.2f}x as fast){extra}"
    )
    return {"today_s": today, "lever_s": lever, "ratio": ratio}


def print_levers(results: dict) -> dict:
    print("\nlevers (ratio = the lever's time over today's, same run; below 1 is faster)")
    levers: dict = {}
    for key, title in (("stage1", "stage 1"), ("stage2", "stage 2"), ("baseline", "baseline")):
        if key in results:
            r = results[key]
            levers[f"{key}_lean_loop"] = _ratio_line(
                f"{title}: loop without log lines, grad norm, progress bar",
                r["loop"]["step_s"],
                r["lean_loop"]["step_s"],
                "s/step",
            )
            levers[f"{key}_lean_loop"]["note"] = (
                "upper bound: trackers off and one log line (config), the grad norm not "
                "computed so nothing clipped and no progress bar (bench patches)"
            )
    for key, title in (("stage1", "stage 1"), ("stage2", "stage 2"), ("baseline", "baseline")):
        if key not in results:
            continue
        today = results[key]["bare"]
        for kind, lever in results[key]["bare_optimizers"].items():
            name = f"{title}: AdamW {kind}, bare step"
            if "step" not in lever:
                print(f"  {name}: not applicable: {lever['reason']}")
                levers[f"{key}_adamw_{kind}"] = lever
                continue
            levers[f"{key}_adamw_{kind}"] = _ratio_line(
                name,
                today["step"],
                lever["step"],
                "s/step",
                f"  (optimizer {today['optimizer']:.4f} -> {lever['optimizer']:.4f} s)",
            )
    entry = results.get("baseline_latents")
    if entry is not None:
        if entry["applicable"]:
            bare = _ratio_line(
                "baseline: encoder input from the latent cache, bare step",
                entry["bare_today_s"],
                entry["bare_s"],
                "s/step",
            )
            loop = _ratio_line(
                "baseline: encoder input from the latent cache, real loop",
                entry["loop_today_s"],
                entry["loop_s"],
                "s/step",
                f"  (embeddings agree to {entry['check']['max_abs_diff']:.1e})",
            )
            levers["baseline_latent_cache"] = {"applicable": True, "bare": bare, "loop": loop}
            compiled = entry.get("compiled") or {}
            name = "baseline: its encoder under torch.compile, cached path, bare step"
            if compiled.get("applicable"):
                levers["baseline_compiled_encoder"] = {
                    **compiled,
                    **_ratio_line(
                        name,
                        entry["bare_s"],
                        compiled["step_s"],
                        "s/step",
                        f"  (first step {compiled['first_step_s']:.1f} s, compiling)",
                    ),
                }
            elif compiled:
                print(f"  {name}: not applicable: {compiled['reason']}")
                levers["baseline_compiled_encoder"] = compiled
        else:
            print(
                f"  baseline: encoder input from the latent cache: not applicable: {entry['reason']}"
            )
            levers["baseline_latent_cache"] = {"applicable": False, "reason": entry["reason"]}
    entry = results.get("render_lever")
    if entry is not None:
        levers["render_sampler"] = {
            **entry,
            **_ratio_line(
                f"render: {entry['scheduler']} {entry['steps']} steps, bare call",
                entry["today_s"],
                entry["lever_s"],
                "s",
                f"  ({entry['note']})",
            ),
        }
        if "half_batch" in entry:
            half = entry["half_batch"]
            levers["render_half_batch"] = {
                **half,
                **_ratio_line(
                    f"render: today's sampler in calls of {half['batch']} images, bare",
                    entry["today_s"],
                    half["lever_s"],
                ),
            }
    return levers


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20, help="timed steps per measurement")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps before them")
    parser.add_argument("--only", nargs="+", choices=SECTIONS, help="sections to run")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument(
        "--profile", type=int, default=2, help="loop steps under torch.profiler (0: none)"
    )
    parser.add_argument("--batch", type=int, help="training batch size (default: the config's)")
    parser.add_argument("--render-batch", type=int, help="render batch (default: the config's)")
    parser.add_argument("--render-steps", type=int, help="sampler steps (default: the config's)")
    parser.add_argument(
        "--synthetic", action="store_true", help="a small synthetic world even if data/ exists"
    )
    parser.add_argument("--env", default=None, help="Kedro environment (default: as `kedro run`)")
    parser.add_argument(
        "--compile",
        action="store_true",
        help="also time the baseline with its encoder under torch.compile (compiling takes "
        "tens of seconds)",
    )
    args = parser.parse_args(argv)
    if args.steps < 1 or args.warmup < 0:
        parser.error("--steps must be >= 1 and --warmup >= 0")
    sections = set(args.only or SECTIONS)
    if "stage1" in sections:
        sections.add("gemm")  # the step's share of the ceiling needs the ceiling

    os.environ.setdefault("KEDRO_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    warnings.filterwarnings("ignore", message=".*enable_nested_tensor.*")
    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project

    started = time.perf_counter()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    results: dict = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "device": str(device),
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "processor": platform.processor() or platform.machine(),
        },
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "notes": [],
    }
    print(
        f"bench_step: {device}, {torch.get_num_threads()} threads, torch {torch.__version__}; "
        f"sections {', '.join(s for s in SECTIONS if s in sections)}"
    )
    ceiling = None
    if "gemm" in sections:
        results["gemm"] = gemm = gemm_ceiling(device)
        ceiling = gemm["ceiling_gflops"]
        rates = ", ".join(f"{n}: {g:.1f}" for n, g in gemm["gflops"].items())
        print(f"\ngemm: fp32 GFLOP/s {rates}; ceiling {ceiling:.1f} GFLOP/s")
    work = sections - {"gemm"}
    if work:
        bootstrap_project(ROOT)
        os.chdir(ROOT)  # relative paths in conf are relative to the project root
        with (
            KedroSession.create(project_path=ROOT, env=args.env) as session,
            tempfile.TemporaryDirectory(prefix="bench_step-") as tmp,
        ):
            for name in ("kedro", "vlv_pipeline", "accelerate", "diffusers", "transformers"):
                logging.getLogger(name).setLevel(logging.WARNING)
            context = session.load_context()
            names = (
                "world",
                "ingest",
                "t2i",
                "cache",
                "stage1",
                "stage2",
                "synthesize",
                "evaluate",
            )
            raw = {n: _plain(context.params[n]) for n in names}
            inputs = Inputs(context.catalog, raw, args, Path(tmp), results["notes"])
            results["settings"]["synthetic"] = inputs.synthetic
            run_sections(sections, inputs, args, device, Path(tmp), ceiling, results)
    if any(k in results for k in ("stage1", "stage2", "baseline", "render_lever")):
        results["levers"] = print_levers(results)
    results.pop("baseline_latents", None)
    results.pop("render_lever", None)
    results["seconds"] = time.perf_counter() - started
    print(f"\nbench_step: {results['seconds']:.0f} s in all")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2, default=float))
        print(f"results written to {args.json}")
    return results


def run_sections(sections, inputs, args, device, tmp: Path, ceiling, results: dict) -> None:
    if "stage1" in sections:
        results["stage1"] = stage1_section(inputs, args, device, tmp, ceiling)
    if "stage2" in sections:
        results["stage2"] = stage2_section(inputs, args, device, tmp, ceiling)
    if "baseline" in sections:
        results["baseline"], results["baseline_latents"] = baseline_section(
            inputs, args, device, tmp, ceiling
        )
    if "render" in sections:
        results["render"], results["render_lever"] = render_section(inputs, args, device)


if __name__ == "__main__":
    main()
