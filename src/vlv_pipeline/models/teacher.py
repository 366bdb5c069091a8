"""The shapes world's teacher: a miniature Stable Diffusion trained by the project.

Real library classes only: diffusers ``AutoencoderKL``, ``UNet2DConditionModel`` and a
scheduler, transformers ``CLIPTextModel`` with the world's tokenizer. What this module
adds are the two training objectives and the assembly into a genuine
``StableDiffusionPipeline`` directory, so downstream code loads "a Stable Diffusion
directory" and cannot tell it from stable-diffusion-2-1-base.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn

from vlv_pipeline.models.diffusion import diffusion_loss, sample_latents
from vlv_pipeline.models.teachers.base import Condition, flow_matching_scheduler

logger = logging.getLogger(__name__)


class VAEObjective(nn.Module):
    """Reconstruction MSE + a small KL term, as latent-diffusion autoencoders are trained."""

    def __init__(self, vae, kl_weight: float = 1e-6):
        super().__init__()
        self.vae = vae
        self.kl_weight = kl_weight

    def forward(self, batch) -> torch.Tensor:
        pixels = batch[0] if isinstance(batch, (list, tuple)) else batch
        posterior = self.vae.encode(pixels).latent_dist
        reconstruction = self.vae.decode(posterior.sample()).sample
        return F.mse_loss(reconstruction, pixels) + self.kl_weight * posterior.kl().mean()

    def trained_models(self) -> dict[str, nn.Module]:
        return {"vae": self.vae}


def _training(parts: dict[str, nn.Module]) -> dict[str, nn.Module]:
    """The modules of ``parts`` with a trainable weight."""
    return {k: m for k, m in parts.items() if any(p.requires_grad for p in m.parameters())}


class _CaptionDropout(nn.Module):
    """What both text-to-image objectives share: the empty prompt's ids, which replace a
    caption with probability ``caption_dropout`` (so classifier-free guidance is available
    at sampling time), and the VAE's latent scaling."""

    def __init__(self, empty_ids: torch.Tensor, scaling_factor: float, caption_dropout: float):
        super().__init__()
        self.register_buffer("empty_ids", empty_ids.view(1, -1), persistent=False)
        self.scaling_factor = scaling_factor
        self.caption_dropout = caption_dropout

    def drop_captions(self, input_ids: torch.Tensor) -> torch.Tensor:
        if self.caption_dropout <= 0:
            return input_ids
        drop = torch.rand(input_ids.shape[0], device=input_ids.device) < self.caption_dropout
        return torch.where(drop[:, None], self.empty_ids, input_ids)


class TextToImageObjective(_CaptionDropout):
    """Caption-conditioned denoising on cached VAE posteriors, with caption dropout.

    ``batch`` = (latent mean, latent std, input_ids). A dropped caption is replaced by the
    empty prompt's ids, so classifier-free guidance is available at sampling time.
    """

    def __init__(
        self,
        unet,
        text_encoder,
        scheduler,
        empty_ids: torch.Tensor,
        scaling_factor: float,
        caption_dropout: float = 0.1,
    ):
        super().__init__(empty_ids, scaling_factor, caption_dropout)
        self.unet = unet
        self.text_encoder = text_encoder
        self.scheduler = scheduler

    def forward(self, batch) -> torch.Tensor:
        mean, std, input_ids = batch
        input_ids = self.drop_captions(input_ids)
        hidden = self.text_encoder(input_ids).last_hidden_state
        latents = sample_latents(mean, std, self.scaling_factor)
        return diffusion_loss(
            lambda noisy, t: self.unet(noisy, t, encoder_hidden_states=hidden).sample,
            self.scheduler,
            latents,
        )

    def trained_models(self) -> dict[str, nn.Module]:
        """The UNet, and the text encoder when it trains too."""
        return _training({"unet": self.unet, "text_encoder": self.text_encoder})


class FlowTextToImageObjective(_CaptionDropout):
    """The shapes world's SD 3-shaped teacher: two CLIPs and an MMDiT trained together with
    flow matching on cached VAE posteriors, with caption dropout.

    The MMDiT reads what ``StableDiffusion3Pipeline.encode_prompt`` gives it without T5: both
    CLIPs' penultimate states concatenated on features (zero-padded to the MMDiT's
    ``joint_attention_dim``) and both pooled projections concatenated. ``batch`` = (latent
    mean, latent std, input_ids); both CLIPs read the same ids (one world tokenizer).
    """

    def __init__(
        self,
        transformer,
        text_encoder,
        text_encoder_2,
        scheduler,
        empty_ids: torch.Tensor,
        scaling_factor: float,
        shift_factor: float = 0.0,
        caption_dropout: float = 0.1,
    ):
        super().__init__(empty_ids, scaling_factor, caption_dropout)
        self.transformer = transformer
        self.text_encoder = text_encoder
        self.text_encoder_2 = text_encoder_2
        self.scheduler = scheduler
        self.shift_factor = shift_factor

    def forward(self, batch) -> torch.Tensor:
        from vlv_pipeline.models.teachers.families import (
            flow_matching_loss,
            pad_to_joint,
            sd3_prompt_condition,
        )

        mean, std, input_ids = batch
        input_ids = self.drop_captions(input_ids)
        text = sd3_prompt_condition(
            (encoder, input_ids) for encoder in (self.text_encoder, self.text_encoder_2)
        )
        states = pad_to_joint(text.states, self.transformer)
        latents = (mean + std * torch.randn_like(std) - self.shift_factor) * self.scaling_factor
        return flow_matching_loss(
            lambda noisy, t: (
                self.transformer(
                    hidden_states=noisy,
                    timestep=t,
                    encoder_hidden_states=states,
                    pooled_projections=text.pooled,
                ).sample
            ),
            self.scheduler,
            latents,
        )

    def trained_models(self) -> dict[str, nn.Module]:
        return _training(
            {
                "transformer": self.transformer,
                "text_encoder": self.text_encoder,
                "text_encoder_2": self.text_encoder_2,
            }
        )


@torch.no_grad()
def encode_posteriors(
    vae, images: torch.Tensor, batch_size: int = 256
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std of the VAE posterior of every image (images in [-1, 1])."""
    means, stds = [], []
    for start in range(0, len(images), batch_size):
        dist = vae.encode(images[start : start + batch_size]).latent_dist
        means.append(dist.mean)
        stds.append(dist.std)
    return torch.cat(means), torch.cat(stds)


def assemble_pipeline(vae, text_encoder, tokenizer, unet, scheduler):
    """A ``StableDiffusionPipeline`` from the parts (no safety checker, no feature extractor)."""
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def assemble_sd3_pipeline(vae, text_encoder, text_encoder_2, tokenizer, transformer, scheduler):
    """A ``StableDiffusion3Pipeline`` without T5 (``text_encoder_3`` and ``tokenizer_3`` None,
    saved as null): both CLIPs read the world tokenizer."""
    from diffusers import StableDiffusion3Pipeline

    return StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=scheduler,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizer,
        text_encoder_3=None,
        tokenizer_3=None,
    )


@torch.no_grad()
def render(
    pipeline,
    *,
    captions: list[str] | None = None,
    conditions: Condition | torch.Tensor | None = None,
    negative: Condition | torch.Tensor | None = None,
    steps: int,
    guidance: float,
    seed: int | None = None,
    batch_size: int = 64,
    scheduler: str | None = "DDIMScheduler",
    generator: torch.Generator | list[torch.Generator] | None = None,
    size: int | None = None,
    call_kwargs: dict | None = None,
) -> torch.Tensor:
    """Render with a Stable Diffusion pipeline; images in [-1, 1], (B, 3, H, W).

    Either ``captions`` (text) or ``conditions`` (a teacher's ``Condition``, or the
    text-encoder outputs (B, N, d) of a family without a pooled vector); with conditions,
    ``negative`` (a batch of one) is what classifier-free guidance (guidance > 1) steers
    away from. One generator seeded once, batches in order: reproducible. Pass a
    ``generator`` instead of ``seed`` to continue its draws across calls (rendering a split
    batch by batch then gives the images one call over the whole split gives), or a list of
    generators, one per image: each image then draws only from its own, so its render does
    not depend on which other images share its batch or call.

    Any diffusers text-to-image pipeline that takes ``prompt`` (Stable Diffusion 1/2, SD 3 and
    3.5 with their three text encoders) renders captions. ``scheduler``: a diffusers scheduler
    class name to sample with, or None for the pipeline's own (SD 3's flow matching); a
    flow-matching pipeline and a noise-prediction scheduler (or the reverse) do not mix and are
    refused. ``size``: the renders' side (None: the pipeline's default; for FLUX, whose
    pipeline would render 1024 px whatever the model, its VAE's ``sample_size``).
    ``call_kwargs``: the family's further arguments to each call (a teacher's
    ``call_kwargs()``: SD 3's ``max_sequence_length``).
    """
    if (captions is None) == (conditions is None):
        raise ValueError("render needs exactly one of captions or conditions")
    if scheduler and type(pipeline.scheduler).__name__ != scheduler:
        pipeline.scheduler = _scheduler(pipeline.scheduler, scheduler)
    pipeline.set_progress_bar_config(disable=True)
    if size is None and _sizes_itself_to_1024(pipeline):
        size = int(pipeline.vae.config.sample_size)
    if (seed is None) == (generator is None):
        raise ValueError("render needs exactly one of seed or generator")
    if generator is None:
        generator = torch.Generator().manual_seed(seed)
    if isinstance(conditions, torch.Tensor):
        conditions = Condition(conditions)
    if isinstance(negative, torch.Tensor):
        negative = Condition(negative)
    total = len(captions) if captions is not None else len(conditions)
    if isinstance(generator, list) and len(generator) != total:
        raise ValueError(f"render got {len(generator)} generators for {total} images")
    out = []
    for start in range(0, total, batch_size):
        if captions is not None:
            inputs = {"prompt": captions[start : start + batch_size]}
        else:
            inputs = conditions[start : start + batch_size].pipeline_inputs(
                negative if guidance > 1 else None
            )
        if size is not None:
            inputs.update(height=size, width=size)
        images = pipeline(
            **inputs,
            num_inference_steps=steps,
            guidance_scale=guidance,
            generator=(
                generator[start : start + batch_size] if isinstance(generator, list) else generator
            ),
            output_type="pt",
            **(call_kwargs or {}),
        ).images
        out.append(images * 2 - 1)
    return torch.cat(out).clamp(-1, 1).float().cpu()


def _sizes_itself_to_1024(pipeline) -> bool:
    """FLUX's pipeline takes 128 latent cells as its default side, not its model's."""
    denoiser = getattr(pipeline, "transformer", None)
    return denoiser is not None and getattr(denoiser.config, "sample_size", None) is None


# what a sampler built from another scheduler's config is set to, whatever that config says:
# DPMSolverMultistepScheduler samples as DPM-Solver++ (its data-prediction form, the one
# for few steps), UniPCMultistepScheduler as UniPC's data-prediction bh2 variant. The rest of
# the config (betas, prediction_type, timestep_spacing, steps_offset) is the model's own.
SAMPLER_SETTINGS: dict[str, dict] = {
    "DPMSolverMultistepScheduler": {"algorithm_type": "dpmsolver++", "solver_order": 2},
    "UniPCMultistepScheduler": {"predict_x0": True, "solver_type": "bh2", "solver_order": 2},
}


def _scheduler(current, name: str):
    """A ``name`` scheduler from ``current``'s config (with ``SAMPLER_SETTINGS``). A
    flow-matching model (SD 3, FLUX) named a noise-prediction sampler (the samplers conf
    names for Stable Diffusion teachers) keeps its own, with a warning: the one-line switch of
    ``t2i`` to such a teacher needs no other key. A flow-matching sampler for a
    noise-prediction model would sample nonsense, and is refused."""
    import diffusers

    from vlv_pipeline.errors import ParameterError

    made = getattr(diffusers, name, None)
    if not (isinstance(made, type) and name.endswith("Scheduler")):
        raise ParameterError(f"scheduler {name!r} is not a diffusers scheduler class")
    own = type(current).__name__
    if flow_matching_scheduler(own) and not flow_matching_scheduler(name):
        logger.warning(
            "sampler %s does not apply to a flow-matching model: it samples with its own %s "
            "(set the sampling scheduler to null to say so)",
            name,
            own,
        )
        return current
    if flow_matching_scheduler(own) != flow_matching_scheduler(name):
        raise ParameterError(
            f"scheduler {name!r} cannot sample a model trained for {own} "
            "(flow matching and noise prediction do not mix): set the scheduler to null to "
            "sample with the pipeline's own"
        )
    return made.from_config(current.config, **SAMPLER_SETTINGS.get(name, {}))


def render_captions(pipeline, captions: list[str], **kwargs) -> torch.Tensor:
    """Render caption texts (see ``render``)."""
    return render(pipeline, captions=captions, **kwargs)
