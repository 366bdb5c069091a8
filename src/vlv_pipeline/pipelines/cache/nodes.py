"""Nodes of the `cache` pipeline: encode every manifest image once into VAE posteriors."""

from __future__ import annotations

import logging

import pandas as pd
import torch
from tqdm.auto import tqdm

from vlv_pipeline.datasets.latent_cache import (
    LatentCache,
    begin_extension,
    end_extension,
    vae_fingerprint,
    write_shards,
)
from vlv_pipeline.distributed import share, together
from vlv_pipeline.imaging.sources import iter_images
from vlv_pipeline.models.device import inference_device
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
    Under ``accelerate launch`` each rank encodes its own contiguous block of the images still
    to do, on its own device, into its own shards; the ranks' shards are merged into one
    index at the end (``begin_extension`` / ``end_extension``).
    """
    device = inference_device()
    vae = load_component("vae", params.vae).eval().to(device)
    dtype = next(vae.parameters()).dtype
    cache = begin_extension(latent_cache_previous, vae_fingerprint(vae, params.resolution))
    todo = image_manifest[~image_manifest["image_id"].isin(cache.image_ids())]
    mine = todo.iloc[share(len(todo))]
    logger.info(
        "latent cache: %d of %d images cached, encoding %d",
        len(image_manifest) - len(todo),
        len(image_manifest),
        len(todo),
    )

    def encode(pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        posterior = vae.encode(pixels.to(device, dtype)).latent_dist
        return posterior.mean, posterior.std

    def encode_mine() -> int:
        images = iter_images(raw_images, mine, params.resolution) if len(mine) else iter(())
        items = (
            (image_id, pil_to_tensor(image))
            for image_id, image in tqdm(images, total=len(mine), desc="cache latents", unit="img")
        )
        return write_shards(cache, items, encode, params.batch_size, params.shard_size)

    together(encode_mine)
    return end_extension(cache)
