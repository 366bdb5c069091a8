"""The VLV captioner: image -> VLV encoder -> frozen text encoder -> psi + LLM -> caption.

Saved as one self-contained directory, so inference needs nothing else::

    config.json        the class, and the generation defaults
    provenance.json    what it was made for (models/provenance.py: the T2I model, the
                       encoder, the image size, queries, embedding width, the LLM)
    encoder/           the VLV encoder (stage 1; fine-tuned in stage 2 if it was trained)
    text_encoder/      the T2I model's frozen text encoder(s) the VLV queries feed (SDXL
    text_encoder_2/    adds its second; teacher.json names the family)
    decoder/           psi + the causal LLM (models/caption_decoder.py)
    tokenizer/         the LLM's tokenizer
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from vlv_pipeline.errors import MissingInputError
from vlv_pipeline.models.caption_decoder import CaptionDecoder
from vlv_pipeline.models.teachers import family_named, text_side
from vlv_pipeline.models.vlv_encoder import VLVEncoder

CONFIG = "config.json"
TEACHER = "teacher.json"  # the family of the text side (absent: Stable Diffusion's one CLIP)


class VLVCaptioner(nn.Module):
    # what it was made for (models/provenance.py): set by stage 2 and the import, saved as
    # provenance.json, read back on load (None for a directory saved before records)
    provenance: dict | None = None

    def __init__(self, encoder, text_encoder, decoder: CaptionDecoder, tokenizer, **generation):
        super().__init__()
        self.encoder = encoder
        self.text_encoder = text_side(text_encoder)  # the teacher's frozen text side
        self.decoder = decoder
        self.tokenizer = tokenizer
        self.generation = {"max_new_tokens": 64, "num_beams": 1, **generation}

    def conditions(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] -> the text side's conditioning states for their embeddings."""
        return self.text_encoder.condition(self.encoder(pixel_values)).states

    @torch.no_grad()
    def caption_conditions(self, conditions: torch.Tensor, **generation) -> list[str]:
        """Captions of text-encoder outputs. ``generation`` overrides the recorded settings:
        ``max_new_tokens``, ``num_beams``, ``bf16_prefix`` (cast the LLM's prefix to
        bfloat16 first, as the official ``generate()`` does) and any ``generate`` keyword."""
        settings = {**self.generation, **generation}
        eos = self.tokenizer.eos_token_id
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else eos
        own = ("max_new_tokens", "num_beams", "bf16_prefix")
        extra = {k: v for k, v in settings.items() if k not in own}
        ids = self.decoder.generate(
            conditions,
            max_new_tokens=settings["max_new_tokens"],
            num_beams=settings["num_beams"],
            eos_token_id=eos,
            pad_token_id=pad,
            prefix_dtype=torch.bfloat16 if settings.get("bf16_prefix") else None,
            **extra,  # e.g. early_stopping, as the published model generates
        )
        return [t.strip() for t in self.tokenizer.batch_decode(ids, skip_special_tokens=True)]

    @torch.no_grad()
    def caption(self, pixel_values: torch.Tensor, batch_size: int = 64, **generation) -> list[str]:
        """Captions of (B, 3, S, S) images in [-1, 1], generated in batches with the KV cache."""
        captions: list[str] = []
        device = next(self.decoder.parameters()).device
        for start in range(0, len(pixel_values), batch_size):
            conditions = self.conditions(pixel_values[start : start + batch_size].to(device))
            captions += self.caption_conditions(conditions, **generation)
        return captions

    def save_pretrained(self, path: str | Path) -> None:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.encoder.save_pretrained(path / "encoder")
        for name, module in zip(
            self.text_encoder.fed_encoders, self.text_encoder.text_encoders(), strict=True
        ):
            module.save_pretrained(path / name)
        family = type(self.text_encoder).pipeline_classes[0]
        (path / TEACHER).write_text(json.dumps({"_class_name": family}))
        self.decoder.save_pretrained(path / "decoder")
        self.tokenizer.save_pretrained(path / "tokenizer")
        (path / CONFIG).write_text(
            json.dumps({"_class_name": type(self).__name__, "generation": self.generation})
        )
        from vlv_pipeline.models.provenance import write_record

        write_record(path, self.provenance)

    @classmethod
    def from_pretrained(cls, path: str | Path, **kwargs) -> VLVCaptioner:
        from transformers import AutoTokenizer

        path = Path(path)
        if not (path / CONFIG).is_file():
            raise MissingInputError(
                f"{path} is not a VLV captioner directory (no {CONFIG}): train one with "
                "`kedro run --pipeline stage2`"
            )
        from vlv_pipeline.models.tensor_files import model_dir_hint, naming_damaged

        config = json.loads((path / CONFIG).read_text())
        teacher = json.loads((path / TEACHER).read_text()) if (path / TEACHER).is_file() else {}
        family = family_named(teacher.get("_class_name", "StableDiffusionPipeline"), str(path))
        with naming_damaged(path, what_to_do=model_dir_hint(path)):
            captioner = cls(
                VLVEncoder.from_pretrained(path / "encoder"),
                family.load(str(path), only=family.fed_encoders),
                CaptionDecoder.from_pretrained(path / "decoder"),
                AutoTokenizer.from_pretrained(path / "tokenizer"),
                **config.get("generation", {}),
            )
        from vlv_pipeline.models.provenance import read_record

        captioner.provenance = read_record(path)
        return captioner.eval()
