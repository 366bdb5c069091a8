"""Nodes of the `rehearsal` pipeline."""

from __future__ import annotations

import logging

import torch

from vlv_pipeline.errors import ParameterError
from vlv_pipeline.models.teacher import assemble_pipeline
from vlv_pipeline.params.rehearsal import FamilyParts, RehearsalParams

logger = logging.getLogger(__name__)

BLOCKS = {"stable-diffusion-xl": "sdxl", "stable-diffusion-3": "sd3", "flux": "flux"}


def _ids(world_tokenizer) -> dict:
    return {
        "vocab_size": len(world_tokenizer),
        "pad_token_id": world_tokenizer.pad_token_id,
        "eos_token_id": world_tokenizer.eos_token_id,
    }


def _clip(cls, world_tokenizer, config: dict):
    from transformers import CLIPTextConfig

    ids = {**_ids(world_tokenizer), "bos_token_id": world_tokenizer.bos_token_id}
    return cls(CLIPTextConfig(**ids, **config))


def _t5(world_tokenizer, config: dict):
    from transformers import T5Config, T5EncoderModel

    ids = {**_ids(world_tokenizer), "decoder_start_token_id": world_tokenizer.pad_token_id}
    return T5EncoderModel(T5Config(**ids, **config))


def _need(extra: FamilyParts, *names: str, family: str) -> None:
    missing = [n for n in names if getattr(extra, n) is None]
    if missing:
        raise ParameterError(f"rehearsal.{BLOCKS[family]} needs {missing} for family {family}")


def _sd(tok, params: RehearsalParams, extra: FamilyParts | None):
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel

    text_encoder = _clip(CLIPTextModel, tok, params.text_encoder)
    unet = UNet2DConditionModel(
        **{"cross_attention_dim": text_encoder.config.hidden_size, **params.unet}
    )
    vae = AutoencoderKL(**params.vae)
    pipeline = assemble_pipeline(vae, text_encoder, tok, unet, DDPMScheduler(**params.scheduler))
    return pipeline, {"vae": vae, "unet": unet, "text_encoder": text_encoder}


def _sdxl(tok, params: RehearsalParams, extra: FamilyParts):
    from diffusers import (
        AutoencoderKL,
        DDPMScheduler,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    _need(extra, "text_encoder_2", family="stable-diffusion-xl")
    one = _clip(CLIPTextModel, tok, {**params.text_encoder, **extra.text_encoder})
    two = _clip(CLIPTextModelWithProjection, tok, extra.text_encoder_2)
    config = {**params.unet, **extra.unet}
    time_dim = config.get("addition_time_embed_dim")
    if config.get("addition_embed_type") != "text_time" or not time_dim:
        raise ParameterError(
            "rehearsal.sdxl.unet needs addition_embed_type: text_time and an "
            "addition_time_embed_dim (SDXL's size and crop conditioning)"
        )
    config["cross_attention_dim"] = one.config.hidden_size + two.config.hidden_size
    config["projection_class_embeddings_input_dim"] = two.config.projection_dim + 6 * time_dim
    unet = UNet2DConditionModel(**config)
    vae = AutoencoderKL(**{**params.vae, **extra.vae})
    pipeline = StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=one,
        text_encoder_2=two,
        tokenizer=tok,
        tokenizer_2=tok,
        unet=unet,
        scheduler=DDPMScheduler(**{**params.scheduler, **extra.scheduler}),
        add_watermarker=False,
    )
    return pipeline, {"vae": vae, "unet": unet, "text_encoder": one, "text_encoder_2": two}


def _sd3(tok, params: RehearsalParams, extra: FamilyParts):
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        SD3Transformer2DModel,
        StableDiffusion3Pipeline,
    )
    from transformers import CLIPTextModelWithProjection

    _need(extra, "text_encoder_2", "text_encoder_3", family="stable-diffusion-3")
    one = _clip(CLIPTextModelWithProjection, tok, {**params.text_encoder, **extra.text_encoder})
    two = _clip(CLIPTextModelWithProjection, tok, extra.text_encoder_2)
    three = _t5(tok, extra.text_encoder_3)
    config = dict(extra.transformer)
    config["joint_attention_dim"] = three.config.d_model
    config["pooled_projection_dim"] = one.config.projection_dim + two.config.projection_dim
    config["caption_projection_dim"] = config["num_attention_heads"] * config["attention_head_dim"]
    transformer = SD3Transformer2DModel(**config)
    vae = AutoencoderKL(**{**params.vae, **extra.vae})
    pipeline = StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(**extra.scheduler),
        vae=vae,
        text_encoder=one,
        tokenizer=tok,
        text_encoder_2=two,
        tokenizer_2=tok,
        text_encoder_3=three,
        tokenizer_3=tok,
    )
    parts = {"vae": vae, "transformer": transformer, "text_encoder": one}
    return pipeline, {**parts, "text_encoder_2": two, "text_encoder_3": three}


def _flux(tok, params: RehearsalParams, extra: FamilyParts):
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        FluxPipeline,
        FluxTransformer2DModel,
    )
    from transformers import CLIPTextModel

    _need(extra, "text_encoder_2", family="flux")
    one = _clip(CLIPTextModel, tok, {**params.text_encoder, **extra.text_encoder})
    two = _t5(tok, extra.text_encoder_2)
    config = dict(extra.transformer)
    config["joint_attention_dim"] = two.config.d_model
    config["pooled_projection_dim"] = one.config.hidden_size
    transformer = FluxTransformer2DModel(**config)
    vae = AutoencoderKL(**{**params.vae, **extra.vae})
    pipeline = FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(**extra.scheduler),
        vae=vae,
        text_encoder=one,
        tokenizer=tok,
        text_encoder_2=two,
        tokenizer_2=tok,
        transformer=transformer,
    )
    return pipeline, {
        "vae": vae,
        "transformer": transformer,
        "text_encoder": one,
        "text_encoder_2": two,
    }


BUILDERS = {
    "stable-diffusion": _sd,
    "stable-diffusion-xl": _sdxl,
    "stable-diffusion-3": _sd3,
    "flux": _flux,
}


def build_t2i(world_tokenizer, params: RehearsalParams):
    """A diffusers text-to-image pipeline of ``params.family``'s classes, tiny and randomly
    initialised: ``StableDiffusionPipeline`` (SD 2.1's block layout: three cross-attention
    stages and a plain one, linear projections), ``StableDiffusionXLPipeline`` (two CLIP
    text encoders, a UNet with SDXL's ``text_time`` conditioning), ``StableDiffusion3Pipeline``
    (two CLIPs with projections, T5, an MMDiT, flow matching) or ``FluxPipeline`` (CLIP-L,
    T5, a FLUX transformer, flow matching). The text encoders read the world tokenizer's
    vocabulary."""
    torch.manual_seed(params.seed)
    extra = getattr(params, BLOCKS[params.family]) if params.family in BLOCKS else None
    if params.family in BLOCKS and extra is None:
        block = BLOCKS[params.family]
        raise ParameterError(f"rehearsal.family {params.family} needs a rehearsal.{block} block")
    pipeline, parts = BUILDERS[params.family](world_tokenizer, params, extra)
    sizes = {name: sum(p.numel() for p in part.parameters()) for name, part in parts.items()}
    logger.info("rehearsal T2I (%s, random weights): parameters %s", params.family, sizes)
    return pipeline
