"""Nodes of the `cache` pipeline: encode every manifest image once into VAE posteriors."""

from __future__ import annotations

import logging

import pandas as pd
import torch
from tqdm.auto import tqdm

from vlv_pipeline.datasets.latent_cache import LatentCache, vae_fingerprint
from vlv_pipeline.imaging.sources import iter_images
from vlv_pipeline.models.registry import load_component
from vlv_pipeline.params.cache import CacheParams
from vlv_pipeline.world.data import pil_to_tensor

logger = logging.getLogger(__name__)


@torch.no_grad()
def encode_latents(
    raw_images,
    image_manifest: pd.DataFrame,
    latent_cache_previous: LatentCache,
    params: CacheParams,
) -> LatentCache:
    """Encode the manifest's images not yet in the cache; returns the extended cache.

    A cache made by another VAE or at another resolution is rebuilt from scratch. Images
    stream from the source in batches; every ``shard_size`` latents become one shard on disk.
    """
    vae = load_component("vae", params.vae).eval()
    cache = latent_cache_previous
    fingerprint = vae_fingerprint(vae, params.resolution)
    if cache.fingerprint != fingerprint:
        if len(cache):
            logger.warning(
                "latent cache %s was made by another VAE or resolution: rebuilding it", cache.path
            )
        cache.reset(fingerprint)
    todo = image_manifest[~image_manifest["image_id"].isin(cache.image_ids())]
    logger.info(
        "latent cache: %d of %d images cached, encoding %d",
        len(image_manifest) - len(todo),
        len(image_manifest),
        len(todo),
    )
    dtype = next(vae.parameters()).dtype
    pending_ids, pending_images = [], []
    shard_ids, shard_mean, shard_std = [], [], []

    def encode_pending():
        batch = torch.stack(pending_images).to(dtype)
        dist = vae.encode(batch).latent_dist
        shard_ids.extend(pending_ids)
        shard_mean.append(dist.mean.float())
        shard_std.append(dist.std.float())
        pending_ids.clear()
        pending_images.clear()

    def flush_shard():
        cache.add(list(shard_ids), torch.cat(shard_mean), torch.cat(shard_std))
        shard_ids.clear()
        shard_mean.clear()
        shard_std.clear()

    images = iter_images(raw_images, todo, params.resolution) if len(todo) else iter(())
    for image_id, image in tqdm(images, total=len(todo), desc="cache latents", unit="img"):
        pending_ids.append(image_id)
        pending_images.append(pil_to_tensor(image))
        if len(pending_ids) == params.batch_size:
            encode_pending()
            if len(shard_ids) >= params.shard_size:
                flush_shard()
    if pending_ids:
        encode_pending()
    if shard_ids:
        flush_shard()
    return cache
