"""Small helpers shared by every diffusion objective (teacher and stage 1)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vlv_pipeline.errors import InputError


def diffusion_target(
    scheduler, latents: torch.Tensor, noise: torch.Tensor, timesteps
) -> torch.Tensor:
    """The regression target the scheduler's ``prediction_type`` asks for."""
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return noise
    if kind == "v_prediction":
        return scheduler.get_velocity(latents, noise, timesteps)
    if kind == "sample":
        return latents
    raise InputError(f"unsupported scheduler prediction_type {kind!r}")


def diffusion_loss(
    denoise,
    scheduler,
    latents: torch.Tensor,
    timestep_range: tuple[int, int] | None = None,
    stratified: bool = False,
) -> torch.Tensor:
    """Noise ``latents`` at uniform random timesteps and regress the scheduler's target.

    ``denoise(noisy, timesteps)`` is the conditioned denoiser's prediction (a UNet with its
    condition bound). ``timestep_range`` is ``[low, high)``; default is the scheduler's whole
    training range. Fresh noise and a fresh timestep are drawn per sample. ``stratified``
    still draws each timestep uniformly, but the batch covers the range evenly (one draw per
    equal slice, in random order): the same expected loss with less variance between batches.
    """
    low, high = timestep_range or (0, scheduler.config.num_train_timesteps)
    noise = torch.randn_like(latents)
    timesteps = draw_timesteps(latents.shape[0], low, high, stratified, latents.device)
    noisy = scheduler.add_noise(latents, noise, timesteps)
    prediction = denoise(noisy, timesteps)
    target = diffusion_target(scheduler, latents, noise, timesteps)
    return F.mse_loss(prediction.float(), target.float())


def sample_latents(mean: torch.Tensor, std: torch.Tensor, scaling_factor: float) -> torch.Tensor:
    """Draw from a cached VAE posterior (as ``latent_dist.sample()``) and scale it."""
    return (mean + std * torch.randn_like(std)) * scaling_factor


def draw_timesteps(
    n: int, low: int, high: int, stratified: bool = False, device=None
) -> torch.Tensor:
    """``n`` integer timesteps, uniform over ``[low, high)``; stratified: one per slice."""
    if not stratified:
        return torch.randint(low, high, (n,), device=device)
    edges = low + (torch.arange(n, device=device) + torch.rand(n, device=device)) * (
        (high - low) / n
    )
    return edges.floor().long().clamp(low, high - 1)[torch.randperm(n, device=device)]
