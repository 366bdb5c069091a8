"""Nodes of the `world` pipeline: sample scenes, render them, build the tokenizer."""

from __future__ import annotations

from transformers import PreTrainedTokenizerFast

from vlv_pipeline.params.world import WorldParams
from vlv_pipeline.world import Vocabulary, build_world_tokenizer
from vlv_pipeline.world.generate import (  # noqa: F401 - the world's nodes, re-exported
    LazyImage,
    generate_labels,
    objects_from_row,
    render_images,
)


def build_tokenizer(params: WorldParams) -> PreTrainedTokenizerFast:
    """The world's word-level tokenizer (saved as a transformers tokenizer directory)."""
    return build_world_tokenizer(Vocabulary.from_params(params))
