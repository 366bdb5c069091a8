"""The frozen text-to-image decoder of the VLV auto-encoder, loaded from a Stable Diffusion directory.

Whatever made the directory (the project's `teacher` pipeline in the shapes world, or
stable-diffusion-2-1-base in conf/paper), it is loaded the same way, component by component
through the registry, and frozen.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vlv_pipeline.models.registry import load_component
from vlv_pipeline.models.teacher import assemble_pipeline, render
from vlv_pipeline.models.text_encoder import encode_embeddings


@dataclass
class FrozenT2I:
    vae: object
    text_encoder: object
    tokenizer: object
    unet: object
    scheduler: object

    @classmethod
    def load(cls, pretrained: str, dtype: str | None = "float32", device=None) -> FrozenT2I:
        def part(kind, subfolder, with_dtype=True):
            spec = {"pretrained": pretrained, "subfolder": subfolder}
            if with_dtype and dtype:
                spec["dtype"] = dtype
            return load_component(kind, spec)

        t2i = cls(
            vae=part("vae", "vae"),
            text_encoder=part("text_encoder", "text_encoder"),
            tokenizer=part("tokenizer", "tokenizer", with_dtype=False),
            unet=part("unet", "unet"),
            scheduler=part("scheduler", "scheduler", with_dtype=False),
        )
        for module in (t2i.vae, t2i.text_encoder, t2i.unet):
            module.requires_grad_(False).eval()
            if device is not None:
                module.to(device)
        return t2i

    @property
    def scaling_factor(self) -> float:
        return float(self.vae.config.scaling_factor)

    @property
    def width(self) -> int:
        """The text encoder's hidden size: the width of caption embeddings."""
        return int(self.text_encoder.config.hidden_size)

    def condition(self, caption_embeddings: torch.Tensor) -> torch.Tensor:
        """Caption embeddings -> the text encoder's last_hidden_state (the UNet's condition)."""
        weight = self.text_encoder.get_input_embeddings().weight
        return encode_embeddings(
            self.text_encoder, caption_embeddings.to(weight.device, weight.dtype)
        )

    @torch.no_grad()
    def condition_images(self, encoder, pixels: torch.Tensor, batch_size: int) -> torch.Tensor:
        """Images -> VLV encoder -> conditions, in batches, on the text encoder's device."""
        device = self.text_encoder.device
        encoder = encoder.eval().to(device)
        return torch.cat(
            [
                self.condition(encoder(pixels[i : i + batch_size].to(device)))
                for i in range(0, len(pixels), batch_size)
            ]
        )

    @torch.no_grad()
    def empty_condition(self, length: int) -> torch.Tensor:
        """The empty prompt's condition, cut to ``length`` positions (causal: a prefix is exact)."""
        ids = self.tokenizer(
            [""],
            padding="max_length",
            max_length=self.tokenizer.model_max_length,
            return_tensors="pt",
        ).input_ids
        return self.text_encoder(ids.to(self.text_encoder.device)).last_hidden_state[:, :length]

    def pipeline(self):
        return assemble_pipeline(
            self.vae, self.text_encoder, self.tokenizer, self.unet, self.scheduler
        )

    def render(self, conditions: torch.Tensor, *, guidance: float, **kwargs) -> torch.Tensor:
        """Images in [-1, 1] from UNet conditions (B, N, d); CFG against the empty prompt."""
        negative = self.empty_condition(conditions.shape[1]) if guidance > 1 else None
        return render(
            self.pipeline(), conditions=conditions, negative=negative, guidance=guidance, **kwargs
        )
