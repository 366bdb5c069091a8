"""One teacher per model family. A fifth family is a subclass here plus a line in
``FAMILIES`` (``__init__.py``); nothing downstream changes."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vlv_pipeline.errors import ParameterError
from vlv_pipeline.models.diffusion import diffusion_loss
from vlv_pipeline.models.provenance_fingerprints import FED_ENCODERS
from vlv_pipeline.models.teachers.base import Condition, Teacher, _absent
from vlv_pipeline.models.text_encoder import (
    encode_embeddings,
    encoder_states,
    final_norm,
    pooled_output,
)


def _tokens(tokenizer, texts: list[str], device) -> torch.Tensor:
    return tokenizer(
        texts,
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids.to(device)


def _width(encoders) -> int:
    """The features of the encoders' states, concatenated."""
    return sum(int(e.config.hidden_size) for e in encoders)


def penultimate_states(pairs) -> tuple[torch.Tensor, list]:
    """Each (CLIP, token ids) pair read as SDXL's and SD 3's pipelines read a prompt: the
    CLIPs' penultimate hidden states, concatenated on features, and each CLIP's output."""
    outputs = [encoder(ids, output_hidden_states=True) for encoder, ids in pairs]
    return torch.cat([o.hidden_states[-2] for o in outputs], -1), outputs


def sd3_prompt_condition(pairs) -> Condition:
    """SD 3's text conditioning without T5 (``StableDiffusion3Pipeline.encode_prompt``) from
    (CLIP with projection, token ids) pairs: their penultimate states concatenated on
    features, their pooled projections concatenated."""
    states, outputs = penultimate_states(pairs)
    return Condition(states, torch.cat([o.text_embeds for o in outputs], -1))


def pad_to_joint(states: torch.Tensor, transformer) -> torch.Tensor:
    """CLIP states zero-padded on features to the MMDiT's ``joint_attention_dim``."""
    joint = int(transformer.config.joint_attention_dim)
    return F.pad(states, (0, joint - states.shape[-1]))


class StableDiffusionTeacher(Teacher):
    """Stable Diffusion 1.x / 2.x (the paper's SD 2.1, the shapes world's teacher): one CLIP
    text encoder whose last (normed) state the UNet cross-attends to; noise prediction."""

    family = "stable-diffusion"
    pipeline_classes = ("StableDiffusionPipeline",)
    parts = {
        "vae": "vae",
        "text_encoder": "text_encoder",
        "tokenizer": "tokenizer",
        "unet": "unet",
        "scheduler": "scheduler",
    }
    fed_encoders = FED_ENCODERS["StableDiffusionPipeline"]

    @property
    def condition_width(self) -> int:
        return int(self.text_encoder.config.hidden_size)

    def condition(self, embeddings: torch.Tensor) -> Condition:
        (part,) = self.split(embeddings)
        return Condition(encode_embeddings(self.text_encoder, part))

    @torch.no_grad()
    def empty_condition(self, length: int) -> Condition:
        """The empty prompt's condition, cut to ``length`` positions (causal: a prefix is exact)."""
        ids = _tokens(self.tokenizer, [""], self.text_encoder.device)
        return Condition(self.text_encoder(ids).last_hidden_state[:, :length])

    def loss(self, latents, condition, timestep_range=None, stratified=False):
        return diffusion_loss(
            lambda noisy, t: self.unet(noisy, t, encoder_hidden_states=condition.states).sample,
            self.noise_scheduler,
            latents,
            timestep_range,
            stratified,
        )

    def pipeline(self):
        from vlv_pipeline.models.teacher import assemble_pipeline

        return assemble_pipeline(
            self.vae, self.text_encoder, self.tokenizer, self.unet, self.scheduler
        )


class StableDiffusionXLTeacher(Teacher):
    """SDXL: two CLIP text encoders. The UNet cross-attends to both encoders' penultimate
    states, concatenated on features, and reads the second encoder's pooled projection
    with the size and crop conditioning (``add_time_ids``); noise prediction.

    The VLV queries feed both encoders (each its own slice of the features). The time ids
    say what a training image is: its side as the original and target size, no crop."""

    family = "stable-diffusion-xl"
    pipeline_classes = ("StableDiffusionXLPipeline",)
    parts = {
        "vae": "vae",
        "text_encoder": "text_encoder",
        "text_encoder_2": "text_encoder_with_projection",
        "tokenizer": "tokenizer",
        "tokenizer_2": "tokenizer",
        "unet": "unet",
        "scheduler": "scheduler",
    }
    fed_encoders = FED_ENCODERS["StableDiffusionXLPipeline"]

    @property
    def condition_width(self) -> int:
        return _width((self.text_encoder, self.text_encoder_2))

    def condition(self, embeddings: torch.Tensor) -> Condition:
        first, second = self.split(embeddings)
        states_2 = encoder_states(self.text_encoder_2, second)
        pooled = pooled_output(self.text_encoder_2, final_norm(self.text_encoder_2, states_2[-1]))
        states = torch.cat([encoder_states(self.text_encoder, first)[-2], states_2[-2]], -1)
        return Condition(states, pooled)

    @property
    def force_zeros_for_empty_prompt(self) -> bool:
        return bool(self.index.get("force_zeros_for_empty_prompt", True))

    @torch.no_grad()
    def empty_condition(self, length: int) -> Condition:
        """SDXL's unconditional input: zeros where the model says so (SDXL base does), else
        the empty prompt through both encoders; ``length`` positions."""
        if self.force_zeros_for_empty_prompt:
            width = _width((self.text_encoder, self.text_encoder_2))
            projection = self.text_encoder_2.config.projection_dim
            weight = self.text_encoder.get_input_embeddings().weight
            zeros = torch.zeros(1, length, width, device=weight.device, dtype=weight.dtype)
            return Condition(zeros, zeros.new_zeros(1, projection))
        device = self.text_encoder.device
        states, (_, two) = penultimate_states(
            [
                (self.text_encoder, _tokens(self.tokenizer, [""], device)),
                (self.text_encoder_2, _tokens(self.tokenizer_2, [""], device)),
            ]
        )
        return Condition(states[:, :length], two.text_embeds)

    def pipeline_kwargs(self) -> dict:
        return {
            "force_zeros_for_empty_prompt": self.force_zeros_for_empty_prompt,
            "add_watermarker": False,
        }

    def time_ids(self, latents: torch.Tensor) -> torch.Tensor:
        """(original size, crop top-left, target size) of square training images."""
        side = latents.shape[-1] * self.vae_scale_factor
        row = torch.tensor([side, side, 0, 0, side, side], dtype=latents.dtype)
        return row.to(latents.device).expand(latents.shape[0], -1)

    def loss(self, latents, condition, timestep_range=None, stratified=False):
        added = {"text_embeds": condition.pooled, "time_ids": self.time_ids(latents)}

        def denoise(noisy, t):
            return self.unet(
                noisy, t, encoder_hidden_states=condition.states, added_cond_kwargs=added
            ).sample

        return diffusion_loss(denoise, self.noise_scheduler, latents, timestep_range, stratified)


# --------------------------------------------------------------------------- flow matching


def flow_matching_draws(
    scheduler, n: int, timestep_range, stratified: bool, device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Timesteps and sigmas of ``n`` training draws on a flow-matching schedule, as SD 3's and
    FLUX's training scripts draw them: u logit-normal (mean 0, std 1), the schedule's entry
    at index ``u * N``. ``timestep_range`` [low, high) keeps the entries whose timestep (0 to
    1000) lies in it; ``stratified`` draws u at evenly spread quantiles, in random order."""
    timesteps = scheduler.timesteps.to(device)
    sigmas = scheduler.sigmas[: len(timesteps)].to(device)
    keep = torch.arange(len(timesteps), device=device)
    if timestep_range is not None:
        low, high = timestep_range
        keep = keep[(timesteps >= low) & (timesteps < high)]
        if not len(keep):
            raise ParameterError(f"timestep_range {timestep_range} holds no training timestep")
    q = torch.rand(n, device=device)
    if stratified:
        q = ((torch.arange(n, device=device) + q) / n)[torch.randperm(n, device=device)]
    u = torch.sigmoid(torch.special.ndtri(q.clamp(1e-6, 1 - 1e-6)))  # logit-normal(0, 1)
    index = keep[(u * len(keep)).long().clamp(max=len(keep) - 1)]
    return timesteps[index], sigmas[index]


def flow_matching_loss(
    predict, scheduler, latents, timestep_range=None, stratified: bool = False
) -> torch.Tensor:
    """Rectified flow: x_t = (1 - sigma) x0 + sigma noise; the denoiser predicts noise - x0."""
    timesteps, sigmas = flow_matching_draws(
        scheduler, latents.shape[0], timestep_range, stratified, latents.device
    )
    noise = torch.randn_like(latents)
    sigma = sigmas.view(-1, *([1] * (latents.ndim - 1))).to(latents.dtype)
    noisy = (1 - sigma) * latents + sigma * noise
    prediction = predict(noisy, timesteps.to(latents.dtype))
    return F.mse_loss(prediction.float(), (noise - latents).float())


class StableDiffusion3Teacher(Teacher):
    """SD 3 / 3.5: CLIP-L, CLIP-G and T5 read by an MMDiT (``SD3Transformer2DModel``) with
    flow matching. The MMDiT attends to the CLIPs' penultimate states (concatenated on
    features, zero-padded to T5's width) followed by T5's states along the sequence, and
    reads both CLIPs' pooled projections.

    The VLV queries feed the two CLIPs only; T5's part is zeros, as the pipeline gives the
    MMDiT when it runs without T5 (SD 3 was trained with T5 dropped): back-propagating
    through T5-XXL (4.7B) is what a stage-1 step cannot afford. ``condition`` returns the
    CLIP part (what stage 2 reads); ``denoiser_condition`` adds the padding and T5's zeros."""

    family = "stable-diffusion-3"
    pipeline_classes = ("StableDiffusion3Pipeline",)
    parts = {
        "vae": "vae",
        "text_encoder": "text_encoder_with_projection",
        "text_encoder_2": "text_encoder_with_projection",
        "text_encoder_3": "t5_encoder",
        "tokenizer": "tokenizer",
        "tokenizer_2": "tokenizer",
        "tokenizer_3": "tokenizer",
        "transformer": "sd3_transformer",
        "scheduler": "scheduler",
    }
    fed_encoders = FED_ENCODERS["StableDiffusion3Pipeline"]
    denoiser_name = "transformer"
    training_scheduler = "FlowMatchEulerDiscreteScheduler"
    optional_parts = ("text_encoder_3", "tokenizer_3")

    @property
    def t5_length(self) -> int:
        """How many T5 positions (zeros) follow the CLIP states. 256, the pipeline's default
        ``max_sequence_length``, for a model built with T5 (SD 3.5), loaded or not; none for a
        model built without it (``text_encoder_3: [null, null]`` in its model_index.json, as
        the shapes world's flow-matching teacher): its MMDiT never saw T5 positions."""
        return 0 if _absent(self.index, "text_encoder_3") else 256

    def call_kwargs(self) -> dict:
        return {"max_sequence_length": self.t5_length}

    @property
    def condition_width(self) -> int:
        return _width((self.text_encoder, self.text_encoder_2))

    def condition(self, embeddings: torch.Tensor) -> Condition:
        states, pooled = [], []
        for encoder, part in zip(self._fed(), self.split(embeddings), strict=True):
            hidden = encoder_states(encoder, part)
            states.append(hidden[-2])
            pooled.append(pooled_output(encoder, final_norm(encoder, hidden[-1])))
        return Condition(torch.cat(states, -1), torch.cat(pooled, -1))

    def denoiser_condition(self, condition: Condition) -> Condition:
        states = pad_to_joint(condition.states, self.transformer)
        t5 = states.new_zeros(states.shape[0], self.t5_length, states.shape[-1])
        return Condition(torch.cat([states, t5], dim=-2), condition.pooled)

    @torch.no_grad()
    def empty_condition(self, length: int) -> Condition:
        """The empty prompt through both CLIPs (SD 3's negative), ``length`` positions."""
        empty = sd3_prompt_condition(
            (encoder, _tokens(tokenizer, [""], encoder.device))
            for encoder, tokenizer in (
                (self.text_encoder, self.tokenizer),
                (self.text_encoder_2, self.tokenizer_2),
            )
        )
        return Condition(empty.states[:, :length], empty.pooled)

    def loss(self, latents, condition, timestep_range=None, stratified=False):
        full = self.denoiser_condition(condition)

        def predict(noisy, timesteps):
            return self.transformer(
                hidden_states=noisy,
                timestep=timesteps,
                encoder_hidden_states=full.states,
                pooled_projections=full.pooled,
            ).sample

        return flow_matching_loss(
            predict, self.noise_scheduler, latents, timestep_range, stratified
        )


class FluxTeacher(Teacher):
    """FLUX.1: T5's states as the sequence, CLIP-L's pooled output, a transformer over packed
    2x2 latent patches with flow matching, and (FLUX.1-dev, schnell has none) a guidance
    embedding instead of classifier-free guidance.

    The VLV queries feed both encoders (CLIP-L's slice first, then T5's): FLUX reads
    nearly everything from T5, and CLIP-L only through its pooled vector. Training passes the
    guidance value diffusers' FLUX training uses (3.5); renders pass ``guidance`` as the
    pipeline's ``guidance_scale``, with no negative."""

    family = "flux"
    pipeline_classes = ("FluxPipeline",)
    parts = {
        "vae": "vae",
        "text_encoder": "text_encoder",
        "text_encoder_2": "t5_encoder",
        "tokenizer": "tokenizer",
        "tokenizer_2": "tokenizer",
        "transformer": "flux_transformer",
        "scheduler": "scheduler",
    }
    fed_encoders = FED_ENCODERS["FluxPipeline"]
    denoiser_name = "transformer"
    training_scheduler = "FlowMatchEulerDiscreteScheduler"
    uses_negative = False
    training_guidance = 3.5

    @property
    def condition_width(self) -> int:
        return int(self.text_encoder_2.config.d_model)

    @property
    def native_resolution(self) -> int:
        """The VAE's own side (FLUX's transformer has no ``sample_size``, and its pipeline
        would render 1024 px whatever the model)."""
        return int(self.vae.config.sample_size)

    def condition(self, embeddings: torch.Tensor) -> Condition:
        clip, t5 = self.split(embeddings)
        hidden = encoder_states(self.text_encoder, clip)[-1]
        pooled = pooled_output(self.text_encoder, final_norm(self.text_encoder, hidden))
        return Condition(self.text_encoder_2(inputs_embeds=t5).last_hidden_state, pooled)

    @torch.no_grad()
    def empty_condition(self, length: int) -> Condition:
        device = self.text_encoder.device
        pooled = self.text_encoder(_tokens(self.tokenizer, [""], device)).pooler_output
        states = self.text_encoder_2(_tokens(self.tokenizer_2, [""], device)).last_hidden_state
        return Condition(states[:, :length], pooled)

    def loss(self, latents, condition, timestep_range=None, stratified=False):
        from diffusers import FluxPipeline

        b, c, h, w = latents.shape
        image_ids = FluxPipeline._prepare_latent_image_ids(
            b, h // 2, w // 2, latents.device, latents.dtype
        )
        text_ids = latents.new_zeros(condition.states.shape[1], 3)
        guidance = None
        if self.transformer.config.guidance_embeds:
            guidance = latents.new_full((b,), self.training_guidance)

        def predict(noisy, timesteps):
            packed = FluxPipeline._pack_latents(noisy, b, c, h, w)
            out = self.transformer(
                hidden_states=packed,
                timestep=timesteps / 1000,
                guidance=guidance,
                pooled_projections=condition.pooled,
                encoder_hidden_states=condition.states,
                txt_ids=text_ids,
                img_ids=image_ids,
            ).sample
            side = self.vae_scale_factor
            return FluxPipeline._unpack_latents(out, h * side, w * side, side)

        return flow_matching_loss(
            predict, self.noise_scheduler, latents, timestep_range, stratified
        )
