"""The tiny stage-1 data shared by the stage-1 tests, made the way a run makes it."""

import pytest
from world_factory import render_and_ingest

from vlv_pipeline.datasets.latent_cache import LatentCache
from vlv_pipeline.params.cache import CacheParams
from vlv_pipeline.params.stage1 import Stage1Params
from vlv_pipeline.params.world import WorldParams
from vlv_pipeline.pipelines.cache.nodes import encode_latents
from vlv_pipeline.pipelines.stage1.nodes import load_stage1_data


@pytest.fixture(scope="module")
def data(tiny_sd, tmp_path_factory):
    """8 train and 4 test world images of 16 px: rendered to a folder, ingested, their
    latents cached under the tiny SD's VAE, then read per item by ``load_stage1_data``."""
    root = tmp_path_factory.mktemp("stage1-world")
    world = WorldParams(image_size=16, counts={"train": 8, "val": 0, "test": 4})
    source, manifest = render_and_ingest(root, world)
    cache = encode_latents(
        source,
        manifest,
        LatentCache(root / "latents"),
        CacheParams(vae={"pretrained": str(tiny_sd / "vae")}, batch_size=4, shard_size=5),
    )
    params = Stage1Params(
        t2i=str(tiny_sd),
        encoder={"backbone": "small", "num_queries": 4},
        training={"steps": 1, "batch_size": 4, "learning_rate": 1e-3},
    )
    return load_stage1_data(source, manifest, cache, params)
