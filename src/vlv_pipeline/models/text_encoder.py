"""Running a frozen CLIP text encoder on caption embeddings instead of token ids.

VLV's caption embeddings enter the T2I model's text encoder as ``inputs_embeds``: its
position embeddings, causal mask, transformer layers and final LayerNorm all apply, exactly
as for a tokenised caption. transformers 5's ``CLIPTextModel.forward`` insists on
``input_ids``, so this runs the model's own modules in the same order.

A pooled output (SDXL's and SD 3's second CLIP, FLUX's CLIP-L) normally sits at the EOS
token, which continuous embeddings do not have. The rule here: the **last position** is
pooled. Under the causal mask it is the one position that has seen every embedding, as
EOS, which closes a caption, has seen every token of it (docs/DEPARTURES.md).
"""

from __future__ import annotations

import torch
from transformers.masking_utils import create_causal_mask

from vlv_pipeline.errors import ParameterError


def _text_model(text_encoder):
    return getattr(text_encoder, "text_model", text_encoder)  # older transformers nest it


def _inputs(text_encoder, inputs_embeds: torch.Tensor):
    """The text model, its embedding layer's output for ``inputs_embeds`` and the causal mask."""
    model = _text_model(text_encoder)
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
    return model, hidden, mask


def encoder_states(text_encoder, inputs_embeds: torch.Tensor) -> list[torch.Tensor]:
    """Every hidden state of a CLIP text encoder for (B, N, d) embeddings, as
    ``output_hidden_states`` gives them: the embedding layer's output, then each layer's
    (no final LayerNorm). N must not exceed ``max_position_embeddings`` (77 for CLIP)."""
    model, hidden, mask = _inputs(text_encoder, inputs_embeds)
    states = [hidden]
    for layer in model.encoder.layers:
        hidden = layer(hidden, mask, is_causal=True)
        states.append(hidden)
    return states


def final_norm(text_encoder, state: torch.Tensor) -> torch.Tensor:
    """The text encoder's final LayerNorm (what ``last_hidden_state`` has gone through)."""
    return _text_model(text_encoder).final_layer_norm(state)


def encode_embeddings(text_encoder, inputs_embeds: torch.Tensor) -> torch.Tensor:
    """``last_hidden_state`` of ``text_encoder`` (a ``CLIPTextModel``) for (B, N, d) embeddings.

    Equals ``text_encoder(input_ids).last_hidden_state`` when ``inputs_embeds`` are the
    token embeddings of ``input_ids`` (tested), and the last of ``encoder_states`` after the
    final LayerNorm; it runs the encoder module whole (what hooks and profilers see).
    """
    model, hidden, mask = _inputs(text_encoder, inputs_embeds)
    out = model.encoder(inputs_embeds=hidden, attention_mask=mask, is_causal=True)
    return model.final_layer_norm(out.last_hidden_state)


def pooled_output(text_encoder, last_hidden_state: torch.Tensor) -> torch.Tensor:
    """The pooled output of continuous embeddings: the last position of the final
    (normed) state, through ``text_projection`` when the model has one
    (``CLIPTextModelWithProjection``'s ``text_embeds``; else ``pooler_output``)."""
    pooled = last_hidden_state[:, -1]
    projection = getattr(text_encoder, "text_projection", None)
    return projection(pooled) if projection is not None else pooled
