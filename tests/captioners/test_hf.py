"""TransformersCaptioner on tiny random Florence-2 and LLaVA checkpoints built offline.

With random weights the captions are gibberish, so the tests check what can fail honestly:
ids, batching, streaming, determinism, the token bound and the error messages. The saved
generation configs forbid EOS and every other special token, so each generated token is one
character and generation always runs to ``max_new_tokens``.
"""

from __future__ import annotations

import os

import pytest
import torch
from PIL import Image
from tiny_configs import tiny_florence
from transformers import (
    CLIPImageProcessor,
    CLIPVisionConfig,
    Florence2Config,
    Florence2ForConditionalGeneration,
    Florence2Processor,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    RobertaTokenizer,
)

from vlv_pipeline.captioners import CaptionerError
from vlv_pipeline.captioners.hf import TransformersCaptioner

SPECIALS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>", "<image>"]
# byte-level BPE alphabet: "Ġ" is a space, "Ċ" a newline; no merges, so one token per character
CHARS = list("abcdefghijklmnopqrstuvwxyzDLW.,:?") + ["Ġ", "Ċ"]
VOCAB = {token: i for i, token in enumerate(SPECIALS + CHARS)}
SPECIAL_IDS = [VOCAB[t] for t in SPECIALS]
IMAGE = 16  # pixels; 16 px -> 1 + (16 / 4) ** 2 = 17 Florence-2 image tokens

TINY_FLORENCE = tiny_florence(
    vocab_size=len(VOCAB),
    text_positions=128,  # 17 image tokens + the expanded task prompt
    image_token_id=VOCAB["<image>"],
    init_std=0.5,  # wide random weights, so that different images get different captions
)

CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{{ message['role'] }}:"
    "{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<image>{% else %}{{ part['text'] }}{% endif %}"
    "{% endfor %} {% endfor %}{% if add_generation_prompt %}assistant:{% endif %}"
)


def _tokenizer() -> RobertaTokenizer:
    return RobertaTokenizer(vocab=VOCAB, merges=[], extra_special_tokens={"image_token": "<image>"})


def _image_processor() -> CLIPImageProcessor:
    return CLIPImageProcessor(
        size={"shortest_edge": IMAGE}, crop_size={"height": IMAGE, "width": IMAGE}
    )


def _no_specials(model) -> None:
    """Never generate a special token (EOS included): every new token is one character."""
    model.generation_config.forced_eos_token_id = None
    model.generation_config.suppress_tokens = SPECIAL_IDS


@pytest.fixture(scope="module")
def florence_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("florence2")
    image_processor = _image_processor()
    image_processor.image_seq_length = 1 + (IMAGE // 4) ** 2
    Florence2Processor(image_processor=image_processor, tokenizer=_tokenizer()).save_pretrained(
        path
    )
    torch.manual_seed(0)
    model = Florence2ForConditionalGeneration(Florence2Config(**TINY_FLORENCE))
    _no_specials(model)
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def llava_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("llava")
    LlavaProcessor(
        image_processor=_image_processor(),
        tokenizer=_tokenizer(),
        patch_size=4,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,  # CLIP's CLS token, dropped by "default"
        chat_template=CHAT_TEMPLATE,
    ).save_pretrained(path)
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=IMAGE,
            patch_size=4,
        ),
        text_config=LlamaConfig(
            vocab_size=len(VOCAB),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=2,
            max_position_embeddings=128,
            bos_token_id=VOCAB["<s>"],
            eos_token_id=VOCAB["</s>"],
            pad_token_id=VOCAB["<pad>"],
            initializer_range=0.5,  # wide random weights, as for Florence-2
        ),
        image_token_id=VOCAB["<image>"],
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
    )
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(config)
    _no_specials(model)
    model.save_pretrained(path)
    return path


def _images(n: int) -> list[tuple[str, Image.Image]]:
    """Distinct images of varied size and mode (RGB conversion included)."""
    gen = torch.Generator().manual_seed(1)
    items = []
    for i in range(n):
        pixels = torch.randint(0, 256, (12 + 4 * i, 20, 3), generator=gen, dtype=torch.uint8)
        image = Image.fromarray(pixels.numpy())
        image = image.convert(("RGB", "L", "RGBA")[i % 3])
        items.append((f"img{i}", image))
    return items


def _florence(path, **kwargs) -> TransformersCaptioner:
    kwargs.setdefault("max_new_tokens", 6)
    return TransformersCaptioner(
        pretrained=str(path), prompt="<MORE_DETAILED_CAPTION>", device="cpu", **kwargs
    )


def _spy_generate(captioner) -> list[torch.Tensor]:
    """Record what ``model.generate`` returns."""
    outputs = []
    generate = captioner.model.generate

    def spy(*args, **kwargs):
        out = generate(*args, **kwargs)
        outputs.append(out)
        return out

    captioner.model.generate = spy
    return outputs


# --------------------------------------------------------------------------- florence2


def test_florence2_streams_one_caption_per_id(florence_dir):
    captioner = _florence(florence_dir, batch_size=2)
    items = _images(5)
    pulled = []

    def source():
        for item in items:
            pulled.append(item[0])
            yield item

    stream = captioner.caption_stream(source())
    first = next(stream)
    assert pulled == ["img0", "img1"]  # the first batch is captioned before the rest is read
    results = [first, *stream]
    assert [image_id for image_id, _ in results] == [image_id for image_id, _ in items]
    for _, caption in results:
        assert isinstance(caption, str) and caption and caption == caption.strip()


def test_florence2_deterministic_and_batch_invariant(florence_dir):
    items = _images(5)
    captioner = _florence(florence_dir, batch_size=2)
    first = list(captioner.caption_stream(items))
    assert list(captioner.caption_stream(items)) == first
    assert list(_florence(florence_dir, batch_size=5).caption_stream(items)) == first
    assert len({caption for _, caption in first}) > 1  # the image reaches the caption


def test_florence2_max_new_tokens_bounds_output(florence_dir):
    items = _images(3)
    for max_new_tokens in (2, 7):
        captioner = _florence(florence_dir, max_new_tokens=max_new_tokens)
        outputs = _spy_generate(captioner)
        captions = [caption for _, caption in captioner.caption_stream(items)]
        # encoder-decoder: the decoder start token plus at most max_new_tokens new tokens
        assert outputs and all(out.shape[1] <= max_new_tokens + 1 for out in outputs)
        assert all(0 < len(caption) <= max_new_tokens for caption in captions)


def test_florence2_beam_search(florence_dir):
    items = _images(3)
    captioner = _florence(florence_dir, num_beams=2, batch_size=3)
    results = list(captioner.caption_stream(items))
    assert [image_id for image_id, _ in results] == ["img0", "img1", "img2"]
    assert all(isinstance(caption, str) and caption for _, caption in results)
    assert list(captioner.caption_stream(items)) == results


def test_florence2_bfloat16(florence_dir):
    captioner = _florence(florence_dir, dtype="bfloat16", batch_size=2)
    assert captioner.model.dtype == torch.bfloat16
    results = list(captioner.caption_stream(_images(3)))
    assert [image_id for image_id, _ in results] == ["img0", "img1", "img2"]
    assert all(isinstance(caption, str) and caption for _, caption in results)


def test_florence2_rejected_prompt_is_captioner_error(florence_dir):
    captioner = TransformersCaptioner(
        pretrained=str(florence_dir), prompt="<CAPTION> and more", device="cpu"
    )
    with pytest.raises(CaptionerError, match="<CAPTION> and more"):
        list(captioner.caption_stream(_images(1)))


def test_describe(florence_dir):
    captioner = _florence(florence_dir)
    assert captioner.describe() == {
        "captioner": "transformers",
        "model": str(florence_dir),
        "prompt": "<MORE_DETAILED_CAPTION>",
        "kind": "florence2",
    }


# --------------------------------------------------------------------------- errors


def test_missing_directory_is_captioner_error(tmp_path):
    missing = tmp_path / "no-such-model"
    with pytest.raises(CaptionerError, match="local directory") as info:
        TransformersCaptioner(pretrained=str(missing), prompt="<CAPTION>", device="cpu")
    assert str(missing) in str(info.value)


@pytest.mark.skipif(
    os.environ.get("HF_HUB_OFFLINE") != "1", reason="needs HF_HUB_OFFLINE=1 (no network)"
)
def test_uncached_hub_id_offline_is_captioner_error():
    ref = "vlv-test-nobody/no-such-captioner"
    with pytest.raises(CaptionerError, match="local directory") as info:
        TransformersCaptioner(pretrained=ref, prompt="<CAPTION>", device="cpu")
    assert ref in str(info.value)


def test_empty_directory_is_captioner_error(tmp_path):
    with pytest.raises(CaptionerError, match=str(tmp_path)):
        TransformersCaptioner(pretrained=str(tmp_path), prompt="<CAPTION>", device="cpu")


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"pretrained": ""}, "pretrained"),
        ({"prompt": "  "}, "prompt"),
        ({"kind": "seq2seq"}, "kind"),
        ({"batch_size": 0}, "batch_size"),
        ({"batch_size": True}, "batch_size"),
        ({"max_new_tokens": -1}, "max_new_tokens"),
        ({"num_beams": 1.5}, "num_beams"),
        ({"dtype": "float64"}, "dtype"),
        ({"device": "gpu7"}, "device"),
    ],
)
def test_invalid_arguments(kwargs, name):
    args = {"pretrained": "/nonexistent/model", "prompt": "<CAPTION>", **kwargs}
    with pytest.raises(ValueError, match=name):
        TransformersCaptioner(**args)


# --------------------------------------------------------------------------- image-text-to-text


def test_image_text_to_text_chat_model(llava_dir):
    items = _images(5)
    captioner = TransformersCaptioner(
        pretrained=str(llava_dir),
        prompt="Describe the image.",
        kind="image-text-to-text",
        batch_size=2,
        max_new_tokens=5,
        device="cpu",
    )
    assert captioner.processor.tokenizer.padding_side == "left"
    outputs = _spy_generate(captioner)
    results = list(captioner.caption_stream(items))
    assert [image_id for image_id, _ in results] == [image_id for image_id, _ in items]
    assert len(outputs) == 3  # batches of 2, 2, 1
    for _, caption in results:
        # only the new tokens are decoded: no trace of the prompt
        assert isinstance(caption, str) and 0 < len(caption) <= 5
        assert "assistant" not in caption and "Describe" not in caption
    assert list(captioner.caption_stream(items)) == results
    assert len({caption for _, caption in results}) > 1  # the image reaches the caption
    beams = TransformersCaptioner(
        pretrained=str(llava_dir),
        prompt="Describe the image.",
        kind="image-text-to-text",
        num_beams=2,
        max_new_tokens=3,
        device="cpu",
    )
    assert len(list(beams.caption_stream(items[:2]))) == 2
