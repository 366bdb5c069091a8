"""A damaged safetensors file in a model directory is named in the error (issue 26, item 16):
transformers' own loader says only "Error while deserializing header"."""

import pytest
import torch
from transformers import AutoTokenizer, CLIPTextConfig, CLIPTextModel, Qwen2Config, Qwen2ForCausalLM

from vlv_pipeline.models.caption_decoder import CaptionDecoder

QWEN = dict(
    vocab_size=64,
    hidden_size=16,
    intermediate_size=32,
    num_hidden_layers=1,
    num_attention_heads=2,
    num_key_value_heads=1,
    max_position_embeddings=32,
)


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.fixture
def decoder_dir(tmp_path):
    torch.manual_seed(0)
    CaptionDecoder(Qwen2ForCausalLM(Qwen2Config(**QWEN)), prefix_dim=8).save_pretrained(
        tmp_path / "decoder"
    )
    return tmp_path / "decoder"


@pytest.mark.parametrize("part", ["psi.safetensors", "llm/model.safetensors"])
def test_a_damaged_caption_decoder_file_is_named(decoder_dir, part):
    _truncate(decoder_dir / part)
    with pytest.raises(ValueError) as error:
        CaptionDecoder.from_pretrained(decoder_dir)
    assert str(decoder_dir / part) in str(error.value)


def test_a_damaged_captioner_component_is_named(tmp_path, decoder_dir, tiny_sd):
    from vlv_pipeline.models.captioner import VLVCaptioner
    from vlv_pipeline.models.vlv_encoder import SmallVLVEncoder

    torch.manual_seed(0)
    clip = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=64,
            hidden_size=8,
            intermediate_size=16,
            num_attention_heads=2,
            num_hidden_layers=1,
            max_position_embeddings=8,
            pad_token_id=1,
            bos_token_id=0,
            eos_token_id=2,
        )
    )
    encoder = SmallVLVEncoder(num_queries=4, out_dim=8, image_size=8, width=16, heads=2)
    captioner = VLVCaptioner(
        encoder,
        clip,
        CaptionDecoder.from_pretrained(decoder_dir),
        AutoTokenizer.from_pretrained(tiny_sd / "tokenizer"),
    )
    captioner.save_pretrained(tmp_path / "captioner")
    bad = tmp_path / "captioner" / "text_encoder" / "model.safetensors"
    _truncate(bad)
    with pytest.raises(ValueError) as error:
        VLVCaptioner.from_pretrained(tmp_path / "captioner")
    assert str(bad) in str(error.value)
