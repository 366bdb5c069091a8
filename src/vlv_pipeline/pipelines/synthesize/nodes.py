"""Nodes of the `synthesize` pipeline: caption pairs, and the frozen encoder's embedding cache."""

from __future__ import annotations

import hashlib
import json
import logging
import math
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import torch
from tqdm.auto import tqdm

from vlv_pipeline.captioners.journal import CaptionJournal
from vlv_pipeline.datasets.latent_cache import EmbeddingCache, weights_sha256
from vlv_pipeline.imaging.sources import iter_images
from vlv_pipeline.models.device import inference_device
from vlv_pipeline.models.registry import load_component
from vlv_pipeline.models.text_encoder import encode_embeddings
from vlv_pipeline.params.stage2 import Stage2Params
from vlv_pipeline.params.synthesize import SynthesizeParams
from vlv_pipeline.world.data import pil_to_tensor

logger = logging.getLogger(__name__)

PAIR_COLUMNS = ["image_id", "caption", "captioner", "prompt", "created_at"]


def select_images(image_manifest: pd.DataFrame, params: SynthesizeParams) -> pd.DataFrame:
    """A seeded sample (``fraction`` of the split, at most ``max_images``) to caption."""
    rows = image_manifest[image_manifest["split"] == params.split]
    if rows.empty:
        raise ValueError(
            f"synthesize.split is {params.split!r} but the manifest has no such images "
            f"(splits: {sorted(image_manifest['split'].unique())})"
        )
    n = max(1, math.ceil(params.fraction * len(rows)))
    if params.max_images is not None:
        n = min(n, params.max_images)
    chosen = rows.sample(n=n, random_state=params.seed).sort_values("image_id")
    logger.info("synthesize: captioning %d of %d %s images", n, len(rows), params.split)
    return chosen.reset_index(drop=True)


def make_captioner(params: SynthesizeParams, credentials: dict):
    """The backend object for ``transformers`` or ``openai`` (``manifest`` needs none)."""
    spec = params.captioner
    if spec.backend == "transformers":
        from vlv_pipeline.captioners.hf import TransformersCaptioner

        return TransformersCaptioner(**spec.transformers.model_dump())
    if spec.backend == "openai":
        from vlv_pipeline.captioners.openai_chat import OpenAICaptioner

        key = (credentials or {}).get("api_key")
        if not key:
            logger.warning(
                "synthesize: no api_key under `captioner` in conf/local/credentials.yml; "
                "calling %s without one",
                spec.openai.base_url,
            )
        return OpenAICaptioner(api_key=key, **spec.openai.model_dump())
    raise ValueError(f"no captioner object for backend {spec.backend!r}")


def _journal(params: SynthesizeParams, setting: dict) -> CaptionJournal:
    """One journal per captioner setting (backend, model, prompt, generation): any change
    starts a new journal, so old captions are never reused for a different setting."""
    key = hashlib.sha256(json.dumps(setting, sort_keys=True).encode()).hexdigest()[:16]
    return CaptionJournal(Path(params.journal_dir) / f"{setting['backend']}-{key}.jsonl")


def synthesize_captions(
    raw_images, selection: pd.DataFrame, params: SynthesizeParams, credentials: dict
) -> pd.DataFrame:
    """Caption pairs (image_id, caption, captioner, prompt, created_at) for the selection."""
    now = datetime.now(UTC).isoformat(timespec="seconds")
    if params.captioner.backend == "manifest":
        missing = selection["caption"].isna()
        if missing.any():
            raise ValueError(
                f"captioner backend `manifest`: {int(missing.sum())} selected images have no "
                f"caption in the manifest (e.g. {selection.loc[missing, 'image_id'].iloc[0]}); "
                "choose the transformers or openai backend"
            )
        pairs = pd.DataFrame(
            {
                "image_id": selection["image_id"],
                "caption": selection["caption"].astype(str),
                "captioner": "manifest",
                "prompt": "",
                "created_at": now,
            }
        )
        return pairs[PAIR_COLUMNS]
    captioner = make_captioner(params, credentials)
    described = captioner.describe()
    journal = _journal(params, params.captioner.model_dump(mode="json"))
    done = journal.read()
    pending = selection[~selection["image_id"].isin(done)]
    logger.info(
        "synthesize: %d captions already in %s, %d to go",
        len(selection) - len(pending),
        journal.path,
        len(pending),
    )
    if len(pending):
        items = iter_images(raw_images, pending, None)
        for image_id, caption in tqdm(
            captioner.caption_stream(items), total=len(pending), desc="captions", unit="img"
        ):
            journal.append(image_id, caption)
        done = journal.read()
    records = [done[i] for i in selection["image_id"]]
    return pd.DataFrame(
        {
            "image_id": [r["image_id"] for r in records],
            "caption": [r["caption"] for r in records],
            "captioner": described.get("model", described["captioner"]),
            "prompt": described.get("prompt", ""),
            "created_at": [r["created_at"] for r in records],
        }
    )[PAIR_COLUMNS]


def embedding_fingerprint(encoder, text_encoder, resolution: int | None) -> dict:
    return {
        "encoder_sha256": weights_sha256(encoder),
        "text_encoder_sha256": weights_sha256(text_encoder),
        "resolution": resolution,
    }


@torch.no_grad()
def cache_pair_embeddings(
    raw_images,
    image_manifest: pd.DataFrame,
    caption_pairs: pd.DataFrame,
    vlv_encoder,
    embedding_cache_previous: EmbeddingCache,
    params: Stage2Params,
    synth: SynthesizeParams,
) -> EmbeddingCache:
    """The frozen encoder's caption embeddings and text-encoder outputs of the paired images.

    Keyed by image_id under a fingerprint of the encoder's weights, so a retrained stage 1
    rebuilds it; images already cached are skipped. When stage 2 trains the encoder the
    cache cannot serve it, and nothing is computed.
    """
    cache = embedding_cache_previous
    if "encoder" in params.trainable:
        logger.info("stage 2 trains the VLV encoder: the embedding cache is bypassed")
        if cache.fingerprint is None:
            cache.reset({"bypassed": True})  # an empty cache, so the catalog has one to save
        return cache
    text_encoder = load_component(
        "text_encoder", {"pretrained": params.t2i, "subfolder": "text_encoder"}
    ).eval()
    device = inference_device()
    vlv_encoder, text_encoder = vlv_encoder.eval().to(device), text_encoder.to(device)
    fingerprint = embedding_fingerprint(vlv_encoder, text_encoder, params.resolution)
    if cache.fingerprint != fingerprint:
        if len(cache):
            logger.info("embedding cache %s is for another encoder: rebuilding it", cache.path)
        cache.reset(fingerprint)
    paired = image_manifest[image_manifest["image_id"].isin(caption_pairs["image_id"])]
    if len(paired) != caption_pairs["image_id"].nunique():
        raise ValueError(
            "some caption pairs name images that are not in the manifest; rerun "
            "`kedro run --pipeline synthesize` after `ingest`"
        )
    todo = paired[~paired["image_id"].isin(cache.image_ids())]
    ids, embeddings, conditions, batch = [], [], [], []

    def encode():
        pixels = torch.stack([b[1] for b in batch]).to(device)
        emb = vlv_encoder(pixels)
        ids.extend(b[0] for b in batch)
        embeddings.append(emb.float().cpu())
        conditions.append(encode_embeddings(text_encoder, emb).float().cpu())
        batch.clear()

    def flush():
        cache.add(list(ids), torch.cat(embeddings), torch.cat(conditions))
        ids.clear(), embeddings.clear(), conditions.clear()

    images = iter_images(raw_images, todo, params.resolution) if len(todo) else iter(())
    for image_id, image in tqdm(images, total=len(todo), desc="embedding cache", unit="img"):
        batch.append((image_id, pil_to_tensor(image)))
        if len(batch) == synth.embedding_batch_size:
            encode()
            if len(ids) >= synth.embedding_shard_size:
                flush()
    if batch:
        encode()
    if ids:
        flush()
    return cache
