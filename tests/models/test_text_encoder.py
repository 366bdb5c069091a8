import pytest
import torch
from transformers import CLIPTextConfig, CLIPTextModel

from vlv_pipeline.models.text_encoder import encode_embeddings
from vlv_pipeline.params.world import WorldParams
from vlv_pipeline.world import Vocabulary, build_world_tokenizer


@pytest.fixture(scope="module")
def encoder_and_tokenizer():
    tokenizer = build_world_tokenizer(Vocabulary.from_params(WorldParams()))
    torch.manual_seed(0)
    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    return CLIPTextModel(config).eval(), tokenizer


def test_embeddings_path_equals_the_input_ids_path(encoder_and_tokenizer):
    encoder, tokenizer = encoder_and_tokenizer
    captions = [
        "a large red circle at the top left and a small blue square in the centre",
        "a small green triangle on the right",
    ]
    ids = tokenizer(captions, padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        expected = encoder(input_ids=ids).last_hidden_state
        got = encode_embeddings(encoder, encoder.embeddings.token_embedding(ids))
    assert got.shape == (2, 77, 32)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-5)


def test_mask_is_causal_and_gradients_reach_the_embeddings(encoder_and_tokenizer):
    encoder, _ = encoder_and_tokenizer
    encoder.requires_grad_(False)
    embeds = torch.randn(1, 16, 32, requires_grad=True)
    out = encode_embeddings(encoder, embeds)
    changed = embeds.detach().clone()
    changed[0, 10] += torch.randn(32)  # not a constant shift: LayerNorm would remove that
    with torch.no_grad():
        other = encode_embeddings(encoder, changed)
    assert torch.allclose(
        out[0, :10], other[0, :10], atol=1e-6
    )  # earlier positions do not see later ones
    assert not torch.allclose(out[0, 10:], other[0, 10:])
    out.sum().backward()
    assert embeds.grad is not None and embeds.grad.abs().sum() > 0
    assert all(p.grad is None for p in encoder.parameters())


def test_too_many_embeddings_is_a_clear_error(encoder_and_tokenizer):
    encoder, _ = encoder_and_tokenizer
    with pytest.raises(ValueError, match="max_position_embeddings"):
        encode_embeddings(encoder, torch.randn(1, 78, 32))
