"""Captioning a user's images with a VLV captioner, as the ``caption`` pipeline does (and
``reconstruct``, which re-renders the captions): the captioner a block's ``model`` chooses,
the kept images captioned in batches (the published captioner with the official crop), and
the official inference's clean-up."""

from __future__ import annotations

import logging
import re

import pandas as pd
import torch
from kedro.io import DatasetError

from vlv_pipeline.distributed import each_rank, share
from vlv_pipeline.errors import (
    InputError,
    MissingInputError,
    ModelDirectoryError,
    ParameterError,
    UserError,
)
from vlv_pipeline.imaging.sources import ImageSource, iter_images
from vlv_pipeline.models.device import inference_device
from vlv_pipeline.models.published import official_crop
from vlv_pipeline.params.evaluate import CaptionParams
from vlv_pipeline.world.data import pil_to_tensor

logger = logging.getLogger(__name__)

COLUMNS = ["file", "image_id", "caption", "rejected", "detail"]


class NoCaptionerError(InputError):
    """No captioner is saved where the chosen one is read (``caption.model``)."""


def choose_captioner(trained, published, params: CaptionParams, block: str = "caption"):
    """The captioner ``caption.model`` names, loaded (the other is never read); its weights
    in bfloat16 on a GPU that supports it when ``caption.dtype`` is auto. ``block``: the
    parameter block that chose it (``reconstruct`` chooses as ``caption`` does)."""
    lazy = trained if params.model == "trained" else published
    try:
        captioner = lazy()
    except (MissingInputError, ModelDirectoryError) as error:  # nothing usable saved there
        raise _no_captioner(lazy, params, error, block) from error
    except UserError:  # damaged, or made for another setting: its own message says what to do
        raise
    except DatasetError as error:  # no version saved, or no model directory there
        raise _no_captioner(lazy, params, error, block) from error
    dtype = params.dtype
    if dtype == "auto":
        bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        dtype = "bfloat16" if bf16 else "float32"
    return captioner.to(getattr(torch, dtype))


def _no_captioner(
    lazy, params: CaptionParams, error: BaseException, block: str = "caption"
) -> NoCaptionerError:
    """No captioner saved where ``caption.model`` reads: which pipeline makes one."""
    make = "stage2" if params.model == "trained" else "import_published"
    return NoCaptionerError(
        f"{block}.model is {params.model!r} but {lazy.where} has no usable captioner "
        f"({error}); run `kedro run --pipeline {make}` first"
    )


# where the official clean-up splits sentences: the whitespace after ".", "!" or "?"
_SENTENCE_BREAK = re.compile(r"(?<=[.!?])\s+")


def official_postprocess(caption: str) -> str:
    """The official inference's clean-up of a caption (``process_caption`` in its
    train/Caption_inference.py): a caption that does not end with a full stop is cut just
    after its last one (only "." counts there); the rest is split into sentences at the
    whitespace after ".", "!" or "?" (so "3.5" stays whole), a sentence that repeats an
    earlier one exactly is dropped, and the others are joined with one space."""
    if not caption.endswith(".") and "." in caption:
        caption = caption[: caption.rindex(".") + 1]
    kept: list[str] = []
    for sentence in _SENTENCE_BREAK.split(caption):
        if sentence and sentence not in kept:
            kept.append(sentence)
    return " ".join(kept)


def _input_side(captioner, params: CaptionParams) -> int:
    if params.resolution:
        return params.resolution
    side = getattr(captioner.encoder.config, "image_size", None)
    if side is None:
        raise ParameterError("set caption.resolution: the captioner does not say its input size")
    return int(side)


@torch.no_grad()
def caption_kept_images(
    vlv_captioner, source: ImageSource, screened: pd.DataFrame, params: CaptionParams
) -> pd.DataFrame:
    """One row per input file: its caption, or ingest's verdict when it was rejected. Under
    ``accelerate launch`` each rank captions its own contiguous block of the kept images on
    its own device; every rank returns the whole table."""
    kept = screened[screened["reason"].isna()]
    mine = kept.iloc[share(len(kept))]
    vlv_captioner = vlv_captioner.to(inference_device())
    clean = official_postprocess if params.postprocess else str
    side = _input_side(vlv_captioner, params)
    generation = {
        k: v
        for k, v in (("max_new_tokens", params.max_new_tokens), ("num_beams", params.num_beams))
        if v is not None
    }
    # the published captioner gets what the official inference gave it: its crop of the
    # full image (models/published.py), and its prefix cast to bfloat16 unless told not to
    published = params.model == "published"
    crop = official_crop if published else None
    bf16_prefix = params.bf16_prefix if params.bf16_prefix is not None else published or None
    if bf16_prefix is not None:
        generation["bf16_prefix"] = bf16_prefix

    def caption_mine() -> list[tuple[str, str]]:
        captions: list[tuple[str, str]] = []
        ids, pixels = [], []

        def flush():
            texts = vlv_captioner.caption(
                torch.stack(pixels), batch_size=params.batch_size, **generation
            )
            captions.extend(zip(ids, map(clean, texts), strict=True))
            ids.clear(), pixels.clear()

        images = iter_images(source, mine, None if crop else side) if len(mine) else iter(())
        for image_id, image in images:
            ids.append(image_id)
            pixels.append(pil_to_tensor(crop(image, side) if crop else image))
            if len(ids) == params.batch_size:
                flush()
        if ids:
            flush()
        return captions

    captions = dict(pair for part in each_rank(caption_mine) for pair in part)
    # one verdict per row: a caption for the kept rows only (a duplicate keeps its
    # `duplicate` verdict, whose detail names the file that carries its caption)
    table = pd.DataFrame(
        {
            "file": screened["source"].astype(str),
            "image_id": screened["image_id"],
            "caption": [
                captions.get(i) if pd.isna(r) else None
                for i, r in zip(screened["image_id"], screened["reason"], strict=True)
            ],
            "rejected": screened["reason"],
            "detail": screened["detail"],
        }
    )
    return table[COLUMNS]
