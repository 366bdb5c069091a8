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


def _first_clip(cls, tok, params: RehearsalParams, extra: FamilyParts, family: str, *needs: str):
    """The family's first CLIP text encoder: conf's ``text_encoder`` with the family's
    overrides, once the family's block is checked for the ``needs`` parts."""
    _need(extra, *needs, family=family)
    return _clip(cls, tok, {**params.text_encoder, **extra.text_encoder})


def _vae(params: RehearsalParams, extra: FamilyParts):
    """Conf's VAE with the family's overrides."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(**{**params.vae, **extra.vae})


def _flow_parts(cls, params: RehearsalParams, extra: FamilyParts, t5, pooled: int, **derived):
    """A flow-matching family's transformer (``cls``: its joint width the T5's, its pooled
    width ``pooled``, then the ``derived`` widths), VAE and scheduler, built in that order."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    config = dict(extra.transformer)
    config["joint_attention_dim"] = t5.config.d_model
    config["pooled_projection_dim"] = pooled
    transformer = cls(**{**config, **derived})
    return transformer, _vae(params, extra), FlowMatchEulerDiscreteScheduler(**extra.scheduler)


def _assembled(cls, parts: dict, tok, scheduler, **kwargs):
    """A ``cls`` pipeline of the models ``parts``, the world tokenizer for each of their text
    encoders and ``scheduler``; with ``parts``, whose sizes `build_t2i` logs."""
    tokenizers = {
        "tokenizer" + name.removeprefix("text_encoder"): tok
        for name in parts
        if name.startswith("text_encoder")
    }
    return cls(**parts, **tokenizers, scheduler=scheduler, **kwargs), parts


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
    from diffusers import DDPMScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    one = _first_clip(CLIPTextModel, tok, params, extra, "stable-diffusion-xl", "text_encoder_2")
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
    parts = {"vae": _vae(params, extra), "unet": unet, "text_encoder": one, "text_encoder_2": two}
    scheduler = DDPMScheduler(**{**params.scheduler, **extra.scheduler})
    return _assembled(StableDiffusionXLPipeline, parts, tok, scheduler, add_watermarker=False)


def _sd3(tok, params: RehearsalParams, extra: FamilyParts):
    from diffusers import SD3Transformer2DModel, StableDiffusion3Pipeline
    from transformers import CLIPTextModelWithProjection

    needs = ("text_encoder_2", "text_encoder_3")
    one = _first_clip(CLIPTextModelWithProjection, tok, params, extra, "stable-diffusion-3", *needs)
    two = _clip(CLIPTextModelWithProjection, tok, extra.text_encoder_2)
    three = _t5(tok, extra.text_encoder_3)
    heads = extra.transformer
    transformer, vae, scheduler = _flow_parts(
        SD3Transformer2DModel,
        params,
        extra,
        three,
        one.config.projection_dim + two.config.projection_dim,
        caption_projection_dim=heads["num_attention_heads"] * heads["attention_head_dim"],
    )
    parts = {"vae": vae, "transformer": transformer, "text_encoder": one}
    parts |= {"text_encoder_2": two, "text_encoder_3": three}
    return _assembled(StableDiffusion3Pipeline, parts, tok, scheduler)


def _flux(tok, params: RehearsalParams, extra: FamilyParts):
    from diffusers import FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextModel

    one = _first_clip(CLIPTextModel, tok, params, extra, "flux", "text_encoder_2")
    two = _t5(tok, extra.text_encoder_2)
    transformer, vae, scheduler = _flow_parts(
        FluxTransformer2DModel, params, extra, two, one.config.hidden_size
    )
    parts = {"vae": vae, "transformer": transformer, "text_encoder": one, "text_encoder_2": two}
    return _assembled(FluxPipeline, parts, tok, scheduler)


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
