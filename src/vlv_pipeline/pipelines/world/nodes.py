"""The `world` pipeline's own node: build the tokenizer (sampling and rendering the scenes
are ``world.generate``'s ``generate_labels`` and ``render_images``)."""

from __future__ import annotations

from transformers import PreTrainedTokenizerFast

from vlv_pipeline.params.world import WorldParams
from vlv_pipeline.world import Vocabulary, build_world_tokenizer


def build_tokenizer(params: WorldParams) -> PreTrainedTokenizerFast:
    """The world's word-level tokenizer (saved as a transformers tokenizer directory)."""
    return build_world_tokenizer(Vocabulary.from_params(params))
