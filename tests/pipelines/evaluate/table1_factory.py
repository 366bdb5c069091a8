"""Shared by Table 1's tests: a COCO-format set made of the tiny shapes world's images (their
own captions as COCO's), evaluate parameters for it, and a tiny SD 3 pipeline built from
configs (two CLIP text encoders with projection, T5, a 16-channel VAE, flow matching)."""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image

from vlv_pipeline.benchmarks.coco import write_coco_set
from vlv_pipeline.params.evaluate import EvaluateParams
from vlv_pipeline.training.data import ImagePixels


def world_as_coco(tiny_world, folder: Path, extra_captions: int = 1) -> tuple[Path, Path]:
    """Every image of the tiny world written as COCO val2014 (ids 1..N), its caption first,
    then ``extra_captions`` paraphrases (so the reference is the first)."""
    source, manifest = tiny_world
    rows = manifest.sort_values("image_id")
    pixels = ImagePixels.of_manifest(source, rows, None)
    images = []
    for i, caption in enumerate(rows["caption"]):
        image = Image.fromarray(pixels[i].permute(1, 2, 0).numpy())
        images.append((image, [caption, *(f"{caption}, again {k}" for k in range(extra_captions))]))
    return write_coco_set(folder, images)


def coco_params(tiny_sd, annotations: Path, images: Path, sample: int = 5, **kw) -> EvaluateParams:
    values = dict(
        render_t2i=str(tiny_sd),
        source="coco",
        coco={"annotations": str(annotations), "images": str(images), "sample": sample},
        resolution=16,
        sampling={"steps": 2, "batch_size": 4},
        judge="pixels",
        probe=None,
        captioners=[{"kind": "reference"}, {"kind": "chance"}],
    )
    return EvaluateParams(**{**values, **kw})


def build_tiny_sd3(path: Path) -> Path:
    """A StableDiffusion3Pipeline directory, built from configs with random weights: 16 px
    renders (2 x 2 latent patches of 16 channels), the world tokenizer for all three text
    encoders. Loaded back through ``DiffusionPipeline.from_pretrained`` as SD 3.5 Medium is."""
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        SD3Transformer2DModel,
        StableDiffusion3Pipeline,
    )
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, T5Config, T5EncoderModel

    from vlv_pipeline.params.world import WorldParams
    from vlv_pipeline.world import Vocabulary, build_world_tokenizer

    torch.manual_seed(0)
    tokenizer = build_world_tokenizer(Vocabulary.from_params(WorldParams()))

    def clip(width: int):
        return CLIPTextModelWithProjection(
            CLIPTextConfig(
                vocab_size=len(tokenizer),
                hidden_size=width,
                intermediate_size=2 * width,
                num_hidden_layers=1,
                num_attention_heads=2,
                max_position_embeddings=77,
                projection_dim=width,
                pad_token_id=0,
                bos_token_id=1,
                eos_token_id=2,
            )
        )

    t5 = T5EncoderModel(
        T5Config(
            vocab_size=len(tokenizer),
            d_model=32,
            d_ff=64,
            d_kv=8,
            num_layers=1,
            num_heads=2,
            pad_token_id=0,
            eos_token_id=2,
        )
    )
    transformer = SD3Transformer2DModel(
        sample_size=8,
        patch_size=2,
        in_channels=16,
        out_channels=16,
        num_layers=1,
        attention_head_dim=8,
        num_attention_heads=2,
        joint_attention_dim=32,  # T5's width; the CLIP outputs (16 + 16) are padded to it
        caption_projection_dim=16,
        pooled_projection_dim=32,  # the two CLIP projections side by side
        pos_embed_max_size=16,
    )
    vae = AutoencoderKL(
        down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
        up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"],
        block_out_channels=[8, 8],
        layers_per_block=1,
        latent_channels=16,
        norm_num_groups=4,
        sample_size=16,
        scaling_factor=1.5305,  # SD 3.5's
        shift_factor=0.0609,
        use_quant_conv=False,
        use_post_quant_conv=False,
    )
    StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=vae,
        text_encoder=clip(16),
        tokenizer=tokenizer,
        text_encoder_2=clip(16),
        tokenizer_2=tokenizer,
        text_encoder_3=t5,
        tokenizer_3=tokenizer,
    ).save_pretrained(path)
    return path
