"""Nodes of the `teacher` pipeline: the shapes world's miniature Stable Diffusion + probe."""

from __future__ import annotations

import logging

import pandas as pd
import torch
from torch.utils.data import TensorDataset

from vlv_pipeline.errors import InputError
from vlv_pipeline.metrics.plots import captioned_grid, loss_curves
from vlv_pipeline.metrics.scenes import scene_agreement
from vlv_pipeline.models.probe import AttributeProbe, ProbeObjective
from vlv_pipeline.models.registry import load_component
from vlv_pipeline.models.teacher import (
    FlowTextToImageObjective,
    TextToImageObjective,
    VAEObjective,
    assemble_pipeline,
    assemble_sd3_pipeline,
    encode_posteriors,
)
from vlv_pipeline.models.teachers import family_named
from vlv_pipeline.params.teacher import FlowTeacherParams, TeacherParams
from vlv_pipeline.params.world import WorldParams
from vlv_pipeline.training.loop import train
from vlv_pipeline.training.run_folders import run_directory
from vlv_pipeline.world.data import (
    SplitTensors,
    load_world_tensors,
    pil_to_tensor,
    scene_targets,
    tensor_to_uint8,
)
from vlv_pipeline.world.generate import generate_labels, render_images

logger = logging.getLogger(__name__)


def load_world_splits(
    raw_images, image_manifest: pd.DataFrame, world_labels: pd.DataFrame, world: WorldParams
) -> dict[str, SplitTensors]:
    """The ingested shapes world as tensors per split (images, captions, targets)."""
    splits = load_world_tensors(
        raw_images,
        image_manifest,
        world_labels,
        world.shapes,
        list(world.colours),
        list(world.sizes),
    )
    if "train" not in splits or "test" not in splits:
        raise InputError(
            f"the teacher needs train and test images; the manifest has {sorted(splits)}"
        )
    return splits


def _probe_training_set(train_split: SplitTensors, extra: int, world: WorldParams):
    """The train split plus ``extra`` fresh scenes from the world's generator (another seed).

    The probe is a judge trained on ground truth, not a VLV model: unlimited labelled
    scenes keep it from overfitting the train split's few thousand images.
    """
    if extra == 0:
        return train_split.images, train_split.targets
    fresh = WorldParams(
        **{
            **world.model_dump(),
            "seed": world.seed + 1_000_003,
            "counts": {"train": extra, "val": 0, "test": 0},
        }
    )
    labels = generate_labels(fresh)
    renders = render_images(labels, fresh)
    images = torch.stack([pil_to_tensor(renders[f]()) for f in labels["file"]])
    targets = torch.stack(
        [
            scene_targets(o, world.shapes, list(world.colours), list(world.sizes))
            for o in labels["objects"]
        ]
    )
    return torch.cat([train_split.images, images]), torch.cat([train_split.targets, targets])


def train_probe(splits: dict[str, SplitTensors], params: TeacherParams, world: WorldParams):
    """Train the attribute probe on real train renders; report its accuracy on test."""
    cfg = params.probe
    torch.manual_seed(cfg.training.seed)
    probe = AttributeProbe(
        shapes=tuple(world.shapes),
        colours=tuple(world.colours),
        sizes=tuple(world.sizes),
        image_size=world.image_size,
        width=cfg.width,
        hidden=cfg.hidden,
    )
    images, targets = _probe_training_set(splits["train"], cfg.extra_scenes, world)
    result = train(
        ProbeObjective(probe, cfg.noise_std),
        TensorDataset(images, targets),
        cfg.training,
        checkpoint_dir=run_directory(params.checkpoint_dir, "probe", cfg, world),
        desc="probe",
    )
    probe.eval()
    test = splits["test"]
    scores = scene_agreement(probe.predict(test.images), test.targets)
    logger.info("probe on real test renders: exact scene %.4f", scores["exact_scene"])
    return probe, {"test_real": scores, "history": result.history, "seconds": result.seconds}


def train_vae(splits: dict[str, SplitTensors], params: TeacherParams):
    """Train the AutoencoderKL on train images; set its scaling factor to 1 / latent std."""
    torch.manual_seed(params.vae_training.seed)
    vae = load_component("vae", params.vae.model_dump())
    result = train(
        VAEObjective(vae, params.kl_weight),
        TensorDataset(splits["train"].images),
        params.vae_training,
        checkpoint_dir=run_directory(
            params.checkpoint_dir, "vae", params.vae, params.vae_training, params.kl_weight
        ),
        desc="vae",
    )
    vae.eval()
    mean, _ = encode_posteriors(vae, splits["train"].images[:1024])
    scaling = float(1.0 / mean.std())
    vae.register_to_config(scaling_factor=scaling)
    logger.info("vae: latent std %.4f -> scaling_factor %.4f", mean.std().item(), scaling)
    return vae, {"history": result.history, "seconds": result.seconds}


def train_text_to_image(splits: dict[str, SplitTensors], vae, tokenizer, params: TeacherParams):
    """Train text encoder + UNet on cached VAE posteriors; returns the SD pipeline (EMA weights)."""
    text_config = _text_encoder_config(params.text_encoder.init, tokenizer)
    torch.manual_seed(params.unet_training.seed)
    text_encoder = load_component("text_encoder", {"init": text_config})
    unet = load_component("unet", params.unet.model_dump())
    scheduler = load_component("scheduler", params.scheduler.model_dump())
    vae.requires_grad_(False)
    train_set = splits["train"]
    mean, std = encode_posteriors(vae, train_set.images)
    ids = _token_ids(tokenizer, train_set.captions)
    empty = _token_ids(tokenizer, [""])[0]
    objective = TextToImageObjective(
        unet, text_encoder, scheduler, empty, vae.config.scaling_factor, params.caption_dropout
    )
    result = train(
        objective,
        TensorDataset(mean, std, ids),
        params.unet_training,
        checkpoint_dir=run_directory(
            params.checkpoint_dir,
            "unet",
            params.unet,
            params.text_encoder,
            params.scheduler,
            params.unet_training,
            params.caption_dropout,
            # the latents' identity: the VAE's own setup
            params.vae,
            params.vae_training,
            params.kl_weight,
        ),
        desc="text-to-image",
    )
    if result.ema is not None:
        result.ema.copy_to([p for p in objective.parameters() if p.requires_grad])
    unet.eval()
    text_encoder.eval()
    pipeline = assemble_pipeline(vae, text_encoder, tokenizer, unet, scheduler)
    return pipeline, {"history": result.history, "seconds": result.seconds}


def _text_encoder_config(init: dict, tokenizer) -> dict:
    """A text encoder's config with the world tokenizer's vocabulary and special ids."""
    return {
        **init,
        "vocab_size": len(tokenizer),
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
    }


def _token_ids(tokenizer, captions: list[str]) -> torch.Tensor:
    return tokenizer(
        captions,
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids


def train_flow_text_to_image(
    splits: dict[str, SplitTensors], vae, tokenizer, params: FlowTeacherParams
):
    """Train two CLIPs + an MMDiT with flow matching on the shared VAE's cached posteriors;
    returns a ``StableDiffusion3Pipeline`` without T5 (EMA weights)."""
    torch.manual_seed(params.training.seed)
    config = {"init": _text_encoder_config(params.text_encoder.init, tokenizer)}
    text_encoder = load_component("text_encoder_with_projection", config)
    text_encoder_2 = load_component("text_encoder_with_projection", config)
    transformer = load_component("sd3_transformer", params.transformer.model_dump())
    scheduler = load_component("scheduler", params.scheduler.model_dump())
    vae = vae.float().requires_grad_(False).eval()
    if getattr(vae.config, "shift_factor", None) is None:
        vae.register_to_config(shift_factor=0.0)  # SD 3's pipeline adds it when decoding
    train_set = splits["train"]
    mean, std = encode_posteriors(vae, train_set.images)
    objective = FlowTextToImageObjective(
        transformer,
        text_encoder,
        text_encoder_2,
        scheduler,
        _token_ids(tokenizer, [""])[0],
        vae.config.scaling_factor,
        vae.config.shift_factor,
        params.caption_dropout,
    )
    result = train(
        objective,
        TensorDataset(mean, std, _token_ids(tokenizer, train_set.captions)),
        params.training,
        checkpoint_dir=run_directory(
            params.checkpoint_dir,
            "flow",
            params.text_encoder,
            params.transformer,
            params.scheduler,
            params.training,
            params.caption_dropout,
            vae.config.scaling_factor,  # the latents' identity: the shared VAE
        ),
        desc="flow text-to-image",
    )
    if result.ema is not None:
        result.ema.copy_to([p for p in objective.parameters() if p.requires_grad])
    for part in (transformer, text_encoder, text_encoder_2):
        part.eval()
    pipeline = assemble_sd3_pipeline(
        vae, text_encoder, text_encoder_2, tokenizer, transformer, scheduler
    )
    return pipeline, {"history": result.history, "seconds": result.seconds}


def evaluate_teacher(
    pipeline, probe: AttributeProbe, splits: dict[str, SplitTensors], params: TeacherParams
):
    """Render test captions with the family's own sampler path and judge them with the probe;
    also a captioned sample grid."""
    test = splits["test"].head(params.eval_images)
    sampling = params.evaluation
    teacher = family_named(type(pipeline).__name__).from_pipeline(pipeline, "the trained teacher")
    renders = teacher.render_captions(
        test.captions,
        steps=sampling.steps,
        guidance=sampling.guidance,
        seed=sampling.seed,
        batch_size=sampling.batch_size,
        scheduler=sampling.scheduler,
    )
    scores = scene_agreement(probe.predict(renders), test.targets)
    with torch.no_grad():
        vae = pipeline.vae
        reconstructions = vae.decode(vae.encode(test.images).latent_dist.mean).sample.clamp(-1, 1)
    scores["vae_reconstruction"] = scene_agreement(probe.predict(reconstructions), test.targets)
    logger.info(
        "teacher on %d test captions: exact scene %.4f, attributes %.4f",
        len(test),
        scores["exact_scene"],
        scores["attributes"],
    )
    n = min(params.grid_images, len(test))
    grid = captioned_grid(
        tensor_to_uint8(renders[:n]), test.captions[:n], title="teacher renders of test captions"
    )
    return scores, grid


def evaluate_flow_teacher(
    pipeline, probe: AttributeProbe, splits: dict[str, SplitTensors], params: FlowTeacherParams
):
    """``evaluate_teacher`` for the flow-matching teacher (its own parameter block)."""
    return evaluate_teacher(pipeline, probe, splits, params)


def package_teacher(
    pipeline, params: TeacherParams, vae_log: dict, t2i_log: dict, probe_log: dict, scores: dict
):
    """The teacher in its shipping dtype, its metrics, and the loss-curve figure."""
    if params.save_dtype == "float16":
        # UNet and VAE weights in fp16 (diffusers upcasts them to fp32 on load unless asked
        # otherwise); the tiny text encoder stays fp32 because transformers keeps a saved
        # dtype, and a mixed pipeline would fail. from_pretrained(dir) then gives fp32.
        pipeline.unet.to(torch.float16)
        pipeline.vae.to(torch.float16)
    metrics = {
        "render": scores,
        "probe_test_real": probe_log["test_real"],
        "sampling": params.evaluation.model_dump(),
        "eval_images": params.eval_images,
        "seconds": {
            "vae": vae_log["seconds"],
            "text_to_image": t2i_log["seconds"],
            "probe": probe_log["seconds"],
        },
        "final_loss": {
            "vae": vae_log["history"][-1]["loss"] if vae_log["history"] else None,
            "text_to_image": t2i_log["history"][-1]["loss"] if t2i_log["history"] else None,
        },
    }
    figure = loss_curves(
        {
            "vae": vae_log["history"],
            "text-to-image": t2i_log["history"],
            "probe": probe_log["history"],
        },
        title="teacher training",
    )
    return pipeline, metrics, figure


def package_flow_teacher(pipeline, params: FlowTeacherParams, t2i_log: dict, scores: dict):
    """The flow-matching teacher in its shipping dtype, its metrics, and its loss curve."""
    if params.save_dtype == "float16":
        # the MMDiT and the VAE in fp16 (diffusers gives fp32 back on load unless asked);
        # the CLIPs stay fp32, as the SD-style teacher's text encoder
        pipeline.transformer.to(torch.float16)
        pipeline.vae.to(torch.float16)
    metrics = {
        "render": scores,
        "sampling": params.evaluation.model_dump(),
        "eval_images": params.eval_images,
        "seconds": {"text_to_image": t2i_log["seconds"]},
        "final_loss": {
            "text_to_image": t2i_log["history"][-1]["loss"] if t2i_log["history"] else None
        },
    }
    figure = loss_curves(
        {"flow text-to-image": t2i_log["history"]}, title="flow-matching teacher training"
    )
    return pipeline, metrics, figure
