"""Nodes of `import_published`: read the published checkpoint, map it, check it, build."""

from __future__ import annotations

import logging

from vlv_pipeline.errors import ParameterError
from vlv_pipeline.models.model_card import card_or_none, published_card
from vlv_pipeline.models.published import build_captioner, read_state_dict
from vlv_pipeline.models.registry import load_component
from vlv_pipeline.params.published import ImportParams

logger = logging.getLogger(__name__)


def import_published_captioner(params: ImportParams):
    """The published captioner as a ``VLVCaptioner`` (saved as ``published_captioner``, a
    model of its own: ``evaluate`` never picks it up in place of the trained one)."""
    if not params.checkpoint:
        raise ParameterError(
            "import_published.checkpoint is not set: download the published captioner with "
            "`hf download lambertxiao/Vision-Language-Vision-Captioner-Qwen2.5-3B --local-dir "
            "data/01_raw/published` and run `kedro run --env paper --pipeline import_published "
            "--params import_published.checkpoint=<its weights file>`"
        )
    state = read_state_dict(params.checkpoint)
    florence_tokenizer = load_component("tokenizer", params.florence2_tokenizer)
    captioner = build_captioner(
        state,
        florence2=params.florence2.model_dump(),
        text_encoder=params.text_encoder.model_dump(),
        llm=params.llm.model_dump(),
        tokenizer=load_component("tokenizer", params.tokenizer),
        prompt_ids=florence_tokenizer(params.prompt).input_ids,
        input_size=params.input_size,
        generation=params.generation.model_dump(),
        crop_size=params.crop_size,
    )
    # its README.md, saved with it (models/model_card.py)
    captioner.model_card = card_or_none(published_card, captioner, params)
    count = sum(p.numel() for p in captioner.parameters())
    logger.info(
        "import_published: %s -> a captioner of %.2fB parameters", params.checkpoint, count / 1e9
    )
    return captioner
