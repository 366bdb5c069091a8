"""GPU runbook: paper-sized stage-1 and stage-2 training steps, ours vs an official-style one.

    python bench/gpu_smoke.py                 # on a CUDA machine: paper sizes, < 8 minutes
    python bench/gpu_smoke.py --tiny          # anywhere (CPU): tiny sizes, same code path
    python bench/gpu_smoke.py --count         # paper sizes on the meta device: parameter counts

No weights are downloaded: every model is built from a config of the paper's architecture
(stable-diffusion-2-1-base's VAE, UNet and OpenCLIP-H text encoder; Florence-2-large as the
VLV encoder; Qwen2.5-3B as the caption LLM) with random weights; speed and memory do not
depend on the weights. Per-GPU batch sizes come from conf/paper (stage1/stage2.training).

For each stage it times, on the same architectures and batch:
- ours (bf16 and fp32): the project's objectives (models/stage1.py, models/stage2.py) fed
  what the caches hold: VAE posteriors for stage 1, text-encoder outputs for stage 2;
- reference (fp32): the official code's way: the VAE encodes the pixels every step, the full
  encoder (and, in stage 2, the text encoder) runs every step, with gradient checkpointing
  on the UNet (stage 1) / the LLM (stage 2).
It prints one table: images/s, seconds/step and peak GPU memory, and our speed-up.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from vlv_pipeline.models.caption_decoder import CaptionDecoder  # noqa: E402
from vlv_pipeline.models.stage1 import Stage1Objective  # noqa: E402
from vlv_pipeline.models.stage2 import Stage2Objective  # noqa: E402
from vlv_pipeline.models.teachers.families import StableDiffusionTeacher  # noqa: E402
from vlv_pipeline.models.text_encoder import encode_embeddings  # noqa: E402
from vlv_pipeline.models.vlv_encoder import Florence2VLVEncoder  # noqa: E402

PAPER = {
    "resolution": 384,
    "vae": dict(
        down_block_types=["DownEncoderBlock2D"] * 4,
        up_block_types=["UpDecoderBlock2D"] * 4,
        block_out_channels=[128, 256, 512, 512],
        layers_per_block=2,
        latent_channels=4,
        sample_size=768,
    ),
    "unet": dict(
        sample_size=48,
        block_out_channels=[320, 640, 1280, 1280],
        attention_head_dim=[5, 10, 20, 20],
        cross_attention_dim=1024,
        use_linear_projection=True,
        layers_per_block=2,
        down_block_types=["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
        up_block_types=["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
    ),
    "text": dict(
        vocab_size=49408,
        hidden_size=1024,
        intermediate_size=4096,
        num_hidden_layers=23,
        num_attention_heads=16,
        max_position_embeddings=77,
        hidden_act="gelu",
    ),
    "florence": {
        "vision_config": {
            "embed_dim": [256, 512, 1024, 2048],
            "depths": [1, 1, 9, 1],
            "num_heads": [8, 16, 32, 64],
            "num_groups": [8, 16, 32, 64],
            "patch_size": [7, 3, 3, 3],
            "patch_stride": [4, 2, 2, 2],
            "patch_padding": [3, 1, 1, 1],
            "patch_prenorm": [False, True, True, True],
            "window_size": 12,
            "projection_dim": 1024,
        },
        "text_config": {
            "vocab_size": 51289,
            "d_model": 1024,
            "encoder_layers": 12,
            "decoder_layers": 12,
            "encoder_attention_heads": 16,
            "decoder_attention_heads": 16,
            "encoder_ffn_dim": 4096,
            "decoder_ffn_dim": 4096,
            "max_position_embeddings": 1024,
        },
    },
    "llm": dict(
        vocab_size=151936,
        hidden_size=2048,
        intermediate_size=11008,
        num_hidden_layers=36,
        num_attention_heads=16,
        num_key_value_heads=2,
        max_position_embeddings=32768,
        tie_word_embeddings=True,
        rope_theta=1e6,
    ),
    "queries": 77,
    "caption_tokens": 300,
    "prompt_tokens": 12,
}

TINY = {
    "resolution": 32,
    "vae": dict(
        down_block_types=["DownEncoderBlock2D"] * 2,
        up_block_types=["UpDecoderBlock2D"] * 2,
        block_out_channels=[8, 8],
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=4,
        sample_size=32,
    ),
    "unet": dict(
        sample_size=16,
        block_out_channels=[8, 16],
        attention_head_dim=2,
        cross_attention_dim=16,
        layers_per_block=1,
        norm_num_groups=4,
        down_block_types=["DownBlock2D", "CrossAttnDownBlock2D"],
        up_block_types=["CrossAttnUpBlock2D", "UpBlock2D"],
    ),
    "text": dict(
        vocab_size=64,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        max_position_embeddings=77,
    ),
    "florence": {
        "vision_config": {
            "embed_dim": [16, 32],
            "depths": [1, 1],
            "num_heads": [2, 4],
            "num_groups": [2, 4],
            "patch_size": [3, 3],
            "patch_stride": [2, 2],
            "patch_padding": [1, 1],
            "patch_prenorm": [False, True],
            "window_size": 2,
            "projection_dim": 32,
            "max_position_embeddings": 64,
            "max_temporal_embeddings": 4,
        },
        "text_config": {
            "vocab_size": 64,
            "d_model": 32,
            "encoder_layers": 1,
            "decoder_layers": 1,
            "encoder_attention_heads": 2,
            "decoder_attention_heads": 2,
            "encoder_ffn_dim": 64,
            "decoder_ffn_dim": 64,
            "max_position_embeddings": 128,
        },
        "image_token_id": 63,
    },
    "llm": dict(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=512,
        tie_word_embeddings=True,
    ),
    "queries": 5,
    "caption_tokens": 12,
    "prompt_tokens": 4,
}


def build(sizes: dict):
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, Qwen2Config, Qwen2ForCausalLM

    vae = AutoencoderKL(**sizes["vae"]).requires_grad_(False)
    unet = UNet2DConditionModel(**sizes["unet"]).requires_grad_(False)
    text = CLIPTextModel(CLIPTextConfig(**sizes["text"])).requires_grad_(False)
    encoder = Florence2VLVEncoder(
        florence_config=sizes["florence"],
        num_queries=sizes["queries"],
        out_dim=sizes["text"]["hidden_size"],
        prompt_ids=tuple(range(4, 4 + sizes["prompt_tokens"])),
    )
    llm = Qwen2ForCausalLM(Qwen2Config(**sizes["llm"]))
    decoder = CaptionDecoder(llm, sizes["text"]["hidden_size"])
    return vae, unet, text, encoder, decoder, DDPMScheduler(num_train_timesteps=1000)


class ReferenceStage1(torch.nn.Module):
    """The official step: VAE encode every step (fp32), UNet gradient checkpointing."""

    def __init__(self, vae, objective: Stage1Objective):
        super().__init__()
        self.vae, self.objective = vae, objective
        objective.teacher.unet.enable_gradient_checkpointing()

    def forward(self, batch):
        (pixels,) = batch
        with torch.no_grad():
            dist = self.vae.encode(pixels).latent_dist
        return self.objective((pixels, dist.mean, dist.std))


class ReferenceStage2(torch.nn.Module):
    """The official step: encoder and text encoder every step, LLM gradient checkpointing."""

    def __init__(self, encoder, text, decoder):
        super().__init__()
        self.encoder, self.text, self.decoder = encoder, text, decoder
        decoder.llm.gradient_checkpointing_enable()
        decoder.llm.config.use_cache = False

    def forward(self, batch):
        pixels, ids, mask = batch
        with torch.no_grad():
            conditions = encode_embeddings(self.text, self.encoder(pixels))
        return self.decoder(conditions, ids, mask)


def time_steps(objective, batch, steps: int, precision: str, device) -> tuple[float, float]:
    params = [p for p in objective.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-6, betas=(0.9, 0.99), weight_decay=0.01)
    autocast = (
        torch.autocast(device.type, dtype=torch.bfloat16)
        if precision == "bf16"
        else contextlib.nullcontext()
    )
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    for i in range(steps + 2):  # two warm-up steps
        if i == 2:
            if cuda:
                torch.cuda.synchronize()
            start = time.perf_counter()
        with autocast:
            loss = objective(batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    if cuda:
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / steps
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan")
    del optimizer
    return seconds, peak


def batch_sizes(tiny: bool) -> tuple[int, int]:
    if tiny:
        return 2, 2
    paper = yaml.safe_load((ROOT / "conf/paper/parameters.yml").read_text())
    return paper["stage1"]["training"]["batch_size"], paper["stage2"]["training"]["batch_size"]


def count() -> None:
    with torch.device("meta"):
        vae, unet, text, encoder, decoder, _ = build(PAPER)
    for name, module in (
        ("SD-2.1 VAE", vae),
        ("SD-2.1 UNet", unet),
        ("OpenCLIP-H text", text),
        ("Florence-2-large", encoder.florence),
        ("Qwen2.5-3B", decoder.llm),
    ):
        print(f"{name:18s} {sum(p.numel() for p in module.parameters()) / 1e6:9.1f} M")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tiny", action="store_true", help="tiny sizes (CPU ok): CI's check")
    parser.add_argument("--count", action="store_true", help="paper sizes on meta: params only")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch1", type=int, default=None, help="stage-1 per-GPU batch")
    parser.add_argument("--batch2", type=int, default=None, help="stage-2 per-GPU batch")
    args = parser.parse_args()
    if args.count:
        return count()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type != "cuda" and not args.tiny:
        sys.exit("no CUDA device: run with --tiny (tiny sizes) or --count (parameter counts)")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32 in the reference
        torch.backends.cudnn.allow_tf32 = False
    sizes = TINY if args.tiny else PAPER
    b1, b2 = batch_sizes(args.tiny)
    b1, b2 = args.batch1 or b1, args.batch2 or b2
    started = time.perf_counter()
    with device:
        vae, unet, text, encoder, decoder, scheduler = build(sizes)
    side, latent = (
        sizes["resolution"],
        sizes["resolution"] // 2 ** (len(sizes["vae"]["block_out_channels"]) - 1),
    )
    g = torch.Generator(device=device).manual_seed(0)
    pixels = torch.rand(b1, 3, side, side, device=device, generator=g) * 2 - 1
    with torch.no_grad():
        dist = vae.encode(pixels[:1]).latent_dist
    mean = dist.mean.expand(b1, -1, -1, -1).contiguous()
    std = dist.std.expand(b1, -1, -1, -1).contiguous()
    assert mean.shape[-1] == latent
    rows = []

    def stage1(reference: bool):
        parts = {"vae": vae, "text_encoder": text, "unet": unet, "scheduler": scheduler}
        objective = Stage1Objective(encoder, StableDiffusionTeacher("SD 2.1 shaped", parts))
        return (
            (ReferenceStage1(vae, objective), (pixels,))
            if reference
            else (objective, (pixels, mean, std))
        )

    for label, reference, precision in (
        ("ours", False, "bf16"),
        ("ours", False, "fp32"),
        ("reference", True, "fp32"),
    ):
        unet.disable_gradient_checkpointing()
        objective, batch = stage1(reference)
        seconds, peak = time_steps(objective, batch, args.steps, precision, device)
        rows.append(("stage 1", label, precision, b1, seconds, peak))

    encoder.requires_grad_(False)  # stage 2 from the frozen stage-1 encoder (cached outputs)
    ids = torch.randint(4, sizes["llm"]["vocab_size"], (b2, sizes["caption_tokens"]), device=device)
    mask = torch.ones_like(ids)
    with torch.no_grad():
        conditions = encode_embeddings(text, encoder(pixels[:b2]))
    for label, reference, precision in (
        ("ours", False, "bf16"),
        ("ours", False, "fp32"),
        ("reference", True, "fp32"),
    ):
        if reference:
            objective = ReferenceStage2(encoder, text, decoder)
            batch = (pixels[:b2], ids, mask)
        else:
            decoder.llm.gradient_checkpointing_disable()
            decoder.llm.config.use_cache = False
            objective, batch = Stage2Objective(decoder), (conditions, ids, mask)
        seconds, peak = time_steps(objective, batch, args.steps, precision, device)
        rows.append(("stage 2", label, precision, b2, seconds, peak))

    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    print(
        f"\nGPU smoke ({'tiny' if args.tiny else 'paper'} sizes, {side} px, {name}, "
        f"{args.steps} timed steps; total {time.perf_counter() - started:.0f} s)"
    )
    print(
        f"{'stage':8s} {'step':10s} {'precision':9s} {'batch':>5s} {'s/step':>8s} "
        f"{'images/s':>9s} {'peak GiB':>9s} {'speed-up':>9s}"
    )
    for stage in ("stage 1", "stage 2"):
        ref = next(r for r in rows if r[0] == stage and r[1] == "reference")
        for r in (r for r in rows if r[0] == stage):
            print(
                f"{r[0]:8s} {r[1]:10s} {r[2]:9s} {r[3]:5d} {r[4]:8.3f} {r[3] / r[4]:9.1f} "
                f"{r[5]:9.1f} {ref[4] / r[4]:8.2f}x"
            )


if __name__ == "__main__":
    main()
