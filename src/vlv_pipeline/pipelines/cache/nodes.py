"""Nodes of the `cache` pipeline: encode every manifest image once into VAE posteriors."""

from __future__ import annotations

import logging

import pandas as pd
import torch

from vlv_pipeline.datasets.cache_extension import extend_cache
from vlv_pipeline.datasets.fingerprints import vae_fingerprint
from vlv_pipeline.datasets.shard_store import LatentCache
from vlv_pipeline.models.device import inference_device
from vlv_pipeline.models.registry import load_component
from vlv_pipeline.params.cache import CacheParams
from vlv_pipeline.params.t2i import T2IParams

logger = logging.getLogger(__name__)


@torch.no_grad()
def encode_latents(
    raw_images,
    image_manifest: pd.DataFrame,
    latent_cache_previous: LatentCache,
    params: CacheParams,
    t2i: T2IParams,
) -> LatentCache:
    """Encode the manifest's images not yet in the cache; returns the extended cache.

    A cache made by another VAE or at another resolution is rebuilt from scratch. Images
    stream from the source in batches; every ``shard_size`` latents become one shard on disk.
    Under ``accelerate launch`` each rank encodes its own contiguous block of the images still
    to do, on its own device, into its own shards; the ranks' shards are merged into one
    index at the end (``datasets.cache_extension.extend_cache``).
    """
    device = inference_device()
    # cache.vae, else the T2I model's own (<model>/vae, float32)
    vae = load_component("vae", params.vae_spec(t2i)).eval().to(device)
    dtype = next(vae.parameters()).dtype

    def encode(pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        posterior = vae.encode(pixels.to(device, dtype)).latent_dist
        return posterior.mean, posterior.std

    return extend_cache(
        latent_cache_previous,
        vae_fingerprint(vae, params.resolution),
        image_manifest,
        raw_images,
        params.resolution,
        encode,
        params.batch_size,
        params.shard_size,
        "latent cache",
    )
