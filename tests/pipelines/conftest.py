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


TINY_SDXL = {  # RehearsalParams: the rehearsal pipeline's own builder, at 16 px
    "family": "stable-diffusion-xl",
    "vae": {
        "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D"],
        "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D"],
        "block_out_channels": [8, 8],
        "layers_per_block": 1,
        "latent_channels": 4,
        "norm_num_groups": 4,
        "sample_size": 16,
    },
    "unet": {
        "sample_size": 8,
        "in_channels": 4,
        "out_channels": 4,
        "block_out_channels": [8, 16],
        "layers_per_block": 1,
        "norm_num_groups": 4,
        "attention_head_dim": 2,
    },
    "text_encoder": {
        "hidden_size": TEXT_WIDTH,
        "intermediate_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "max_position_embeddings": 77,
    },
    "scheduler": {"num_train_timesteps": 100},
    "sdxl": {
        "vae": {"scaling_factor": 0.13025},
        "unet": {
            "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D"],
            "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D"],
            "addition_embed_type": "text_time",
            "addition_time_embed_dim": 4,
        },
        "text_encoder_2": {
            "hidden_size": 24,
            "intermediate_size": 48,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "max_position_embeddings": 77,
            "projection_dim": 12,
        },
    },
}


_FLOW_VAE = {  # SD 3's and FLUX's VAE shape: 16 latent channels, no quant convs, a shift
    "latent_channels": 16,
    "use_quant_conv": False,
    "use_post_quant_conv": False,
}
_T5 = {
    "d_model": 32,
    "d_kv": 8,
    "d_ff": 64,
    "num_layers": 1,
    "num_heads": 2,
    "relative_attention_num_buckets": 8,
    "relative_attention_max_distance": 32,
    "feed_forward_proj": "gated-gelu",
    "tie_word_embeddings": False,
}
TINY_SD3 = {
    **{k: TINY_SDXL[k] for k in ("vae", "unet", "text_encoder")},
    "family": "stable-diffusion-3",
    "sd3": {
        "vae": {**_FLOW_VAE, "scaling_factor": 1.5305, "shift_factor": 0.0609},
        "text_encoder": {"projection_dim": 16},
        "text_encoder_2": {**TINY_SDXL["sdxl"]["text_encoder_2"]},
        "text_encoder_3": {**_T5, "d_model": 48, "d_ff": 96},  # wider than both CLIPs
        "transformer": {
            "sample_size": 8,
            "patch_size": 2,
            "in_channels": 16,
            "out_channels": 16,
            "num_layers": 2,
            "attention_head_dim": 8,
            "num_attention_heads": 2,
            "pos_embed_max_size": 8,
            "qk_norm": "rms_norm",
            "dual_attention_layers": [0],
        },
        "scheduler": {"num_train_timesteps": 1000, "shift": 3.0},
    },
}
TINY_FLUX = {
    **{k: TINY_SDXL[k] for k in ("vae", "unet", "text_encoder")},
    "family": "flux",
    "flux": {
        "vae": {**_FLOW_VAE, "scaling_factor": 0.3611, "shift_factor": 0.1159},
        "text_encoder_2": _T5,
        "transformer": {
            "patch_size": 1,
            "in_channels": 64,
            "num_layers": 1,
            "num_single_layers": 1,
            "attention_head_dim": 8,
            "num_attention_heads": 2,
            "guidance_embeds": True,
            "axes_dims_rope": [2, 2, 4],
        },
        "scheduler": {
            "num_train_timesteps": 1000,
            "shift": 3.0,
            "use_dynamic_shifting": True,
            "base_shift": 0.5,
            "max_shift": 1.15,
            "base_image_seq_len": 256,
            "max_image_seq_len": 4096,
        },
    },
}


def build_replica(path, config: dict):
    """A diffusers pipeline directory of the family ``config`` names (16 px), built by the
    rehearsal pipeline's node with the world tokenizer and saved in its hub layout."""
    from vlv_pipeline.params.rehearsal import RehearsalParams
    from vlv_pipeline.pipelines.rehearsal.nodes import build_t2i

    tokenizer = build_world_tokenizer(Vocabulary.from_params(WorldParams()))
    build_t2i(tokenizer, RehearsalParams(**config)).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_sdxl(tmp_path_factory):
    """SDXL at 16 px: 8x8x4 latents, text widths 16 + 24."""
    return build_replica(tmp_path_factory.mktemp("sdxl") / "sdxl", TINY_SDXL)


@pytest.fixture(scope="session")
def tiny_sd3(tmp_path_factory):
    """SD 3.5-shaped at 16 px: 8x8x16 latents, CLIPs 16 + 24, T5 32, an MMDiT."""
    return build_replica(tmp_path_factory.mktemp("sd3") / "sd3", TINY_SD3)


@pytest.fixture(scope="session")
def tiny_flux(tmp_path_factory):
    """FLUX.1-dev-shaped at 16 px: 8x8x16 latents packed 2x2, CLIP 16, T5 32."""
    return build_replica(tmp_path_factory.mktemp("flux") / "flux", TINY_FLUX)


@pytest.fixture(scope="session")
def tiny_sd(tmp_path_factory):
    return build_tiny_sd(tmp_path_factory.mktemp("sd") / "sd")


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory):
    """A rendered 16 px shapes world on disk (folder + captions), ingested: (source, manifest)."""
    world = WorldParams(image_size=16, counts={"train": 16, "val": 0, "test": 6})
    return render_and_ingest(tmp_path_factory.mktemp("world"), world)
