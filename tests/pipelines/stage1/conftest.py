"""The tiny stage-1 data shared by the stage-1 tests."""

import pytest
import torch
from diffusers import AutoencoderKL

from vlv_pipeline.params.world import WorldParams
from vlv_pipeline.pipelines.stage1.nodes import ImageLatents
from vlv_pipeline.pipelines.world.nodes import generate_labels, render_images
from vlv_pipeline.world.data import pil_to_tensor


@pytest.fixture(scope="module")
def data(tiny_sd):
    """A handful of 16 px world images with their latents under the tiny SD's VAE."""
    world = WorldParams(image_size=16, counts={"train": 8, "val": 0, "test": 4})
    labels = generate_labels(world)
    images = render_images(labels, world)
    vae = AutoencoderKL.from_pretrained(tiny_sd / "vae")
    out = {}
    for split in ("train", "test"):
        rows = labels[labels["split"] == split]
        pixels = torch.stack([pil_to_tensor(images[f]()) for f in rows["file"]])
        with torch.no_grad():
            dist = vae.encode(pixels).latent_dist
        out[split] = ImageLatents(
            pixels, dist.mean, dist.std, rows["caption"].tolist(), rows["file"].tolist()
        )
    return out
