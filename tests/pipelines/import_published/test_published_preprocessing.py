"""The published captioner sees the pixels the official inference gave it (issue 26, item 18).

The official inference (Tiezheng11/Vision-Language-Vision, train/Caption_inference.py) reads
``Image.open(path).convert("RGB")``, then torchvision's ``Resize(384)`` (PIL bilinear,
shorter side to 384, the longer ``int(384 * long / short)``) and ``CenterCrop(384)`` (offsets
``int(round((side - 384) / 2))``), then ``PILToTensor`` (uint8). Florence-2's processor
(``CLIPImageProcessor``: PIL bicubic to 768 x 768, rescale 1/255, ImageNet mean/std) makes
the encoder's input. The reference below is that chain, with transformers' own PIL image
processor; the pixels the vision tower receives must be equal to it, bit for bit.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from transformers import (
    AutoTokenizer,
    CLIPImageProcessorPil,
    CLIPTextConfig,
    CLIPTextModel,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from vlv_pipeline.models.caption_decoder import CaptionDecoder
from vlv_pipeline.models.captioner import VLVCaptioner
from vlv_pipeline.models.vlv_encoder import Florence2VLVEncoder
from vlv_pipeline.world.data import pil_to_tensor

CROP, SIDE = 384, 768
MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def _official_crop(image: Image.Image, size: int = CROP) -> Image.Image:
    """torchvision Resize(size) + CenterCrop(size) on a PIL image, as documented."""
    width, height = image.size
    short, long = sorted((width, height))
    new_short, new_long = size, int(size * long / short)
    new_w, new_h = (new_short, new_long) if width <= height else (new_long, new_short)
    resized = image.resize((new_w, new_h), Image.Resampling.BILINEAR)
    top, left = int(round((new_h - size) / 2.0)), int(round((new_w - size) / 2.0))
    return resized.crop((left, top, left + size, top + size))


def _florence_processor() -> CLIPImageProcessorPil:
    """Florence-2-large's preprocessor_config.json, in transformers' PIL image processor."""
    return CLIPImageProcessorPil(
        do_resize=True,
        size={"height": SIDE, "width": SIDE},
        resample=Image.Resampling.BICUBIC,
        do_center_crop=False,
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=MEAN,
        image_std=STD,
        do_convert_rgb=None,
    )


def _official_pixels(path: Path) -> torch.Tensor:
    """The encoder input the official inference makes from an image file."""
    crop = _official_crop(Image.open(path).convert("RGB"))
    uint8 = torch.from_numpy(np.array(crop)).permute(2, 0, 1)  # PILToTensor
    return _florence_processor()(uint8, return_tensors="pt")["pixel_values"][0]


def _photo_like(path: Path, size=(640, 427), seed=0) -> Path:
    """A noisy natural-looking picture: smooth gradients, hard edges, texture, a disc."""
    rng = np.random.default_rng(seed)
    w, h = size
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    sky = np.stack([90 + 80 * y / h, 140 + 60 * y / h, 230 - 50 * y / h], -1)
    ground = np.stack([70 + 40 * x / w, 120 + 30 * np.sin(x / 23), 40 + 20 * y / h], -1)
    image = np.where((y > h * 0.55 + 12 * np.sin(x / 37))[..., None], ground, sky)
    disc = (x - w * 0.7) ** 2 + (y - h * 0.3) ** 2 < (h * 0.12) ** 2
    image[disc] = [250, 220, 120]
    image[int(h * 0.2) : int(h * 0.8), int(w * 0.15) : int(w * 0.18)] = [40, 30, 25]  # a pole
    image += rng.normal(0, 9, image.shape)  # sensor noise
    Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(path, quality=92)
    return path


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("photos")
    hopper = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    assert hopper.is_file(), "matplotlib's sample photo is missing"
    (folder / "grace_hopper.jpg").write_bytes(hopper.read_bytes())  # 512 x 600, portrait
    _photo_like(folder / "landscape.jpg")
    _photo_like(folder / "tall.png", size=(301, 517), seed=1)
    return sorted(folder.iterdir())


def _tiny_florence() -> dict:
    """A Florence-2 that reads 768 px cheaply (patch strides 8 and 4: a 24 x 24 grid)."""
    return {
        "vision_config": {
            "depths": [1, 1],
            "patch_size": [9, 5],
            "patch_stride": [8, 4],
            "patch_padding": [4, 2],
            "patch_prenorm": [False, True],
            "embed_dim": [8, 16],
            "num_heads": [1, 2],
            "num_groups": [1, 2],
            "window_size": 4,
            "projection_dim": 16,
            "max_position_embeddings": 32,
            "max_temporal_embeddings": 4,
        },
        "text_config": {
            "vocab_size": 64,
            "d_model": 16,
            "encoder_layers": 1,
            "decoder_layers": 1,
            "encoder_attention_heads": 2,
            "decoder_attention_heads": 2,
            "encoder_ffn_dim": 32,
            "decoder_ffn_dim": 32,
            "max_position_embeddings": 640,  # 577 image tokens and the prompt
        },
        "image_token_id": 63,
    }


@pytest.fixture(scope="module")
def encoder() -> Florence2VLVEncoder:
    torch.manual_seed(0)
    return Florence2VLVEncoder(
        florence_config=_tiny_florence(),
        num_queries=4,
        out_dim=8,
        prompt_ids=(0, 5, 2),
        input_size=SIDE,
        image_size=CROP,
    ).eval()


class _Seen:
    """Records what the Florence-2 vision tower is given."""

    def __init__(self):
        self.pixels: list[torch.Tensor] = []

    def __call__(self, module, args):
        if type(module).__name__ == "Florence2VisionBackbone":
            self.pixels.extend(args[0].detach().float().clone())


def test_the_vision_tower_gets_what_florences_processor_gives(encoder, photos):
    seen = _Seen()
    handle = encoder.florence.model.vision_tower.register_forward_pre_hook(seen)
    try:
        crops = [_official_crop(Image.open(p).convert("RGB")) for p in photos]
        with torch.no_grad():
            encoder(torch.stack([pil_to_tensor(c) for c in crops]))
    finally:
        handle.remove()
    for path, got in zip(photos, seen.pixels, strict=True):
        expected = _official_pixels(path)
        levels = ((got - expected) * torch.tensor(STD).view(3, 1, 1) * 255).abs().max()
        assert torch.equal(got, expected), f"{path.name}: off by {levels:.2f} grey levels"


def _captioner(encoder, tokenizer) -> VLVCaptioner:
    torch.manual_seed(1)
    clip = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=8,
            intermediate_size=16,
            num_attention_heads=2,
            num_hidden_layers=1,
            max_position_embeddings=8,
            pad_token_id=tokenizer.pad_token_id or 0,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
    )
    llm = Qwen2ForCausalLM(
        Qwen2Config(
            vocab_size=len(tokenizer),
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=1,
            max_position_embeddings=32,
        )
    )
    decoder = CaptionDecoder(llm, prefix_dim=8)
    return VLVCaptioner(encoder, clip, decoder, tokenizer, max_new_tokens=2).eval()


class _FirstLayerInput:
    """The hidden states the LLM's first layer reads (its prefix, on the first call)."""

    def __init__(self):
        self.tensor = None

    def __call__(self, module, args):
        if type(module).__name__ == "Qwen2RMSNorm" and self.tensor is None:
            self.tensor = args[0].detach().clone()


@pytest.mark.parametrize("bf16_prefix", [None, False])
def test_the_caption_pipeline_feeds_the_published_captioner_as_the_official_inference(
    encoder, photos, tiny_sd, bf16_prefix
):
    from vlv_pipeline.params.evaluate import CaptionParams
    from vlv_pipeline.params.ingest import IngestParams
    from vlv_pipeline.pipelines.caption.nodes import (
        caption_user_images,
        open_user_images,
        screen_user_images,
    )

    captioner = _captioner(encoder, AutoTokenizer.from_pretrained(tiny_sd / "tokenizer"))
    params = CaptionParams(
        source=str(photos[0].parent), model="published", batch_size=8, bf16_prefix=bf16_prefix
    )
    source = open_user_images(params)
    screened = screen_user_images(source, IngestParams(min_side=8))
    seen, first = _Seen(), _FirstLayerInput()
    hooks = [
        torch.nn.modules.module.register_module_forward_pre_hook(seen),
        torch.nn.modules.module.register_module_forward_pre_hook(first),
    ]
    try:
        table = caption_user_images(captioner, source, screened, params)
    finally:
        for handle in hooks:
            handle.remove()
    assert table["caption"].map(lambda c: isinstance(c, str)).all()
    expected = [_official_pixels(p) for p in photos]
    assert len(seen.pixels) == len(expected)
    for path, want in zip(photos, expected, strict=True):  # in whichever order they came
        assert any(torch.equal(got, want) for got in seen.pixels), path.name
    prefix = first.tensor.float()
    rounded = torch.equal(prefix, prefix.to(torch.bfloat16).float())
    if bf16_prefix is None:  # the default for caption.model: published, as official generate()
        assert rounded
    else:
        assert not rounded
    assert isinstance(table, pd.DataFrame)
