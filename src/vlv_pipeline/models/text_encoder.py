"""Running a frozen CLIP text encoder on caption embeddings instead of token ids.

VLV's caption embeddings enter the T2I model's text encoder as ``inputs_embeds``: its
position embeddings, causal mask, transformer layers and final LayerNorm all apply, exactly
as for a tokenised caption. transformers 5's ``CLIPTextModel.forward`` insists on
``input_ids``, so this runs the model's own modules in the same order.
"""

from __future__ import annotations

import torch
from transformers.masking_utils import create_causal_mask

from vlv_pipeline.errors import ParameterError


def encode_embeddings(text_encoder, inputs_embeds: torch.Tensor) -> torch.Tensor:
    """``last_hidden_state`` of ``text_encoder`` (a ``CLIPTextModel``) for (B, N, d) embeddings.

    Equals ``text_encoder(input_ids).last_hidden_state`` when ``inputs_embeds`` are the
    token embeddings of ``input_ids`` (tested). N must not exceed the encoder's
    ``max_position_embeddings`` (77 for CLIP).
    """
    model = getattr(text_encoder, "text_model", text_encoder)  # older transformers nest it
    limit = model.config.max_position_embeddings
    if inputs_embeds.shape[1] > limit:
        raise ParameterError(
            f"{inputs_embeds.shape[1]} caption embeddings exceed the text encoder's "
            f"max_position_embeddings ({limit}): lower the number of queries"
        )
    hidden = model.embeddings(inputs_embeds=inputs_embeds)
    mask = create_causal_mask(
        config=model.config, inputs_embeds=hidden, attention_mask=None, cache=None
    )
    out = model.encoder(inputs_embeds=hidden, attention_mask=mask, is_causal=True)
    return model.final_layer_norm(out.last_hidden_state)
