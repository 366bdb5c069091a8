"""Fingerprints of what made a shard cache: hashes of the weights (and config) of the models
that computed its tensors, and the resolution. A cache whose index records another
fingerprint is rebuilt (``cache_extension.begin_extension``)."""

from __future__ import annotations

import hashlib
import json

import torch


def weights_sha256(module: torch.nn.Module) -> str:
    """A hash of a module's weights (as float32), independent of the dtype it runs in."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().to(torch.float32).cpu().numpy().tobytes())
    return digest.hexdigest()


def embedding_fingerprint(encoder, text_encoders, resolution: int | None) -> dict:
    """What the stage-2 embedding cache was made by: the VLV encoder's weights, the text
    encoders' (one module, or a teacher's list of them), the resolution."""
    if isinstance(text_encoders, torch.nn.Module):
        text_encoders = [text_encoders]
    hashes = [weights_sha256(m) for m in text_encoders]
    text = hashes[0] if len(hashes) == 1 else hashlib.sha256("".join(hashes).encode()).hexdigest()
    return {
        "encoder_sha256": weights_sha256(encoder),
        "text_encoder_sha256": text,
        "resolution": resolution,
    }


def vae_fingerprint(vae, resolution: int | None) -> dict:
    """What makes the latents: a hash of the VAE's weights and config, and the resolution."""
    # private keys (_name_or_path, _use_default_values...) say where it was loaded from, not what it is
    config = {k: v for k, v in dict(vae.config).items() if not k.startswith("_")}
    # no shift, spelled null (SD) or 0.0 (SD 3's pipeline needs a number): the same VAE
    if not config.get("shift_factor"):
        config["shift_factor"] = None
    config = json.dumps(config, sort_keys=True, default=str)
    return {
        "weights_sha256": weights_sha256(vae),
        "config_sha256": hashlib.sha256(config.encode()).hexdigest(),
        "resolution": resolution,
    }
