"""Tiny replicas' configs and stage-2 parameters (the tiny SD's text encoder and world tokenizer)."""

from vlv_pipeline.params.stage2 import Stage2Params

TINY_FLORENCE = {
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
        "vocab_size": 64,
        "d_model": 32,
        "encoder_layers": 1,
        "decoder_layers": 1,
        "encoder_attention_heads": 2,
        "decoder_attention_heads": 2,
        "encoder_ffn_dim": 64,
        "decoder_ffn_dim": 64,
        "max_position_embeddings": 64,
    },
    "image_token_id": 63,
}

TINY_QWEN2 = {
    "model_type": "qwen2",
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "max_position_embeddings": 128,
    "tie_word_embeddings": True,
}


def stage2_params(tiny_sd, tmp_path, **overrides) -> Stage2Params:
    values = {
        "t2i": str(tiny_sd),
        "llm": {"init": TINY_QWEN2},
        "tokenizer": {"pretrained": str(tiny_sd), "subfolder": "tokenizer"},
        "training": {
            "steps": 2,
            "batch_size": 4,
            "learning_rate": 1e-3,
            "checkpoint_every": 1,
            "log_every": 1,
        },
        "generation": {"max_new_tokens": 6, "batch_size": 4},
        "validation_images": 4,
        "checkpoint_dir": str(tmp_path / "ckpt2"),
        **overrides,
    }
    return Stage2Params(**values)
