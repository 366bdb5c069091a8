"""Tiny replicas' configs and stage-2 parameters (the tiny SD's text encoder and world tokenizer)."""

import torch
from diffusers import AutoencoderKL
from tiny_configs import tiny_florence

from vlv_pipeline.datasets.shard_store import EmbeddingCache
from vlv_pipeline.models.vlv_encoder import SmallVLVEncoder, vae_config_of
from vlv_pipeline.params.stage1 import Stage1Params
from vlv_pipeline.params.stage2 import Stage2Params
from vlv_pipeline.params.synthesize import SynthesizeParams
from vlv_pipeline.params.t2i import T2IParams
from vlv_pipeline.pipelines.stage2 import nodes
from vlv_pipeline.pipelines.synthesize import nodes as synth

TINY_FLORENCE = tiny_florence()

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


def stage2_inputs(tiny_world, tiny_sd, tmp_path, trainable="projector+llm"):
    source, manifest = tiny_world
    params = stage2_params(tiny_sd, tmp_path, trainable=trainable)
    pairs = synth.synthesize_captions(
        source,
        synth.select_images(manifest, SynthesizeParams(fraction=0.5)),
        SynthesizeParams(),
        {},
    )
    vae = AutoencoderKL.from_pretrained(tiny_sd / "vae")
    torch.manual_seed(0)
    encoder = SmallVLVEncoder(
        num_queries=4, out_dim=16, width=16, heads=2, image_size=16, vae_config=vae_config_of(vae)
    )
    encoder.load_vae_tower(vae)
    cache = synth.cache_pair_embeddings(
        source,
        manifest,
        pairs,
        encoder,
        EmbeddingCache(tmp_path / "emb"),
        params,
        SynthesizeParams(),
        T2IParams(model=str(tiny_sd)),
    )
    data = nodes.load_stage2_data(source, manifest, pairs, params)
    return params, data, encoder, cache


def tiny_captioner(tiny_world, tiny_sd, tmp_path):
    """A VLV captioner (tiny VAE-tower encoder + tiny Qwen2) trained 2 steps: (captioner, log)."""
    params, data, encoder, cache = stage2_inputs(tiny_world, tiny_sd, tmp_path)
    return nodes.train_stage2(data, encoder, cache, params, T2IParams(model=str(tiny_sd)))


def stage1_params(tiny_sd) -> Stage1Params:
    """Stage 1's settings the "without stage 1" baseline builds its encoder from."""
    return Stage1Params(
        encoder={
            "backbone": "small",
            "num_queries": 4,
            "small": {"width": 16, "heads": 2, "image_size": 16, "vision_tower": "t2i_vae"},
        },
        training={"steps": 1, "batch_size": 4, "learning_rate": 1e-3},
    )


def trained_captioners(tiny_world, tiny_sd, tmp_path):
    """The VLV captioner and the "without stage 1" baseline, each trained a step or two, and
    the encoder: (encoder, captioner, baseline, log, baseline_log)."""
    params, data, encoder, cache = stage2_inputs(tiny_world, tiny_sd, tmp_path)
    captioner, log = nodes.train_stage2(data, encoder, cache, params, T2IParams(model=str(tiny_sd)))
    baseline, baseline_log = nodes.train_baseline(
        data, params, stage1_params(tiny_sd), T2IParams(model=str(tiny_sd))
    )
    return encoder, captioner, baseline, log, baseline_log
