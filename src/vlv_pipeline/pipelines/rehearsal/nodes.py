"""Nodes of the `rehearsal` pipeline."""

from __future__ import annotations

import logging

import torch

from vlv_pipeline.models.teacher import assemble_pipeline
from vlv_pipeline.params.rehearsal import RehearsalParams

logger = logging.getLogger(__name__)


def build_t2i(world_tokenizer, params: RehearsalParams):
    """A ``StableDiffusionPipeline`` of the paper's classes (SD 2.1's block layout: three
    cross-attention stages and a plain one, linear projections), tiny and randomly
    initialised. The CLIP text encoder reads the world tokenizer's vocabulary."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(params.seed)
    text_config = {
        "vocab_size": len(world_tokenizer),
        "pad_token_id": world_tokenizer.pad_token_id,
        "bos_token_id": world_tokenizer.bos_token_id,
        "eos_token_id": world_tokenizer.eos_token_id,
        **params.text_encoder,
    }
    text_encoder = CLIPTextModel(CLIPTextConfig(**text_config))
    unet = UNet2DConditionModel(
        **{"cross_attention_dim": text_encoder.config.hidden_size, **params.unet}
    )
    vae = AutoencoderKL(**params.vae)
    pipeline = assemble_pipeline(
        vae, text_encoder, world_tokenizer, unet, DDPMScheduler(**params.scheduler)
    )
    sizes = {
        name: sum(p.numel() for p in part.parameters())
        for name, part in (("vae", vae), ("unet", unet), ("text_encoder", text_encoder))
    }
    logger.info("rehearsal T2I (random weights): parameters %s", sizes)
    return pipeline
