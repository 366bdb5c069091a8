"""``transformers`` captioner: a local image-to-text model loaded by hub id or directory.

Two kinds of model are supported:

- ``florence2``: ``Florence2ForConditionalGeneration`` (an encoder-decoder). ``prompt`` is a
  Florence-2 task token such as ``"<MORE_DETAILED_CAPTION>"``; the processor expands it.
- ``image-text-to-text``: any ``AutoModelForImageTextToText`` chat model (Qwen2-VL, LLaVA,
  SmolVLM, ...). ``prompt`` is the user instruction; the processor's chat template turns a
  user message holding the image and the instruction into the model's prompt.

Both load with ``AutoProcessor.from_pretrained(pretrained)`` and the model class's
``from_pretrained``. With ``HF_HUB_OFFLINE=1`` a hub id only works when it is already in the
local Hugging Face cache; otherwise point ``pretrained`` at a ``save_pretrained`` directory.
Decoding is deterministic (no sampling): greedy for ``num_beams=1``, beam search otherwise.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Literal

import torch
from PIL import Image

from vlv_pipeline.captioners import CaptionerError
from vlv_pipeline.errors import ParameterError
from vlv_pipeline.models.registry import DTYPES
from vlv_pipeline.params.components import looks_local

__all__ = ["TransformersCaptioner"]

Kind = Literal["florence2", "image-text-to-text"]
_KINDS = ("florence2", "image-text-to-text")


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ParameterError(f"{name} must be a positive integer, got {value!r}")
    return value


def _non_empty_str(name: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ParameterError(f"{name} must be a non-empty string, got {value!r}")
    return value


class TransformersCaptioner:
    """Caption images with a local ``transformers`` image-to-text model.

    Args:
        pretrained: hub id or local ``save_pretrained`` directory holding the model and its
            processor.
        prompt: the Florence-2 task token (kind ``florence2``) or the user instruction
            (kind ``image-text-to-text``).
        kind: ``"florence2"`` or ``"image-text-to-text"``.
        batch_size: images per ``generate`` call.
        max_new_tokens: the most tokens generated per caption.
        num_beams: beam-search width (1 = greedy).
        dtype: ``"float32"``, ``"float16"`` or ``"bfloat16"`` for the weights and pixels.
        device: torch device; default ``inference_device()``: the GPU when there is one (this
            rank's, ``cuda:<LOCAL_RANK>``, under ``accelerate launch``), else ``"cpu"``.

    Raises:
        ValueError: an argument is invalid (the message names it).
        CaptionerError: the model or processor cannot be loaded.
    """

    def __init__(
        self,
        *,
        pretrained: str,
        prompt: str,
        kind: Kind = "florence2",
        batch_size: int = 8,
        max_new_tokens: int = 128,
        num_beams: int = 1,
        dtype: str = "float32",
        device: str | None = None,
    ) -> None:
        self.pretrained = _non_empty_str("pretrained", pretrained)
        self.prompt = _non_empty_str("prompt", prompt)
        if kind not in _KINDS:
            raise ParameterError(f"kind must be one of {list(_KINDS)}, got {kind!r}")
        self.kind: Kind = kind
        self.batch_size = _positive_int("batch_size", batch_size)
        self.max_new_tokens = _positive_int("max_new_tokens", max_new_tokens)
        self.num_beams = _positive_int("num_beams", num_beams)
        if dtype not in DTYPES:
            raise ParameterError(f"dtype must be one of {list(DTYPES)}, got {dtype!r}")
        self.dtype = DTYPES[dtype]
        if device is None:
            from vlv_pipeline.models.device import inference_device

            device = inference_device()
        try:
            self.device = torch.device(device)
        except (RuntimeError, TypeError) as exc:
            raise ParameterError(
                f"device must be a torch device such as 'cpu' or 'cuda:0', got {device!r}"
            ) from exc
        self.processor, self.model = self._load()

    # ------------------------------------------------------------------ loading

    def _load(self) -> tuple[Any, Any]:
        from transformers import (
            AutoModelForImageTextToText,
            AutoProcessor,
            Florence2ForConditionalGeneration,
        )

        ref = self.pretrained
        path = Path(ref).expanduser()
        if not path.exists() and looks_local(ref):
            raise CaptionerError(
                f"transformers captioner: pretrained '{ref}' does not exist "
                f"(resolved: {path.resolve()}); give a save_pretrained directory or a hub id. "
                f"Offline runs (HF_HUB_OFFLINE=1) need a local directory."
            )
        if path.exists():
            ref = str(path)
        model_cls = (
            Florence2ForConditionalGeneration
            if self.kind == "florence2"
            else AutoModelForImageTextToText
        )
        try:
            processor = AutoProcessor.from_pretrained(ref)
            model = model_cls.from_pretrained(ref, dtype=self.dtype)
        except (OSError, ValueError, KeyError) as exc:
            raise CaptionerError(
                f"transformers captioner: cannot load {self.kind} model and processor from "
                f"pretrained '{self.pretrained}': {exc}. Offline runs (HF_HUB_OFFLINE=1) need a "
                f"local directory written by save_pretrained (or the model already in the "
                f"Hugging Face cache)."
            ) from exc
        if self.kind == "image-text-to-text":
            tokenizer = getattr(processor, "tokenizer", None)
            if tokenizer is None or getattr(processor, "chat_template", None) is None:
                raise CaptionerError(
                    f"transformers captioner: the processor in '{self.pretrained}' has no "
                    f"tokenizer or no chat template, which kind 'image-text-to-text' needs"
                )
            tokenizer.padding_side = "left"
        model.to(self.device).eval()
        return processor, model

    # ------------------------------------------------------------------ captioning

    def describe(self) -> dict[str, Any]:
        return {
            "captioner": "transformers",
            "model": self.pretrained,
            "prompt": self.prompt,
            "kind": self.kind,
        }

    def caption_stream(self, items: Iterable[tuple[str, Image.Image]]) -> Iterator[tuple[str, str]]:
        """Yield ``(image_id, caption)`` for each item, one ``generate`` call per batch."""
        batch: list[tuple[str, Image.Image]] = []
        for item in items:
            batch.append(item)
            if len(batch) == self.batch_size:
                yield from self._caption_batch(batch)
                batch = []
        if batch:
            yield from self._caption_batch(batch)

    def _caption_batch(self, batch: list[tuple[str, Image.Image]]) -> list[tuple[str, str]]:
        ids = [image_id for image_id, _ in batch]
        images = [image if image.mode == "RGB" else image.convert("RGB") for _, image in batch]
        try:
            inputs = self._inputs(images)
        except ValueError as exc:
            raise CaptionerError(
                f"transformers captioner: the processor rejected prompt {self.prompt!r} "
                f"(kind {self.kind}): {exc}"
            ) from exc
        inputs = inputs.to(self.device)
        if "pixel_values" in inputs:  # only floating tensors
            inputs["pixel_values"] = inputs["pixel_values"].to(self.dtype)
        kwargs: dict[str, Any] = {}
        tokenizer = getattr(self.processor, "tokenizer", None)
        if self.model.generation_config.pad_token_id is None and tokenizer is not None:
            pad = tokenizer.pad_token_id
            kwargs["pad_token_id"] = tokenizer.eos_token_id if pad is None else pad
        with torch.no_grad():
            out = self.model.generate(
                **inputs,
                max_new_tokens=self.max_new_tokens,
                num_beams=self.num_beams,
                do_sample=False,
                **kwargs,
            )
        if self.kind == "image-text-to-text":
            # decoder-only: the output repeats the (left-padded) prompt; keep the new tokens
            out = out[:, inputs["input_ids"].shape[1] :]
        texts = self.processor.batch_decode(out, skip_special_tokens=True)
        return [(image_id, text.strip()) for image_id, text in zip(ids, texts, strict=True)]

    def _inputs(self, images: list[Image.Image]) -> Any:
        if self.kind == "florence2":
            return self.processor(
                images=images, text=[self.prompt] * len(images), return_tensors="pt"
            )
        conversations = [
            [
                {
                    "role": "user",
                    "content": [
                        {"type": "image", "image": image},
                        {"type": "text", "text": self.prompt},
                    ],
                }
            ]
            for image in images
        ]
        return self.processor.apply_chat_template(
            conversations,
            add_generation_prompt=True,
            tokenize=True,
            return_dict=True,
            return_tensors="pt",
            processor_kwargs={"padding": True, "padding_side": "left"},
        )
