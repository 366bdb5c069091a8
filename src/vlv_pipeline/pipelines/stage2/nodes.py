"""Nodes of the `stage2` pipeline: psi + LLM learn to caption from the caption embeddings."""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, replace

import pandas as pd
import torch

from vlv_pipeline.datasets.fingerprints import embedding_fingerprint, vae_fingerprint
from vlv_pipeline.datasets.shard_reader import CacheRows
from vlv_pipeline.datasets.shard_store import EmbeddingCache, LatentCache
from vlv_pipeline.errors import InputError, MissingEntryError, ParameterError
from vlv_pipeline.metrics.captions import caption_scene_metrics
from vlv_pipeline.metrics.plots import image_grid, loss_curves
from vlv_pipeline.metrics.text import caption_text_metrics
from vlv_pipeline.models.caption_decoder import CaptionDecoder, CaptionTokens
from vlv_pipeline.models.captioner import VLVCaptioner
from vlv_pipeline.models.device import inference_device
from vlv_pipeline.models.encoders import build_encoder
from vlv_pipeline.models.model_card import captioner_card, card_or_none
from vlv_pipeline.models.model_card_evaluation import stage2_evaluation
from vlv_pipeline.models.model_card_parts import describe_source
from vlv_pipeline.models.provenance import captioner_record
from vlv_pipeline.models.registry import load_component
from vlv_pipeline.models.stage2 import Stage2Objective, set_trainable
from vlv_pipeline.models.teachers import load_text_side
from vlv_pipeline.params.stage1 import Stage1Params
from vlv_pipeline.params.stage2 import Stage2Params, trainable_parts
from vlv_pipeline.params.t2i import T2IParams
from vlv_pipeline.params.training import TrainParams
from vlv_pipeline.training.data import BoundedCache, ImagePixels, Zipped
from vlv_pipeline.training.loop import Validation, train
from vlv_pipeline.training.run_folders import run_directory
from vlv_pipeline.world.data import tensor_to_uint8, to_unit_range

logger = logging.getLogger(__name__)


@dataclass
class Stage2Data:
    """The caption pairs (ids and captions in memory, pixels read per item as uint8) and
    the evaluation split's first ``validation_images`` images (floats, a bounded set)."""

    pair_ids: list[str]
    pair_pixels: ImagePixels
    pair_captions: list[str]
    eval_ids: list[str]
    eval_pixels: torch.Tensor
    eval_captions: list[str | None]


def load_stage2_data(
    raw_images, image_manifest: pd.DataFrame, caption_pairs: pd.DataFrame, params: Stage2Params
) -> Stage2Data:
    unknown = set(caption_pairs["image_id"]) - set(image_manifest["image_id"])
    if unknown:
        raise InputError(
            f"{len(unknown)} caption pairs name images that are not in the manifest; rerun "
            "`kedro run --pipeline synthesize`"
        )
    split = next(s for s in ("test", "val", "train") if (image_manifest["split"] == s).any())
    evaluation = image_manifest[image_manifest["split"] == split].sort_values("image_id")
    evaluation = evaluation.head(params.validation_images)
    by_id = image_manifest.drop_duplicates("image_id").set_index("image_id", drop=False)
    pair_ids = caption_pairs["image_id"].astype(str).tolist()
    eval_ids = evaluation["image_id"].astype(str).tolist()
    eval_pixels = ImagePixels.of_manifest(raw_images, evaluation, params.resolution)
    return Stage2Data(
        pair_ids,
        ImagePixels.of_manifest(raw_images, by_id.loc[pair_ids], params.resolution),
        caption_pairs["caption"].astype(str).tolist(),
        eval_ids,
        torch.stack([to_unit_range(eval_pixels[i]) for i in range(len(eval_pixels))]),
        [None if pd.isna(c) else str(c) for c in evaluation["caption"]],
    )


def pairs_sha256(pair_ids: list[str], captions: list[str]) -> str:
    """A hash of the pairs, fed one pair at a time (no one string of every caption)."""
    digest = hashlib.sha256()
    for image_id, caption in zip(pair_ids, captions, strict=True):
        digest.update(json.dumps([image_id, caption]).encode())
    return digest.hexdigest()


def _tokenizer(params: Stage2Params):
    tokenizer = load_component("tokenizer", params.tokenizer)
    if tokenizer.eos_token_id is None:
        raise ParameterError(f"stage2.tokenizer {params.tokenizer} has no EOS token")
    return tokenizer


def build_llm(params: Stage2Params, tokenizer):
    """The causal LM; one built from ``init`` gets its vocabulary and special ids from the tokenizer."""
    spec = params.llm.model_dump()
    if spec["init"] is not None:
        init = {
            "vocab_size": len(tokenizer),
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
            **spec["init"],
        }
        spec["init"] = init
    return load_component("causal_lm", spec)


def _text_encoder(t2i: T2IParams):
    """The teacher's frozen text side (the text encoders the VLV queries feed)."""
    return load_text_side(t2i.model)


@dataclass(frozen=True)
class CaptionerRun:
    """Which captioner a stage-2 training makes: its run name (checkpoint folder and progress
    bar), what trains, and the schedule."""

    name: str
    trainable: str
    training: TrainParams

    @property
    def parts(self) -> frozenset[str]:
        """What trains, as a set of parts (read once, in ``params.stage2``)."""
        return trainable_parts(self.trainable)


def _training_set(
    decoder: CaptionDecoder,
    encoder,
    text_encoder,
    tokens: CaptionTokens,
    data: Stage2Data,
    embedding_cache: EmbeddingCache | None,
    fingerprint: dict,
    params: Stage2Params,
    run: CaptionerRun,
    latents: CacheRows | None = None,
) -> tuple[Stage2Objective, BoundedCache]:
    """The objective and its items. When the encoder trains: pixels through encoder and text
    encoder every step, or, given ``latents`` (the latent cache's rows of the pairs) and an
    encoder whose VAE tower is frozen, the cached posterior means after that tower. Otherwise:
    the frozen encoder's conditions from the embedding cache, which must have been made by
    this encoder and text encoder."""
    cache_bytes = run.training.cache_mb * 2**20
    if "encoder" in run.parts:
        tower = getattr(encoder, "vae_tower", None)
        if latents is not None and tower is not None:
            if not any(p.requires_grad for p in tower.parameters()):
                objective = Stage2Objective(decoder, encoder, text_encoder, from_latents=True)
                return objective, BoundedCache(Zipped(latents, tokens), cache_bytes)
        objective = Stage2Objective(decoder, encoder, text_encoder)
        return objective, BoundedCache(Zipped(data.pair_pixels, tokens), cache_bytes)
    if embedding_cache is None or embedding_cache.fingerprint != fingerprint:
        where = "no embedding cache" if embedding_cache is None else embedding_cache.path
        raise InputError(
            f"embedding cache {where} was not made by this VLV encoder "
            f"and text encoder at resolution {params.resolution}; rerun "
            "`kedro run --pipeline synthesize` after stage 1"
        )
    conditions = embedding_cache.rows(data.pair_ids, fields=("conditions",))
    return Stage2Objective(decoder), BoundedCache(Zipped(conditions, tokens), cache_bytes)


def _run_directory(
    params: Stage2Params, t2i: T2IParams, run: CaptionerRun, encoder_sha256: str, pairs_hash: str
) -> str:
    """The checkpoint folder: keyed by everything that makes the run (not how it captions
    nor how it validates), the starting encoder's weights and the pairs, so a new stage 1
    or new pairs start a fresh run instead of resuming a stale one. What trains and its
    schedule are the run's own (``run.trainable``, ``run.training``): the "without stage 1"
    baseline does not read stage 2's, so a study point that changes only stage 2's resumes
    the default run's baseline."""
    config = params.model_dump(
        mode="json",
        exclude={
            "checkpoint_dir",
            "generation",
            "baseline",
            "validation_every",
            "batch_at_most_pairs",  # what it changes is run.training's batch size, hashed
            "trainable",  # run.trainable, hashed
            "training",  # run.training, hashed
        },
    )
    config["t2i"] = t2i.model  # under the key stage2 once had: a run's folder stays the same
    return run_directory(
        params.checkpoint_dir,
        run.name,
        config,
        run.trainable,
        run.training.model_dump(mode="json"),
        encoder_sha256,
        pairs_hash,
    )


def _train_captioner(
    encoder,
    text_encoder,
    data: Stage2Data,
    params: Stage2Params,
    run: CaptionerRun,
    *,
    t2i: T2IParams,
    embedding_cache: EmbeddingCache | None = None,
    latents: CacheRows | None = None,
) -> tuple[VLVCaptioner, dict]:
    """psi + the LLM (+ LoRA, + the encoder, per ``run.trainable``) trained on the pairs;
    returns the captioner (sharing its modules with what trained) and the training log."""
    text_encoder.requires_grad_(False).eval()
    run = _fit_batch(run, len(data.pair_ids), params.batch_at_most_pairs)
    tokenizer = _tokenizer(params)
    torch.manual_seed(run.training.seed)
    decoder = CaptionDecoder(build_llm(params, tokenizer), text_encoder.condition_width)
    set_trainable(decoder, encoder, run.parts, params.lora)
    tokens = CaptionTokens(tokenizer, data.pair_captions, params.max_caption_tokens)
    # hashed once
    fingerprint = embedding_fingerprint(encoder, text_encoder.text_encoders(), params.resolution)
    objective, dataset = _training_set(
        decoder,
        encoder,
        text_encoder,
        tokens,
        data,
        embedding_cache,
        fingerprint,
        params,
        run,
        latents,
    )
    captioner = VLVCaptioner(
        encoder,
        text_encoder,
        decoder,
        tokenizer,
        max_new_tokens=params.generation.max_new_tokens,
        num_beams=params.generation.num_beams,
    )
    # what it is made for, saved with it (provenance.json): loaders refuse it elsewhere
    captioner.provenance = captioner_record(
        captioner,
        t2i=t2i.model,
        resolution=params.resolution,
        llm=params.llm,
        model="baseline_captioner" if run.name == "stage2_baseline" else "vlv_captioner",
    )
    pairs_hash = pairs_sha256(data.pair_ids, data.pair_captions)
    result = train(
        objective,
        dataset,
        run.training,
        checkpoint_dir=_run_directory(params, t2i, run, fingerprint["encoder_sha256"], pairs_hash),
        desc=run.name.replace("_", " "),
        validation=_during_training(captioner, data, params, run.name),
    )
    if result.ema is not None:
        result.ema.copy_to([p for p in objective.parameters() if p.requires_grad])
    encoder.eval(), decoder.eval()
    trainable_count = sum(p.numel() for p in objective.parameters() if p.requires_grad)
    log = {
        "history": result.history,
        "seconds": result.seconds,
        "trainable": run.trainable,
        "trainable_parameters": trainable_count,
        "pairs": len(data.pair_ids),
        "batch_size": run.training.batch_size,
    }
    # its README.md, saved with it (models/model_card.py); validation fills in its numbers
    captioner.model_card = card_or_none(
        captioner_card,
        captioner,
        params,
        log,
        {"pairs": len(data.pair_ids), "source": describe_source(data.pair_pixels)},
        t2i.model,
        model="baseline_captioner" if run.name == "stage2_baseline" else "vlv_captioner",
    )
    return captioner, log


def _fit_batch(run: CaptionerRun, pairs: int, at_most_pairs: bool) -> CaptionerRun:
    """``run`` with one batch of all ``pairs`` when they are fewer than its batch size and
    ``stage2.batch_at_most_pairs`` allows it; otherwise a refusal that says what to change."""
    if pairs >= run.training.batch_size:
        return run
    if not at_most_pairs:
        raise ParameterError(
            f"stage2: {pairs} caption pairs are fewer than one batch "
            f"(training.batch_size {run.training.batch_size}) for {run.name}: caption more "
            "images (synthesize.fraction), lower the batch size, or set "
            "stage2.batch_at_most_pairs: true to train on all pairs as one batch"
        )
    logger.info(
        "%s: %d pairs < batch %d, training on all of them as one batch",
        run.name,
        pairs,
        run.training.batch_size,
    )
    training = run.training.model_copy(update={"batch_size": pairs})
    return replace(run, training=training)


def _during_training(captioner: VLVCaptioner, data: Stage2Data, params: Stage2Params, name: str):
    """``validation_every``: the validation images captioned while training, scored against
    their references (BLEU-4, ROUGE-L, CIDEr), with a captioned grid."""
    if params.validation_every is None or not data.eval_ids:
        return None

    def run(step: int) -> tuple[dict, dict]:
        captioner.eval()
        captioner.to(next(captioner.decoder.parameters()).device)
        captions = captioner.caption(data.eval_pixels, batch_size=params.generation.batch_size)
        metrics = {}
        if all(r is not None for r in data.eval_captions):
            metrics, _ = caption_text_metrics(captions, data.eval_captions)
        n = min(8, len(captions))
        grid = image_grid(
            {"image": tensor_to_uint8(data.eval_pixels[:n])},
            captions=captions[:n],
            title=f"{name.replace('_', ' ')}: captions at step {step}",
        )
        return metrics, {"captions": grid}

    return Validation(params.validation_every, run)


def train_stage2(
    data: Stage2Data,
    vlv_encoder,
    embedding_cache: EmbeddingCache,
    params: Stage2Params,
    t2i: T2IParams,
    latent_cache: LatentCache | None = None,
):
    """psi + LLM (+ LoRA, + the VLV encoder) on the caption pairs, from stage 1's encoder.

    When the encoder trains and its vision tower is the frozen VAE encoder, the latent
    cache's posterior means of the pairs feed it after that tower (as stage 1 and the
    baseline read them), if the cache was made by that VAE at stage 2's resolution."""
    latents = None
    if "encoder" in params.parts and getattr(vlv_encoder, "reads_vae_latents", False):
        t2i_vae = load_component("vae", {"pretrained": t2i.model, "subfolder": "vae"})
        latents = _pair_latents(latent_cache, t2i_vae, data, params)
    return _train_captioner(
        vlv_encoder,
        _text_encoder(t2i),
        data,
        params,
        CaptionerRun("stage2", params.trainable, params.training),
        t2i=t2i,
        embedding_cache=embedding_cache,
        latents=latents,
    )


def _pair_latents(
    latent_cache: LatentCache | None, vae, data: Stage2Data, params: Stage2Params
) -> CacheRows | None:
    """The latent cache's posterior means of the pairs, when that cache was made by this VAE
    at stage 2's resolution and holds every pair image; else None (the pixels are read)."""
    if latent_cache is None:
        return None
    if latent_cache.fingerprint != vae_fingerprint(vae, params.resolution):
        logger.info(
            "stage 2: the latent cache was made by another VAE or resolution; "
            "the encoder reads the pixels"
        )
        return None
    try:
        return latent_cache.rows(data.pair_ids, fields=("mean",))
    except MissingEntryError as error:
        logger.info(
            "stage 2: the latent cache lacks pair images (%s); the encoder reads the pixels", error
        )
        return None


def train_baseline(
    data: Stage2Data,
    params: Stage2Params,
    stage1: Stage1Params,
    t2i: T2IParams,
    latent_cache: LatentCache | None = None,
):
    """The paper's "without stage 1": the same LLM and psi from an encoder that had no stage 1.

    The encoder is built as stage 1 builds its starting point: the small encoder with random
    trainable weights (and its self-supervised VAE tower, if stage 1 uses one), or Florence-2
    as pretrained, never distilled. It trains with psi and the LLM on the same pairs. When its
    vision tower is the frozen VAE encoder and ``latent_cache`` holds that VAE's posterior
    means of the pairs, it reads them as stage 1 does instead of running the tower every
    step: the same embeddings (tested), a cheaper step.
    """
    t2i_vae = load_component("vae", {"pretrained": t2i.model, "subfolder": "vae"})
    text_encoder = _text_encoder(t2i)
    torch.manual_seed(params.training.seed)
    encoder = build_encoder(
        params.baseline.encoder or stage1.encoder,
        text_encoder.width,
        t2i_vae,
        text_encoder.token_embeddings,
    )
    run = CaptionerRun(
        "stage2_baseline", "projector+llm+encoder", params.baseline.training or params.training
    )
    latents = None
    if getattr(encoder, "reads_vae_latents", False):
        latents = _pair_latents(latent_cache, t2i_vae, data, params)
    return _train_captioner(encoder, text_encoder, data, params, run, t2i=t2i, latents=latents)


def validate_stage2(
    captioner: VLVCaptioner,
    baseline: VLVCaptioner | None,
    data: Stage2Data,
    params: Stage2Params,
    stage1: Stage1Params,
) -> dict:
    """Captions of the evaluation split: the model and the baseline, scored by the world parser."""
    metrics: dict = {"images": len(data.eval_ids), "generation": params.generation.model_dump()}
    references = data.eval_captions
    for name, model in (("vlv", captioner), ("without_stage1", baseline)):
        if model is None:
            continue
        model = model.to(inference_device())
        captions = model.caption(data.eval_pixels, batch_size=params.generation.batch_size)
        entry: dict = {
            "samples": [
                {"image_id": i, "caption": c, "reference": r}
                for i, c, r in list(zip(data.eval_ids, captions, references, strict=True))[:8]
            ]
        }
        if stage1.validation.probe and all(r is not None for r in references):
            from vlv_pipeline.models.probe import AttributeProbe
            from vlv_pipeline.world.scene import Vocabulary

            cfg = AttributeProbe.from_pretrained(stage1.validation.probe).config
            vocab = Vocabulary(tuple(cfg.shapes), tuple(cfg.colours), tuple(cfg.sizes))
            entry.update(caption_scene_metrics(captions, references, vocab))
            logger.info("stage 2 (%s): exact scene %.4f", name, entry["exact_scene"])
        metrics[name] = entry
    return metrics


def card_stage2(metrics: dict) -> tuple[dict, dict]:
    """The captioners' card evaluations, from ``validate_stage2``'s metrics: written into the
    cards of the captioner and the baseline this run saved (``vlv_captioner_card``,
    ``baseline_captioner_card``: ``datasets/model_card.py``); {} for one not scored."""
    return (
        stage2_evaluation(metrics, "vlv") or {},
        stage2_evaluation(metrics, "without_stage1") or {},
    )


def plot_stage2_loss(log: dict, baseline_log: dict):
    curves = {"stage 2 (from stage 1)": log["history"]}
    if baseline_log.get("history"):
        curves["without stage 1"] = baseline_log["history"]
    return loss_curves(curves, title="stage 2 caption loss")
