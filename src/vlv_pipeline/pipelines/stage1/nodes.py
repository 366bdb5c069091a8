"""Nodes of the `stage1` pipeline: VLV encoder distillation against the frozen T2I decoder."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import pandas as pd
import torch
from torch.utils.data import Dataset

from vlv_pipeline.datasets.fingerprints import vae_fingerprint
from vlv_pipeline.datasets.shard_reader import CacheRows
from vlv_pipeline.datasets.shard_store import LatentCache
from vlv_pipeline.errors import InputError, ParameterError
from vlv_pipeline.metrics.plots import image_grid, loss_curves
from vlv_pipeline.metrics.scenes import scene_agreement
from vlv_pipeline.models.device import inference_device
from vlv_pipeline.models.encoders import build_encoder
from vlv_pipeline.models.model_card import card_or_none, encoder_card
from vlv_pipeline.models.model_card_evaluation import stage1_evaluation
from vlv_pipeline.models.model_card_parts import describe_source
from vlv_pipeline.models.provenance import encoder_record
from vlv_pipeline.models.registry import load_component
from vlv_pipeline.models.stage1 import Stage1Objective
from vlv_pipeline.models.teachers import Teacher, load_teacher
from vlv_pipeline.params.stage1 import Stage1Params
from vlv_pipeline.params.t2i import T2IParams
from vlv_pipeline.training.data import BoundedCache, ImagePixels, Zipped
from vlv_pipeline.training.loop import Validation, train
from vlv_pipeline.training.run_folders import run_directory
from vlv_pipeline.world.data import tensor_to_uint8, to_unit_range

logger = logging.getLogger(__name__)


@dataclass
class Stage1Split:
    """One split by reference: ids and captions in memory, pixels and latents read per item.

    ``pixels[i]`` is image ``i`` decoded from its source as uint8; ``latents[i]`` its cached
    posterior (mean, std). Nothing per image is held but the ids, captions and an index.
    """

    image_ids: list[str]
    captions: list[str | None]
    pixels: ImagePixels
    latents: CacheRows

    def __len__(self) -> int:
        return len(self.image_ids)

    def training_set(self, with_pixels: bool, cache_bytes: int) -> Dataset:
        """Items ``(pixels or an empty tensor, mean, std)``; decoded items kept up to
        ``cache_bytes`` per reading process."""
        return BoundedCache(Zipped(self.pixels if with_pixels else None, self.latents), cache_bytes)

    def images(self, n: int | None = None) -> torch.Tensor:
        """The first ``n`` images (all if None) in [-1, 1], for validation and grids."""
        n = len(self) if n is None else min(n, len(self))
        return torch.stack([to_unit_range(self.pixels[i]) for i in range(n)])

    def posteriors(self, n: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The first ``n`` cached posteriors as (mean, std)."""
        n = len(self) if n is None else min(n, len(self))
        rows = [self.latents[i] for i in range(n)]
        return torch.stack([m for m, _ in rows]), torch.stack([s for _, s in rows])


def split_references(
    raw_images, image_manifest: pd.DataFrame, latent_cache: LatentCache, resolution: int | None
) -> dict[str, Stage1Split]:
    """Every split of the manifest, in image_id order, as per-item readers."""
    splits = {}
    for split, rows in image_manifest.sort_values("image_id").groupby("split"):
        ids = rows["image_id"].astype(str).tolist()
        splits[str(split)] = Stage1Split(
            ids,
            [None if pd.isna(c) else str(c) for c in rows["caption"]],
            ImagePixels.of_manifest(raw_images, rows, resolution),
            latent_cache.rows(ids),
        )
    return splits


def check_cache_made_by(latent_cache: LatentCache, t2i: str, resolution: int | None) -> None:
    """The latent cache must hold latents of this T2I model's VAE at this resolution."""
    vae = load_component("vae", {"pretrained": t2i, "subfolder": "vae", "dtype": "float32"})
    expected = vae_fingerprint(vae, resolution)
    if latent_cache.fingerprint != expected:
        raise InputError(
            f"latent cache {latent_cache.path} was not made by the VAE of {t2i} at resolution "
            f"{resolution} (cache: {latent_cache.fingerprint}); leave cache.vae null (the T2I "
            "model's VAE), set cache.resolution to this size, then run `kedro run --pipeline cache`"
        )


def load_stage1_data(
    raw_images,
    image_manifest: pd.DataFrame,
    latent_cache: LatentCache,
    params: Stage1Params,
    t2i: T2IParams,
) -> dict[str, Stage1Split]:
    check_cache_made_by(latent_cache, t2i.model, params.resolution)
    data = split_references(raw_images, image_manifest, latent_cache, params.resolution)
    if "train" not in data:
        raise InputError(f"stage 1 needs a train split; the manifest has {sorted(data)}")
    return data


def train_stage1(data: dict[str, Stage1Split], params: Stage1Params, t2i: T2IParams):
    """Train the VLV encoder on the train split's images; the T2I model stays frozen."""
    teacher = load_teacher(t2i.model, t2i.dtype)
    torch.manual_seed(params.training.seed)
    encoder = build_encoder(params.encoder, teacher.width, teacher.vae, teacher.token_embeddings)
    objective = Stage1Objective(
        encoder,
        teacher,
        params.timestep_range,
        params.noise_draws,
        params.diversity_weight,
        # the VAE tower's output is the cached posterior mean (same VAE: load_stage1_data)
        features_from_cache=getattr(encoder, "reads_vae_latents", False),
        stratified_timesteps=params.timestep_sampling == "stratified",
    )
    result = train(
        objective,
        # an encoder on the VAE tower reads the cached latents, not the pixels
        data["train"].training_set(
            with_pixels=not objective.features_from_cache,
            cache_bytes=params.training.cache_mb * 2**20,
        ),
        params.training,
        checkpoint_dir=run_directory(
            params.checkpoint_dir,
            "stage1",
            # everything that shapes the training run (not where or how it is validated);
            # the T2I under the keys stage1 once had, so a run's folder stays the same
            {
                "t2i": t2i.model,
                "t2i_dtype": t2i.dtype,
                **params.model_dump(mode="json", exclude={"validation", "checkpoint_dir"}),
            },
        ),
        desc="stage 1",
        validation=_during_training(encoder, data, params, t2i, teacher),
    )
    if result.ema is not None:
        result.ema.copy_to([p for p in encoder.parameters() if p.requires_grad])
    encoder.eval()
    # what it was trained for, saved with it (provenance.json): loaders refuse it elsewhere
    encoder.provenance = encoder_record(encoder, t2i=t2i.model, resolution=params.resolution)
    trainable = sum(p.numel() for p in encoder.parameters() if p.requires_grad)
    log = {
        "history": result.history,
        "seconds": result.seconds,
        "steps": params.training.steps,
        "seed": params.training.seed,
        "trainable_parameters": trainable,
    }
    # its README.md, saved with it (models/model_card.py); validation fills in its numbers
    images = data["train"]
    encoder.model_card = card_or_none(
        encoder_card,
        encoder,
        params,
        log,
        {"images": len(images), "source": describe_source(images.pixels)},
        t2i.model,
    )
    return encoder, log


def validation_split(data: dict[str, Stage1Split], name: str | None) -> Stage1Split:
    """The split that validation reconstructs (``None``: first non-empty of test, val, train)."""
    if name is None:
        return next(data[n] for n in ("test", "val", "train") if len(data.get(n, ())))
    if not len(data.get(name, ())):
        raise ParameterError(
            f"stage1.validation.split is {name!r} but the manifest has no such images "
            f"(splits: {sorted(k for k in data if len(data[k]))}); set it to one of those or null"
        )
    return data[name]


@torch.no_grad()
def validate_stage1(
    encoder,
    data: dict[str, Stage1Split],
    params: Stage1Params,
    t2i: T2IParams,
    teacher: Teacher | None = None,
):
    """Reconstruct test images from their caption embeddings; judge them with the probe.
    ``teacher``: the frozen T2I model already in memory (validation while training reuses
    the training's), else loaded from ``t2i``."""
    from vlv_pipeline.models.probe import AttributeProbe, caption_targets

    cfg = params.validation
    split = validation_split(data, cfg.split)
    pixels, captions = split.images(cfg.images), split.captions[: cfg.images]
    if teacher is None:
        teacher = load_teacher(t2i.model, t2i.dtype, inference_device())
    s = cfg.sampling
    conditions = teacher.condition_images(encoder, pixels, s.batch_size)
    renders = teacher.render(conditions, **s.model_dump())  # SamplingParams' fields are render's
    metrics: dict = {
        "split": cfg.split,
        "images": len(pixels),
        "sampling": {**s.model_dump(), "scheduler": teacher.sampler_used(s.scheduler)},
        "num_queries": params.encoder.num_queries,
    }
    if cfg.probe:
        probe = AttributeProbe.from_pretrained(cfg.probe).eval()
        metrics["reconstruction"] = scene_agreement(
            probe.predict(renders), caption_targets(captions, probe)
        )
        logger.info(
            "stage 1: reconstructions from embeddings, exact scene %.4f, attributes %.4f",
            metrics["reconstruction"]["exact_scene"],
            metrics["reconstruction"]["attributes"],
        )
    n = min(cfg.grid_images, len(pixels))
    grid = image_grid(
        {
            "original": tensor_to_uint8(pixels[:n]),
            "from embeddings": tensor_to_uint8(renders[:n]),
        },
        captions=[c or "" for c in captions[:n]],
        title="stage 1: reconstruction from caption embeddings",
    )
    return metrics, grid


def card_stage1(metrics: dict) -> dict:
    """The encoder card's evaluation, from ``validate_stage1``'s metrics: written into the
    card of the encoder this run saved (``vlv_encoder_card``: ``datasets/model_card.py``)."""
    return stage1_evaluation(metrics)


def _during_training(
    encoder, data: dict[str, Stage1Split], params: Stage1Params, t2i: T2IParams, teacher: Teacher
):
    """``validation.every``: the validation metric and grid, logged while training, with the
    teacher the training holds (not loaded again from disk each time)."""
    if params.validation.every is None:
        return None

    def run(step: int) -> tuple[dict, dict]:
        encoder.eval()
        metrics, grid = validate_stage1(encoder, data, params, t2i, teacher)
        return metrics.get("reconstruction", {}), {"reconstructions": grid}

    return Validation(params.validation.every, run)


def plot_stage1_loss(log: dict):
    return loss_curves({"stage 1": log["history"]}, title="stage 1 loss")
