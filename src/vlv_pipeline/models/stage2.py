"""Stage 2 of VLV: the caption decoder learns to read the (frozen or trainable) embeddings."""

from __future__ import annotations

import torch
from torch import nn

from vlv_pipeline.models.caption_decoder import CaptionDecoder
from vlv_pipeline.models.teachers import text_side
from vlv_pipeline.world.data import to_unit_range


class Stage2Objective(nn.Module):
    """Caption loss of psi + LLM.

    Without an encoder, ``batch`` = (cached text-encoder outputs, input_ids, attention_mask).
    With one (psi + LLM + VLV encoder), ``batch`` = (pixels, uint8 or in [-1, 1], input_ids,
    attention_mask) and the conditions are recomputed through the frozen text side of the
    teacher (``text_encoder``: a teacher's text side, or a bare CLIP text encoder). With
    ``from_latents`` the first item is instead the latent cache's VAE posterior mean, fed to
    the encoder after its frozen VAE tower (``from_features``): the same embeddings, without
    running the tower every step.
    """

    def __init__(
        self,
        decoder: CaptionDecoder,
        encoder: nn.Module | None = None,
        text_encoder=None,
        *,
        from_latents: bool = False,
    ):
        super().__init__()
        if (encoder is None) != (text_encoder is None):
            raise ValueError("give both the VLV encoder and the text encoder, or neither")
        if from_latents and not getattr(encoder, "reads_vae_latents", False):
            raise ValueError("from_latents needs an encoder whose vision tower is a VAE")
        self.decoder = decoder
        self.encoder = encoder
        self.text_encoder = text_side(text_encoder).requires_grad_(False) if text_encoder else None
        self.from_latents = from_latents

    def forward(self, batch) -> torch.Tensor:
        inputs, input_ids, attention_mask = batch
        if self.from_latents:
            inputs = self.text_encoder.condition(self.encoder.from_features(inputs)).states
        elif self.encoder is not None:  # uint8 pixels become floats here, on the device
            inputs = self.text_encoder.condition(self.encoder(to_unit_range(inputs))).states
        return self.decoder(inputs, input_ids, attention_mask)

    def trained_models(self) -> dict[str, nn.Module]:
        """What a checkpoint stores: psi alone, psi and the LoRA adapter, or the whole caption
        decoder when the LLM trains; the VLV encoder when it trains too."""
        llm = self.decoder.llm
        if not any(p.requires_grad for p in llm.parameters()):
            parts: dict[str, nn.Module] = {"psi": self.decoder.psi}
        elif hasattr(llm, "peft_config"):  # LoRA: the adapter, not the frozen LLM under it
            parts = {"psi": self.decoder.psi, "lora": llm}
        else:
            parts = {"caption_decoder": self.decoder}
        if self.encoder is not None and any(p.requires_grad for p in self.encoder.parameters()):
            parts["vlv_encoder"] = self.encoder
        return parts


def set_trainable(
    decoder: CaptionDecoder, encoder: nn.Module, parts: frozenset[str], lora=None
) -> None:
    """Freeze/unfreeze per ``parts`` (``Stage2Params.parts``: psi always, and ``llm``,
    ``lora``, ``encoder`` where named). The VLV encoder's own frozen parts (a VAE tower,
    Florence-2's DaViT) stay frozen either way."""
    decoder.psi.requires_grad_(True)
    if "lora" in parts:
        from peft import LoraConfig, get_peft_model

        decoder.llm.requires_grad_(False)
        decoder.llm = get_peft_model(
            decoder.llm,
            LoraConfig(
                r=lora.r,
                lora_alpha=lora.alpha,
                lora_dropout=lora.dropout,
                target_modules=list(lora.target_modules),
                task_type="CAUSAL_LM",
            ),
        )
    else:
        decoder.llm.requires_grad_("llm" in parts)
    if "encoder" in parts:
        encoder.requires_grad_(True).train()
        if getattr(encoder, "vae_tower", None) is not None:
            encoder.vae_tower.requires_grad_(False)
        if hasattr(encoder, "freeze_unused"):  # Florence-2: DaViT, its projector, lm_head
            encoder.freeze_unused()
    else:
        encoder.requires_grad_(False).eval()
