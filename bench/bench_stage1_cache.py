"""Benchmark: a stage-1 training step on cached latents vs encoding images every step.

    python bench/bench_stage1_cache.py [--steps 20] [--batch 64] [--t2i DIR]
    python bench/bench_stage1_cache.py --paper-shapes --batch 1 --steps 3

Same frozen T2I model (the shipped shapes-world teacher by default), same VLV encoder (the
default: the teacher VAE's encoder as its frozen vision tower), same batch, same optimiser.
"cached" is the project's Stage1Objective fed the VAE posterior mean/std from the latent
cache; the encoder's frozen tower is skipped because its output IS the cached mean.
"reference" encodes the pixels with the VAE inside every step for the loss and runs the
encoder's vision tower on the pixels (the official code's way: VAE encode and the full
encoder forward every step). Prints seconds per step for both and the speed-up ratio.
``--paper-shapes`` swaps the teacher for SD 2.1 base's VAE, UNet and text encoder at their
real sizes (random weights from configs) at 384 px, where the VAE is a larger share.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from steps import time_steps  # noqa: E402

from vlv_pipeline.models.stage1 import Stage1Objective  # noqa: E402
from vlv_pipeline.models.teachers import load_teacher  # noqa: E402
from vlv_pipeline.models.teachers.families import StableDiffusionTeacher  # noqa: E402
from vlv_pipeline.models.vlv_encoder import SmallVLVEncoder, vae_config_of  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


class EncodeEveryStep(Stage1Objective):
    """Reference: the VAE encodes the batch's pixels at every step."""

    def __init__(self, vae, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.vae = vae.requires_grad_(False)

    def forward(self, batch):
        (pixels,) = batch
        with torch.no_grad():
            dist = self.vae.encode(pixels).latent_dist
        return super().forward((pixels, dist.mean, dist.std))


def paper_shaped_t2i():
    """SD 2.1 base's VAE, UNet, OpenCLIP-H text encoder and scheduler at their real sizes
    (``gpu_smoke.PAPER``), randomly initialised from configs (nothing downloaded), for
    384 px (48 x 48 latents)."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from gpu_smoke import PAPER
    from transformers import CLIPTextConfig, CLIPTextModel

    vae = AutoencoderKL(**{**PAPER["vae"], "sample_size": PAPER["resolution"]})
    unet = UNet2DConditionModel(**PAPER["unet"])
    text_encoder = CLIPTextModel(CLIPTextConfig(**PAPER["text"]))
    for part in (vae, unet, text_encoder):
        part.requires_grad_(False).eval()
    scheduler = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    parts = {"vae": vae, "unet": unet, "text_encoder": text_encoder, "scheduler": scheduler}
    return StableDiffusionTeacher("SD 2.1 base, paper-shaped", parts)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--t2i", default=str(ROOT / "src/vlv_pipeline/assets/teacher"))
    parser.add_argument(
        "--paper-shapes",
        action="store_true",
        help="SD-2.1-base-sized VAE/UNet/text encoder (random weights) at 384 px; "
        "use with --batch 1 --steps 3",
    )
    args = parser.parse_args()
    torch.manual_seed(0)
    t2i = paper_shaped_t2i() if args.paper_shapes else load_teacher(args.t2i)
    size = t2i.vae.config.sample_size
    pixels = torch.rand(4, args.batch, 3, size, size) * 2 - 1
    with torch.no_grad():
        dists = [t2i.vae.encode(p).latent_dist for p in pixels]
    cached = [(p, d.mean, d.std) for p, d in zip(pixels, dists, strict=True)]
    raw = [(p,) for p in pixels]

    def encoder():
        torch.manual_seed(0)
        model = SmallVLVEncoder(
            num_queries=16, out_dim=t2i.width, image_size=size, vae_config=vae_config_of(t2i.vae)
        )
        model.load_vae_tower(t2i.vae)
        return model

    ours = time_steps(Stage1Objective(encoder(), t2i, features_from_cache=True), cached, args.steps)
    reference = time_steps(EncodeEveryStep(t2i.vae, encoder(), t2i), raw, args.steps)
    print(
        f"stage-1 step, batch {args.batch}, {size} px, {args.steps} steps, {torch.get_num_threads()} threads"
    )
    print(f"  cached latents (ours):      {ours:.3f} s/step  {args.batch / ours:7.1f} img/s")
    print(
        f"  VAE encode every step (ref): {reference:.3f} s/step  {args.batch / reference:7.1f} img/s"
    )
    print(f"  speed-up: {reference / ours:.2f}x")


if __name__ == "__main__":
    main()
