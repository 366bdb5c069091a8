"""Stage 1 of VLV: distil the frozen T2I decoder into the VLV encoder, on images alone."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vlv_pipeline.errors import ParameterError
from vlv_pipeline.models.teachers import Teacher
from vlv_pipeline.world.data import to_unit_range


def collapse_penalty(embeddings: torch.Tensor) -> torch.Tensor:
    """Mean cosine similarity between different images' embeddings and between positions.

    Both are ~1 when the encoder collapses to one repeated token for every image; the
    term uses no text, only the embeddings themselves (a departure from the paper, which
    had no such term: its encoder starts from a pretrained vision-language model).
    """
    flat = F.normalize(embeddings.flatten(1), dim=-1)
    across_images = flat @ flat.T
    b = flat.shape[0]
    images_term = (across_images.sum() - across_images.diagonal().sum()) / max(1, b * (b - 1))
    tokens = F.normalize(embeddings, dim=-1)
    across_positions = tokens @ tokens.transpose(1, 2)
    n = tokens.shape[1]
    positions_term = (across_positions.sum((1, 2)) - n).mean() / max(1, n * (n - 1))
    return images_term + positions_term


class Stage1Objective(nn.Module):
    """The frozen teacher's training objective, conditioned on the encoder's caption embeddings.

    ``batch`` = (pixels in [-1, 1], cached latent mean, cached latent std). The embeddings
    become the teacher's conditioning (``Teacher.condition``: its frozen text encoders run
    on them as ``inputs_embeds``), and the loss is the teacher family's own objective
    (``Teacher.loss``: noise prediction at uniform timesteps in ``timestep_range`` for
    Stable Diffusion, stratified over the batch with ``stratified_timesteps``). With
    ``noise_draws`` K > 1 each image's embeddings are computed once and scored against K
    fresh (latent sample, noise, timestep) draws.

    With ``features_from_cache`` the encoder's frozen VAE tower is skipped and the cached
    latent mean (the tower's own output, made by the same VAE) feeds the trainable part.
    """

    def __init__(
        self,
        encoder: nn.Module,
        teacher: Teacher,
        timestep_range: tuple[int, int] | None = None,
        noise_draws: int = 1,
        diversity_weight: float = 0.0,
        features_from_cache: bool = False,
        stratified_timesteps: bool = False,
    ):
        super().__init__()
        self.encoder = encoder
        self.teacher = teacher.requires_grad_(False)
        self.timestep_range = timestep_range
        self.noise_draws = noise_draws
        self.diversity_weight = diversity_weight
        if features_from_cache and not getattr(encoder, "reads_vae_latents", False):
            raise ParameterError(
                "features_from_cache needs an encoder whose vision tower is the VAE"
            )
        self.features_from_cache = features_from_cache
        self.stratified_timesteps = stratified_timesteps

    def forward(self, batch) -> torch.Tensor:
        pixels, mean, std = batch
        if self.features_from_cache:
            embeddings = self.encoder.from_features(mean)
        else:  # uint8 batches become floats here, on the device
            embeddings = self.encoder(to_unit_range(pixels))
        condition = self.teacher.condition(embeddings)
        if self.noise_draws > 1:
            condition = condition.repeat_interleave(self.noise_draws)
            mean = mean.repeat_interleave(self.noise_draws, dim=0)
            std = std.repeat_interleave(self.noise_draws, dim=0)
        loss = self.teacher.loss(
            self.teacher.latents(mean, std),
            condition,
            self.timestep_range,
            stratified=self.stratified_timesteps,
        )
        if self.diversity_weight:
            loss = loss + self.diversity_weight * collapse_penalty(embeddings)
        return loss

    def trained_models(self) -> dict[str, nn.Module]:
        """What a checkpoint stores: the encoder (``checkpoint-N/vlv_encoder`` loads with
        ``VLVEncoder.from_pretrained``); the teacher is frozen."""
        return {"vlv_encoder": self.encoder}
