"""Tiny replicas of the real classes, saved to disk and loaded through the real paths."""

import pytest
import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel
from world_factory import render_and_ingest

from vlv_pipeline.models.teacher import assemble_pipeline
from vlv_pipeline.params.world import WorldParams
from vlv_pipeline.world import Vocabulary, build_world_tokenizer

TEXT_WIDTH = 16


def build_tiny_sd(path, prediction_type="epsilon"):
    """A StableDiffusionPipeline directory (16 px images, 8x8x4 latents) with the world tokenizer."""
    torch.manual_seed(0)
    tokenizer = build_world_tokenizer(Vocabulary.from_params(WorldParams()))
    vae = AutoencoderKL(
        down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
        up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"],
        block_out_channels=[8, 8],
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=4,
        sample_size=16,
    )
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=TEXT_WIDTH,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            max_position_embeddings=77,
            pad_token_id=0,
            bos_token_id=1,
            eos_token_id=2,
        )
    )
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=[8, 16],
        layers_per_block=1,
        norm_num_groups=4,
        down_block_types=["DownBlock2D", "CrossAttnDownBlock2D"],
        up_block_types=["CrossAttnUpBlock2D", "UpBlock2D"],
        cross_attention_dim=TEXT_WIDTH,
        attention_head_dim=2,
    )
    scheduler = DDPMScheduler(num_train_timesteps=100, prediction_type=prediction_type)
    assemble_pipeline(vae, text_encoder, tokenizer, unet, scheduler).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_sd(tmp_path_factory):
    return build_tiny_sd(tmp_path_factory.mktemp("sd") / "sd")


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory):
    """A rendered 16 px shapes world on disk (folder + captions), ingested: (source, manifest)."""
    world = WorldParams(image_size=16, counts={"train": 16, "val": 0, "test": 6})
    return render_and_ingest(tmp_path_factory.mktemp("world"), world)
