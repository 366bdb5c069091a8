"""Importing the published VLV captioner: a reference that mirrors the official module tree.

``OfficialReference`` is written from reading the official code (Tiezheng11/Vision-Language-
Vision: models/VLV_stage2.py ``CLIPDecoder``, models/VLV_stage1.py, and Florence-2's remote
code), independently of ``models/published.py``'s tables: its attribute names give the
official state-dict keys, and its forward follows the official arithmetic from a 384 px crop
to caption tokens. Its Florence-2 modules are the native ones, registered under the remote
code's names, except ``image_projection``, a bare (in, out) parameter used as ``x @ P`` as
there. It is saved the way the official trainer wraps it (``model_state_dict``,
``module.`` prefixes) and imported through the pipeline's node.
"""

from __future__ import annotations

import pytest
import torch
from stage2_factory import TINY_QWEN2
from tiny_configs import tiny_florence
from torch import nn

from vlv_pipeline.models.published import PublishedCheckpointError, read_state_dict
from vlv_pipeline.params.published import ImportParams
from vlv_pipeline.pipelines.import_published.nodes import import_published_captioner

CLIP = {
    "hidden_size": 24,
    "intermediate_size": 48,
    "num_attention_heads": 2,
    "num_hidden_layers": 2,
    "max_position_embeddings": 16,
    "attn_implementation": "eager",
}
QUERIES, CROP, FLORENCE_SIDE = 6, 24, 32


class Box(nn.Module):
    """A named container: the official module tree's intermediate names."""

    def __init__(self, **children):
        super().__init__()
        for name, child in children.items():
            setattr(self, name, child)


def _remote_davit(native) -> nn.Module:
    """The remote code's DaViT names over the native modules (convs.N.proj, blocks.i.j.
    {spatial,channel}_block with conv1.fn.dw, {window,channel}_attn.{norm, fn.qkv, fn.proj},
    conv2.fn.dw, ffn.{norm, fn.net.fc1, fn.net.fc2})."""
    convs = nn.ModuleList(Box(proj=c.conv, norm=c.norm) for c in native.convs)
    stages = nn.ModuleList()
    for stage in native.blocks:
        blocks = nn.ModuleList()
        for block in stage:
            parts = {}
            for kind, attn in (("spatial_block", "window_attn"), ("channel_block", "channel_attn")):
                b = getattr(block, kind)
                parts[kind] = Box(
                    conv1=Box(fn=Box(dw=b.conv1)),
                    **{
                        attn: Box(
                            norm=b.norm1,
                            fn=Box(qkv=getattr(b, attn).qkv, proj=getattr(b, attn).proj),
                        )
                    },
                    conv2=Box(fn=Box(dw=b.conv2)),
                    ffn=Box(norm=b.norm2, fn=Box(net=Box(fc1=b.ffn.fc1, fc2=b.ffn.fc2))),
                )
            blocks.append(Box(**parts))
        stages.append(blocks)
    return Box(convs=convs, blocks=stages)


class RemoteFlorence(nn.Module):
    """Florence-2 as its remote code names it: vision_tower, image_projection (a bare
    parameter), image_proj_norm, image_pos_embed, visual_temporal_embed, language_model
    (.model = BART, .lm_head, .final_logits_bias)."""

    def __init__(self, native):
        super().__init__()
        self._native = [native]  # not a submodule: its weights appear under the names below
        model = native.model
        projector = model.multi_modal_projector
        self.vision_tower = _remote_davit(model.vision_tower)
        self.image_projection = nn.Parameter(projector.image_projection.weight.detach().t().clone())
        self.image_proj_norm = projector.image_proj_norm
        self.image_pos_embed = Box(
            row_embeddings=projector.image_position_embed.row_embeddings,
            column_embeddings=projector.image_position_embed.column_embeddings,
        )
        self.visual_temporal_embed = Box()
        self.visual_temporal_embed.register_buffer(
            "pos_idx_to_embed", projector.visual_temporal_embed.pos_idx_to_embed
        )
        lm_head = nn.Linear(*native.lm_head.weight.shape[::-1], bias=False)  # VLV's frozen copy
        self.language_model = Box(model=model.language_model, lm_head=lm_head)
        self.language_model.register_buffer(
            "final_logits_bias", torch.zeros(1, lm_head.out_features)
        )

    def image_features(self, pixel_values):
        native = self._native[0].model
        x = native.vision_tower(pixel_values).last_hidden_state  # (B, C, H, W)
        x = x + native.multi_modal_projector.image_position_embed(x)
        x = x.flatten(2).transpose(1, 2)
        x = x + self.visual_temporal_embed.pos_idx_to_embed[:1].unsqueeze(0)
        x = torch.cat([x.mean(dim=1, keepdim=True), x], dim=1)  # pooled token, then the grid
        return self.image_proj_norm(x @ self.image_projection)


class OfficialReference(nn.Module):
    """``CLIPDecoder``: qwen2_model, mlp.layers, VLV_model.{query_embed, language_proj, model,
    text_encoder.text_model, unet}."""

    def __init__(self, florence, clip, qwen, prompt_ids):
        super().__init__()
        width = florence.config.text_config.d_model
        self.qwen2_model = qwen
        hidden = qwen.config.hidden_size
        self.mlp = Box(
            layers=nn.Sequential(
                nn.Linear(clip.config.hidden_size, hidden), nn.GELU(), nn.Linear(hidden, hidden)
            )
        )
        self.VLV_model = Box(
            query_embed=nn.Parameter(torch.randn(1, QUERIES, width) * 0.5),
            language_proj=nn.Sequential(
                nn.Linear(width, width), nn.GELU(), nn.Linear(width, clip.config.hidden_size)
            ),
            model=RemoteFlorence(florence),
            text_encoder=Box(text_model=clip),
            unet=nn.Linear(2, 2),  # left in the checkpoint; captioning never uses it
        )
        self.prompt_ids = torch.tensor(prompt_ids)

    def prefix(self, crops):
        """uint8 384-crops (B, 3, S, S) -> the LLM's prefix embeddings. The pixels go through
        Florence-2's processor: transformers' PIL CLIPImageProcessor with Florence-2-large's
        preprocessor_config (PIL bicubic to the model's side, 1/255, ImageNet mean/std)."""
        from PIL import Image
        from transformers import CLIPImageProcessorPil

        florence = self.VLV_model.model
        processor = CLIPImageProcessorPil(
            size={"height": FLORENCE_SIDE, "width": FLORENCE_SIDE},
            resample=Image.Resampling.BICUBIC,
            do_center_crop=False,
            rescale_factor=1 / 255,
            image_mean=[0.485, 0.456, 0.406],
            image_std=[0.229, 0.224, 0.225],
            do_convert_rgb=None,
        )
        pixels = processor(list(crops), return_tensors="pt")["pixel_values"]
        image = florence.image_features(pixels)
        bart = florence.language_model.model
        prompt = bart.shared(self.prompt_ids).unsqueeze(0).expand(len(crops), -1, -1)
        encoded = bart.encoder(inputs_embeds=torch.cat([image, prompt], dim=1)).last_hidden_state
        queries = self.VLV_model.query_embed.expand(len(crops), -1, -1)
        decoded = bart.decoder(
            inputs_embeds=queries, encoder_hidden_states=encoded
        ).last_hidden_state
        embeddings = self.VLV_model.language_proj(decoded)
        text = self.VLV_model.text_encoder.text_model
        n = embeddings.shape[1]
        hidden = embeddings + text.embeddings.position_embedding(torch.arange(n))
        causal = torch.full((n, n), float("-inf")).triu(1)[None, None]
        hidden = text.encoder(inputs_embeds=hidden, attention_mask=causal).last_hidden_state
        return self.mlp.layers(text.final_layer_norm(hidden))

    @torch.no_grad()
    def generate(self, crops, tokenizer, **settings):
        prefix = self.prefix(crops).to(torch.bfloat16)  # as the official generate(), in fp32 too
        return self.qwen2_model.generate(
            inputs_embeds=prefix,
            attention_mask=torch.ones(prefix.shape[:2], dtype=torch.long),
            do_sample=False,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id,
            **settings,
        )


def _unwrap_officially(saved: dict) -> dict:
    """What the official inference does with a checkpoint before load_state_dict."""
    state = saved.get("model_state_dict", saved)
    return {k.replace("module.", ""): v for k, v in state.items()}


@pytest.fixture(scope="module")
def published(tiny_sd, tmp_path_factory):
    from transformers import (
        AutoTokenizer,
        CLIPTextConfig,
        CLIPTextModel,
        Florence2Config,
        Florence2ForConditionalGeneration,
        Qwen2Config,
        Qwen2ForCausalLM,
    )

    tmp = tmp_path_factory.mktemp("published")
    tokenizer = AutoTokenizer.from_pretrained(tiny_sd / "tokenizer")
    vocab = len(tokenizer)
    torch.manual_seed(0)
    florence_config = tiny_florence(vocab_size=vocab, image_token_id=vocab - 1, text_positions=128)
    florence = Florence2ForConditionalGeneration(Florence2Config(**florence_config)).eval()
    clip_config = {**CLIP, "vocab_size": vocab}
    clip = CLIPTextModel(CLIPTextConfig(**clip_config)).eval()
    qwen_config = {k: v for k, v in TINY_QWEN2.items() if k != "model_type"}
    # large initial weights: a random tiny LLM otherwise says one token whatever it reads
    qwen_config.update(vocab_size=vocab, eos_token_id=tokenizer.eos_token_id, initializer_range=1.0)
    qwen = Qwen2ForCausalLM(Qwen2Config(**qwen_config)).eval()
    prompt_ids = tokenizer("a red circle").input_ids
    reference = OfficialReference(florence, clip, qwen, prompt_ids).eval()
    with torch.no_grad():  # no two weights alike (norms start at 1, biases at 0): a mapping
        for p in reference.parameters():  # that swapped two of them would show
            p.add_(torch.randn_like(p) * 0.1)
        for p in [*reference.mlp.parameters(), *reference.VLV_model.language_proj.parameters()]:
            p.mul_(4)
    wrapped = {"model_state_dict": {f"module.{k}": v for k, v in reference.state_dict().items()}}
    torch.save(wrapped, tmp / "vlv_stage2.pt")
    configs = {
        "florence": florence_config,
        "clip": clip_config,
        "qwen": {**TINY_QWEN2, "vocab_size": vocab, "initializer_range": 1.0},
    }
    params = ImportParams(
        checkpoint=str(tmp / "vlv_stage2.pt"),
        florence2={"init": configs["florence"]},
        florence2_tokenizer={"pretrained": str(tiny_sd), "subfolder": "tokenizer"},
        prompt="a red circle",
        text_encoder={"init": configs["clip"]},
        llm={"init": configs["qwen"]},
        tokenizer={"pretrained": str(tiny_sd), "subfolder": "tokenizer"},
        input_size=FLORENCE_SIDE,
        generation={"max_new_tokens": 8, "num_beams": 4},
    )
    return reference, params, tokenizer, tmp


def test_the_reference_loads_its_own_checkpoint_strictly(published):
    reference, params, *_ = published
    saved = torch.load(params.checkpoint, weights_only=True)
    reference.load_state_dict(_unwrap_officially(saved), strict=True)
    keys = set(_unwrap_officially(saved))  # the official names, e.g.
    assert "VLV_model.model.vision_tower.blocks.0.0.spatial_block.window_attn.fn.qkv.weight" in keys
    assert "VLV_model.text_encoder.text_model.final_layer_norm.weight" in keys
    assert "mlp.layers.2.weight" in keys and "VLV_model.query_embed" in keys


def _crops(n=3, seed=1):
    """uint8 crops (what the official inference's PILToTensor gives) and the same pixels
    as this project's captioner takes them (floats in [-1, 1])."""
    crops = torch.randint(0, 256, (n, 3, CROP, CROP), generator=torch.Generator().manual_seed(seed))
    crops = crops.to(torch.uint8)
    return crops, crops.float() / 127.5 - 1


@pytest.mark.parametrize("beams", [1, 4])
def test_the_imported_captioner_generates_the_reference_tokens(published, beams, caplog):
    reference, params, tokenizer, tmp = published
    with caplog.at_level("INFO"):
        captioner = import_published_captioner(params)
    assert "skipped 2 tensors of the stage-1 UNet/VAE" in caplog.text
    captioner.save_pretrained(tmp / f"saved{beams}")  # and back, as the catalog stores it
    from vlv_pipeline.models.captioner import VLVCaptioner

    captioner = VLVCaptioner.from_pretrained(tmp / f"saved{beams}")
    assert captioner.generation["bf16_prefix"] is True  # recorded: the official cast
    crops, pixels = _crops()
    settings = {"max_new_tokens": 8, "num_beams": beams, "early_stopping": True}
    expected = reference.generate(crops, tokenizer, **settings)
    with torch.no_grad():
        ours = captioner.decoder.generate(
            captioner.conditions(pixels),
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id,
            prefix_dtype=torch.bfloat16,
            **settings,
        )
        prefix = captioner.decoder.prefix(captioner.conditions(pixels))
        assert torch.allclose(prefix, reference.prefix(crops), atol=1e-5)
    assert ours.tolist() == expected.tolist()
    texts = tokenizer.batch_decode(expected, skip_special_tokens=True)
    assert captioner.caption(pixels, **settings) == [t.strip() for t in texts]
    assert (prefix[0] - prefix[1]).abs().max() > 1e-3  # what the LLM reads depends on the image


def test_the_prefix_reaches_the_llm_bf16_rounded_only_with_the_cast(published):
    *_, params, tokenizer, _ = published
    captioner = import_published_captioner(params)
    _, pixels = _crops(n=2)
    seen = []

    def first_call(module, args, kwargs):
        if kwargs.get("inputs_embeds") is not None and len(seen) % 2 == 0:
            seen.append(kwargs["inputs_embeds"].detach().clone())

    handle = captioner.decoder.llm.register_forward_pre_hook(first_call, with_kwargs=True)
    try:
        captioner.caption(pixels, max_new_tokens=2)  # the imported default: cast
        seen.append(None)
        captioner.caption(pixels, max_new_tokens=2, bf16_prefix=False)
    finally:
        handle.remove()
    cast, plain = seen[0], seen[2]
    assert captioner.decoder.llm.dtype == torch.float32  # an fp32 run, as the official one
    assert cast.dtype == torch.bfloat16
    assert plain.dtype == torch.float32
    assert not torch.equal(plain, plain.to(torch.bfloat16).float())  # not rounded
    assert torch.equal(cast.float(), plain.to(torch.bfloat16).float())  # the same, rounded


def test_position_tables_are_sized_from_the_checkpoint_not_the_config(published):
    reference, params, tokenizer, _ = published
    vocab = len(tokenizer)
    # a Florence-2 config with other table sizes than the checkpoint's (as Florence-2 copies
    # with 1024 text positions against today's 4096)
    config = tiny_florence(vocab_size=vocab, image_token_id=vocab - 1, text_positions=64)
    config["vision_config"]["max_position_embeddings"] = 50
    config["vision_config"]["max_temporal_embeddings"] = 100
    other = ImportParams(**{**params.model_dump(), "florence2": {"init": config}})
    captioner = import_published_captioner(other)
    text = captioner.encoder.florence.config.text_config
    assert text.max_position_embeddings == 128  # the checkpoint's (130 rows, offset 2)
    assert captioner.encoder.florence.config.vision_config.max_position_embeddings == 16
    crops, pixels = _crops(n=2)
    expected = reference.generate(crops, tokenizer, max_new_tokens=6, num_beams=1)
    texts = [t.strip() for t in tokenizer.batch_decode(expected, skip_special_tokens=True)]
    assert captioner.caption(pixels, max_new_tokens=6, num_beams=1) == texts


def test_unknown_or_missing_keys_fail_with_one_list_by_component(published, tmp_path):
    reference, params, *_ = published
    state = dict(reference.state_dict())
    state["VLV_model.mystery.weight"] = torch.zeros(1)
    del state["VLV_model.language_proj.2.bias"]
    del state["qwen2_model.model.norm.weight"]
    torch.save(state, tmp_path / "broken.pt")
    with pytest.raises(PublishedCheckpointError) as error:
        import_published_captioner(
            params.model_copy(update={"checkpoint": str(tmp_path / "broken.pt")})
        )
    message = str(error.value)
    assert "VLV_model.mystery.weight" in message
    assert "encoder: weights the checkpoint lacks (1): phi.2.bias" in message
    assert "decoder: weights the checkpoint lacks (1): llm.model.norm.weight" in message


def test_a_checkpoint_with_code_in_it_is_not_unpickled(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("unpickled!",))

    torch.save({"x": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(PublishedCheckpointError, match="weights_only"):
        read_state_dict(tmp_path / "evil.pt")


def test_safetensors_shards_read_as_they_are(published, tmp_path):
    from safetensors.torch import save_file

    reference, *_ = published
    state = {k: v.clone().contiguous() for k, v in reference.state_dict().items()}
    names = sorted(state)
    save_file({k: state[k] for k in names[::2]}, str(tmp_path / "model-1.safetensors"))
    save_file({k: state[k] for k in names[1::2]}, str(tmp_path / "model-2.safetensors"))
    read = read_state_dict(tmp_path)
    assert set(read) == set(state) and all(torch.equal(read[k], state[k]) for k in names)


def _damage(path, how: str) -> None:
    data = path.read_bytes()
    if how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif how == "garbage":
        path.write_bytes(b"not a safetensors file at all " * 8)
    else:  # empty
        path.write_bytes(b"")


@pytest.mark.parametrize("how", ["truncated", "garbage", "empty"])
@pytest.mark.parametrize("layout", ["file", "shards"])
def test_a_damaged_safetensors_checkpoint_is_refused_by_name(published, tmp_path, how, layout):
    from safetensors.torch import save_file

    reference, params, *_ = published
    state = {k: v.clone().contiguous() for k, v in reference.state_dict().items()}
    names = sorted(state)
    if layout == "file":
        save_file(state, str(tmp_path / "model.safetensors"))
        bad, given = tmp_path / "model.safetensors", tmp_path / "model.safetensors"
    else:
        save_file({k: state[k] for k in names[::2]}, str(tmp_path / "model-1.safetensors"))
        save_file({k: state[k] for k in names[1::2]}, str(tmp_path / "model-2.safetensors"))
        bad, given = tmp_path / "model-2.safetensors", tmp_path
    _damage(bad, how)
    with pytest.raises(PublishedCheckpointError) as error:
        import_published_captioner(params.model_copy(update={"checkpoint": str(given)}))
    message = str(error.value)
    assert str(bad) in message  # the file, not just the folder
    assert "download" in message  # and what to do


def test_the_imported_captioner_carries_its_card(published):
    from huggingface_hub import ModelCard

    from vlv_pipeline.models.model_card_parts import PAPER_CAPTIONER

    *_, params, _, _ = published
    card = ModelCard(import_published_captioner(params).model_card)
    assert card.data.base_model == [PAPER_CAPTIONER] and card.data.pipeline_tag == "image-to-text"
    assert 'Captioner.from_pretrained("data/paper/06_models/published_captioner")' in card.text
    assert "Nothing was trained here" in card.text and str(params.checkpoint) in card.text
