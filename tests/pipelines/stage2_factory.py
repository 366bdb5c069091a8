"""Stage-2 parameters for tiny replicas (the tiny SD's text encoder and world tokenizer)."""

from vlv_pipeline.params.stage2 import Stage2Params

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
