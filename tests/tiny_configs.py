"""Tiny configs of real model classes, shared by tests (importable: tests/ holds a conftest)."""

from __future__ import annotations


def tiny_florence(
    vocab_size: int = 64, text_positions: int = 64, image_token_id: int = 63, **text
) -> dict:
    """A Florence2Config dict: a 2-stage DaViT and a 1-layer BART, width 32."""
    return {
        "vision_config": {
            "depths": [1, 1],
            "patch_size": [3, 3],
            "patch_stride": [2, 2],
            "patch_padding": [1, 1],
            "patch_prenorm": [False, True],
            "embed_dim": [16, 32],
            "num_heads": [2, 4],
            "num_groups": [2, 4],
            "window_size": 2,
            "projection_dim": 32,
            "max_position_embeddings": 16,
            "max_temporal_embeddings": 4,
        },
        "text_config": {
            "vocab_size": vocab_size,
            "d_model": 32,
            "encoder_layers": 1,
            "decoder_layers": 1,
            "encoder_attention_heads": 2,
            "decoder_attention_heads": 2,
            "encoder_ffn_dim": 64,
            "decoder_ffn_dim": 64,
            "max_position_embeddings": text_positions,
            **text,
        },
        "image_token_id": image_token_id,
    }
