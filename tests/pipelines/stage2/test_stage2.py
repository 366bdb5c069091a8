"""Stage 2 on tiny replicas: caption decoder, trainable modes, EOS, the pipeline's nodes."""

import pytest
import torch
from diffusers import AutoencoderKL
from stage2_factory import TINY_QWEN2, stage1_params, stage2_inputs, stage2_params
from tb_events import read_events
from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

from vlv_pipeline.datasets.shard_store import EmbeddingCache
from vlv_pipeline.models.caption_decoder import CaptionDecoder, tokenize_captions
from vlv_pipeline.models.captioner import VLVCaptioner
from vlv_pipeline.models.stage2 import Stage2Objective, set_trainable
from vlv_pipeline.models.vlv_encoder import SmallVLVEncoder, vae_config_of
from vlv_pipeline.params.stage2 import trainable_parts
from vlv_pipeline.params.synthesize import SynthesizeParams
from vlv_pipeline.params.t2i import T2IParams
from vlv_pipeline.pipelines.stage2 import nodes
from vlv_pipeline.pipelines.synthesize import nodes as synth


@pytest.fixture(scope="module")
def tokenizer(tiny_sd):
    return AutoTokenizer.from_pretrained(tiny_sd / "tokenizer")


def _llm(tokenizer, **kw):
    config = {k: v for k, v in TINY_QWEN2.items() if k != "model_type"}
    torch.manual_seed(0)
    return Qwen2ForCausalLM(
        Qwen2Config(
            **{**config, **kw},
            vocab_size=len(tokenizer),
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )


def test_tokens_end_with_eos_and_the_loss_covers_it_even_when_pad_is_eos(tokenizer):
    tokens = tokenize_captions(
        tokenizer, ["a small red circle on the left", "a large blue square in the centre"], 64
    )
    ids, mask = tokens["input_ids"], tokens["attention_mask"]
    eos = tokenizer.eos_token_id
    lengths = mask.sum(1)
    assert [ids[i, n - 1].item() for i, n in enumerate(lengths)] == [eos, eos]
    assert tokenizer.bos_token_id not in ids[mask.bool()].tolist()
    decoder = CaptionDecoder(_llm(tokenizer), prefix_dim=16)
    seen = {}

    def spy(**kwargs):
        seen.update(kwargs)
        return type("Out", (), {"loss": torch.tensor(0.0)})()

    decoder.llm.forward = spy
    same_pad = ids.masked_fill(mask == 0, eos)  # a tokenizer whose pad token is its EOS
    decoder(torch.randn(2, 3, 16), same_pad, mask)
    labels = seen["labels"]
    assert (labels[:, :3] == -100).all()  # the prefix is not predicted
    for i, n in enumerate(lengths):
        assert labels[i, 3 + n - 1] == eos  # the EOS IS a target
        assert (labels[i, 3 + n :] == -100).all()  # padding is not
    assert tokenize_captions(tokenizer, ["a b c d e f"], 3)["input_ids"].shape[1] == 3


def test_caption_tokens_per_item_equal_the_whole_list_tokenised(tokenizer):
    from vlv_pipeline.models.caption_decoder import CaptionTokens

    captions = ["a small red circle", "a large blue square in the centre", "a b c d e f g h"]
    for max_tokens in (64, 5):
        whole = tokenize_captions(tokenizer, captions, max_tokens)
        items = CaptionTokens(tokenizer, captions, max_tokens)
        assert len(items) == 3
        for i in (2, 0, 1):
            ids, mask = items[i]
            assert torch.equal(ids, whole["input_ids"][i])
            assert torch.equal(mask, whole["attention_mask"][i])


def test_the_decoder_learns_to_stop(tokenizer):
    """Two prefixes, two captions of different lengths: after training, greedy generation
    reproduces each caption and stops on its own, well before max_new_tokens."""
    captions = [
        "a small red circle on the left",
        "a large blue square in the centre and a small green triangle at the top right",
    ]
    tokens = tokenize_captions(tokenizer, captions, 64)
    decoder = CaptionDecoder(_llm(tokenizer), prefix_dim=8)
    prefixes = torch.randn(2, 2, 8)
    optimizer = torch.optim.AdamW(decoder.parameters(), 3e-3)
    for _ in range(150):
        loss = decoder(prefixes, tokens["input_ids"], tokens["attention_mask"])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    out = decoder.generate(
        prefixes,
        max_new_tokens=40,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    texts = tokenizer.batch_decode(out, skip_special_tokens=True)
    assert [t.strip() for t in texts] == captions
    assert out.shape[1] < 40  # stopped: EOS was generated, not the token limit


@pytest.mark.parametrize(
    "trainable", ["projector", "projector+llm", "projector+lora", "projector+llm+encoder"]
)
def test_trainable_parts_follow_the_parameter(tokenizer, tiny_sd, tmp_path, trainable):
    vae = AutoencoderKL.from_pretrained(tiny_sd / "vae")
    encoder = SmallVLVEncoder(
        num_queries=4, out_dim=16, width=16, heads=2, image_size=16, vae_config=vae_config_of(vae)
    )
    decoder = CaptionDecoder(_llm(tokenizer), prefix_dim=16)
    lora = stage2_params(tiny_sd, tmp_path).lora.model_copy(
        update={"target_modules": ("q_proj", "v_proj")}
    )
    set_trainable(decoder, encoder, trainable_parts(trainable), lora)
    grads = lambda m: {n for n, p in m.named_parameters() if p.requires_grad}  # noqa: E731
    assert grads(decoder.psi)
    llm = grads(decoder.llm)
    assert bool(llm) == (trainable != "projector")
    if trainable == "projector+lora":
        assert llm and all("lora_" in n for n in llm)
    enc = grads(encoder)
    assert bool(enc) == (trainable == "projector+llm+encoder")
    assert not any(n.startswith("vae_tower") for n in enc)  # the tower stays frozen


def test_stage2_nodes_train_save_reload_and_score(tiny_world, tiny_sd, tmp_path):
    params, data, encoder, cache = stage2_inputs(tiny_world, tiny_sd, tmp_path)
    assert len(data.pair_ids) == 8 and len(data.eval_ids) == 4
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    captioner, log = nodes.train_stage2(data, encoder, cache, params, T2IParams(model=str(tiny_sd)))
    assert [e["step"] for e in log["history"]] == [1, 2] and log["pairs"] == 8
    assert all(torch.equal(before[k], v) for k, v in encoder.state_dict().items())  # frozen
    captions = captioner.caption(data.eval_pixels)
    assert len(captions) == 4 and all(isinstance(c, str) for c in captions)
    captioner.save_pretrained(tmp_path / "captioner")
    again = VLVCaptioner.from_pretrained(tmp_path / "captioner")
    assert again.caption(data.eval_pixels) == captions
    stage1 = stage1_params(tiny_sd)
    baseline, baseline_log = nodes.train_baseline(
        data, params, stage1, T2IParams(model=str(tiny_sd))
    )
    assert baseline_log["trainable"] == "projector+llm+encoder"
    assert baseline_log["trainable_parameters"] > log["trainable_parameters"]
    metrics = nodes.validate_stage2(captioner, baseline, data, params, stage1)
    assert set(metrics) >= {"vlv", "without_stage1"}  # no probe: samples only
    assert len(metrics["vlv"]["samples"]) == 4
    assert nodes.plot_stage2_loss(log, baseline_log).axes


def test_fewer_pairs_than_a_batch_are_refused_or_trained_as_one_batch(
    tiny_world, tiny_sd, tmp_path
):
    params, data, encoder, cache = stage2_inputs(tiny_world, tiny_sd, tmp_path)
    training = params.training.model_copy(update={"batch_size": 16})  # 8 pairs
    strict = params.model_copy(update={"training": training})
    with pytest.raises(ValueError, match="8 caption pairs.*batch_size 16.*batch_at_most_pairs"):
        nodes.train_stage2(data, encoder, cache, strict, T2IParams(model=str(tiny_sd)))
    fitted = strict.model_copy(update={"batch_at_most_pairs": True})
    _, log = nodes.train_stage2(data, encoder, cache, fitted, T2IParams(model=str(tiny_sd)))
    assert log["batch_size"] == 8 and [e["step"] for e in log["history"]] == [1, 2]
    # where the pairs fill a batch the switch changes nothing: a run resumes its folder
    ckpt = tmp_path / "ckpt2"
    nodes.train_stage2(data, encoder, cache, params, T2IParams(model=str(tiny_sd)))
    before = sorted(p.name for p in ckpt.iterdir())
    nodes.train_stage2(
        data,
        encoder,
        cache,
        params.model_copy(update={"batch_at_most_pairs": True}),
        T2IParams(model=str(tiny_sd)),
    )
    assert sorted(p.name for p in ckpt.iterdir()) == before


def test_cached_and_recomputed_conditions_give_the_same_loss(
    tiny_world, tiny_sd, tmp_path, tokenizer
):
    params, data, encoder, cache = stage2_inputs(tiny_world, tiny_sd, tmp_path)
    from vlv_pipeline.models.registry import load_component

    text_encoder = load_component(
        "text_encoder", {"pretrained": str(tiny_sd), "subfolder": "text_encoder"}
    )
    decoder = CaptionDecoder(_llm(tokenizer), prefix_dim=16).eval()
    tokens = tokenize_captions(tokenizer, data.pair_captions, 64)
    _, conditions = cache.load(data.pair_ids)
    with torch.no_grad():
        cached = Stage2Objective(decoder)(
            (conditions, tokens["input_ids"], tokens["attention_mask"])
        )
        fresh = Stage2Objective(decoder, encoder.eval(), text_encoder)(
            (
                torch.stack([data.pair_pixels[i] for i in range(len(data.pair_ids))]),  # uint8
                tokens["input_ids"],
                tokens["attention_mask"],
            )
        )
    torch.testing.assert_close(cached, fresh)


def test_paper_path_florence2_qwen2_bf16_beams(tiny_world, tiny_sd, tmp_path, tokenizer):
    """conf/paper's code path on tiny replicas from directories: a Florence-2 VLV encoder
    trained with psi and a pretrained Qwen2 (projector+llm+encoder), bf16 autocast, 4 beams."""
    from stage2_factory import TINY_FLORENCE
    from transformers import Florence2Config, Florence2ForConditionalGeneration

    from vlv_pipeline.models.encoders import build_encoder
    from vlv_pipeline.params.stage1 import EncoderParams

    torch.manual_seed(0)
    Florence2ForConditionalGeneration(Florence2Config(**TINY_FLORENCE)).save_pretrained(
        tmp_path / "florence"
    )
    _llm(tokenizer).save_pretrained(tmp_path / "qwen")
    encoder = build_encoder(
        EncoderParams(
            backbone="florence2",
            num_queries=5,
            florence2={
                "pretrained": str(tmp_path / "florence"),
                "tokenizer": str(tiny_sd / "tokenizer"),
            },
        ),
        16,
    )
    vision_before = {
        k: v.clone() for k, v in encoder.florence.model.vision_tower.state_dict().items()
    }
    source, manifest = tiny_world
    params = stage2_params(
        tiny_sd,
        tmp_path,
        llm={"pretrained": str(tmp_path / "qwen")},
        trainable="projector+llm+encoder",
        max_caption_tokens=300,
        training={
            "steps": 2,
            "batch_size": 4,
            "learning_rate": 1e-5,
            "mixed_precision": "bf16",
            "betas": [0.9, 0.99],
            "checkpoint_every": 1,
            "log_every": 1,
        },
        generation={"max_new_tokens": 5, "num_beams": 4, "batch_size": 4},
    )
    pairs = synth.synthesize_captions(
        source,
        synth.select_images(manifest, SynthesizeParams(fraction=0.5)),
        SynthesizeParams(),
        {},
    )
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
    assert len(cache) == 0  # the encoder trains: the cache is bypassed
    data = nodes.load_stage2_data(source, manifest, pairs, params)
    captioner, log = nodes.train_stage2(data, encoder, cache, params, T2IParams(model=str(tiny_sd)))
    assert len(log["history"]) == 2 and all(
        torch.isfinite(torch.tensor(e["loss"])) for e in log["history"]
    )
    for k, v in encoder.florence.model.vision_tower.state_dict().items():
        assert torch.equal(vision_before[k], v), f"DaViT {k} moved"
    captions = captioner.caption(data.eval_pixels)
    assert len(captions) == 4
    captioner.save_pretrained(tmp_path / "captioner")
    assert (
        VLVCaptioner.from_pretrained(tmp_path / "captioner").caption(data.eval_pixels) == captions
    )


def test_stage2_refuses_an_embedding_cache_of_another_encoder(tiny_world, tiny_sd, tmp_path):
    params, data, encoder, cache = stage2_inputs(tiny_world, tiny_sd, tmp_path)
    with torch.no_grad():
        encoder.queries.add_(1.0)  # a retrained stage 1
    with pytest.raises(ValueError, match="not made by this VLV encoder.*--pipeline synthesize"):
        nodes.train_stage2(data, encoder, cache, params, T2IParams(model=str(tiny_sd)))


@pytest.mark.parametrize(
    ("trainable", "stored"),
    [
        ("projector", ["psi.safetensors"]),
        ("projector+lora", ["lora", "psi.safetensors"]),
        ("projector+llm", ["caption_decoder"]),
    ],
)
def test_checkpoints_hold_only_what_trains_and_resume_exactly(
    tiny_world, tiny_sd, tmp_path, trainable, stored
):
    import shutil

    from vlv_pipeline.training.run_folders import list_checkpoints

    params, data, encoder, cache = stage2_inputs(tiny_world, tiny_sd, tmp_path, trainable)
    whole, _ = nodes.train_stage2(data, encoder, cache, params, T2IParams(model=str(tiny_sd)))
    run = next((tmp_path / "ckpt2").iterdir())
    (_, first), (_, last) = list_checkpoints(run)
    models = sorted(p.name for p in first.iterdir() if p.suffix not in {".bin", ".pkl", ".json"})
    assert models == stored  # no frozen LLM in a projector or LoRA checkpoint
    if trainable == "projector+lora":
        assert not list((first / "lora").glob("model*.safetensors"))  # the adapter only
    shutil.rmtree(last)  # as if killed after step 1: the rerun resumes from checkpoint-1
    resumed, log = nodes.train_stage2(data, encoder, cache, params, T2IParams(model=str(tiny_sd)))
    assert [e["step"] for e in log["history"]] == [1, 2]
    expected = whole.decoder.state_dict()
    for name, tensor in resumed.decoder.state_dict().items():
        assert torch.equal(tensor, expected[name]), name


def test_validation_every_k_steps_captions_and_logs_while_training(tiny_world, tiny_sd, tmp_path):
    params, data, encoder, cache = stage2_inputs(tiny_world, tiny_sd, tmp_path)
    params = params.model_copy(update={"validation_every": 1})
    captioner, log = nodes.train_stage2(data, encoder, cache, params, T2IParams(model=str(tiny_sd)))
    events = read_events(tmp_path / "ckpt2")
    for tag in ("validation/bleu4", "validation/cider", "validation/captions", "loss"):
        assert [step for step, _ in events[tag]] == [1, 2], tag
    # validating did not disturb training: the same run without it ends with the same weights
    quiet = params.model_copy(
        update={"validation_every": None, "checkpoint_dir": str(tmp_path / "q")}
    )
    again, _ = nodes.train_stage2(data, encoder, cache, quiet, T2IParams(model=str(tiny_sd)))
    for name, tensor in again.decoder.state_dict().items():
        assert torch.equal(tensor, captioner.decoder.state_dict()[name]), name


def test_baseline_reads_its_vae_tower_from_the_latent_cache_with_the_same_result(
    tiny_world, tiny_sd, tmp_path, monkeypatch
):
    """The baseline's frozen VAE tower is skipped when the latent cache holds the pairs'
    posterior means (issue 28): the tower never runs, and the training is the pixels' own."""
    from vlv_pipeline.datasets.shard_store import LatentCache
    from vlv_pipeline.params.cache import CacheParams
    from vlv_pipeline.pipelines.cache.nodes import encode_latents

    params, data, _, _ = stage2_inputs(tiny_world, tiny_sd, tmp_path)
    source, manifest = tiny_world
    stage1 = stage1_params(tiny_sd)
    tower_calls = []
    built = nodes.build_encoder

    def counting_build(*args, **kwargs):
        encoder = built(*args, **kwargs)
        encoder.vae_tower["encoder"].register_forward_hook(lambda *_: tower_calls.append(1))
        return encoder

    monkeypatch.setattr(nodes, "build_encoder", counting_build)

    def run(name, latent_cache):
        tower_calls.clear()
        folder = params.model_copy(update={"checkpoint_dir": str(tmp_path / name)})
        captioner, log = nodes.train_baseline(
            data, folder, stage1, T2IParams(model=str(tiny_sd)), latent_cache
        )
        return captioner, [e["loss"] for e in log["history"]], len(tower_calls)

    vae = {"pretrained": str(tiny_sd), "subfolder": "vae"}
    cache = encode_latents(
        source,
        manifest,
        LatentCache(tmp_path / "lat"),
        CacheParams(vae=vae),
        T2IParams(model=str(tiny_sd)),
    )
    _, from_pixels, pixel_calls = run("pixels", None)
    captioner, from_cache, cache_calls = run("cached", cache)
    assert pixel_calls == len(from_pixels) and cache_calls == 0
    assert from_cache == pytest.approx(from_pixels, rel=1e-5)
    # the saved captioner still reads pixels through its own tower
    assert len(captioner.caption(data.eval_pixels)) == len(data.eval_ids)
    # a cache of another resolution is not the tower's output: the pixels are read
    other = encode_latents(
        source,
        manifest,
        LatentCache(tmp_path / "lat8"),
        CacheParams(vae=vae, resolution=8),
        T2IParams(model=str(tiny_sd)),
    )
    _, again, calls = run("other", other)
    assert calls == len(again) and again == pytest.approx(from_pixels, rel=1e-5)


def test_a_trained_encoder_reads_its_vae_tower_from_the_latent_cache_too(
    tiny_world, tiny_sd, tmp_path
):
    """psi + LLM + the VLV encoder: with the latent cache the frozen VAE tower never runs
    in training, and the losses are the pixels' own."""
    import copy

    from vlv_pipeline.datasets.shard_store import LatentCache
    from vlv_pipeline.params.cache import CacheParams
    from vlv_pipeline.pipelines.cache.nodes import encode_latents

    params, data, encoder, embedding_cache = stage2_inputs(tiny_world, tiny_sd, tmp_path)
    params = params.model_copy(update={"trainable": "projector+llm+encoder"})
    source, manifest = tiny_world
    vae = {"pretrained": str(tiny_sd), "subfolder": "vae"}
    cache = encode_latents(
        source,
        manifest,
        LatentCache(tmp_path / "lat"),
        CacheParams(vae=vae),
        T2IParams(model=str(tiny_sd)),
    )

    def run(name, latent_cache):
        calls = []
        mine = copy.deepcopy(encoder)
        mine.vae_tower["encoder"].register_forward_hook(lambda *_: calls.append(1))
        folder = params.model_copy(update={"checkpoint_dir": str(tmp_path / name)})
        _, log = nodes.train_stage2(
            data, mine, embedding_cache, folder, T2IParams(model=str(tiny_sd)), latent_cache
        )
        return [e["loss"] for e in log["history"]], len(calls)

    from_pixels, pixel_calls = run("pixels", None)
    from_cache, cache_calls = run("cached", cache)
    assert pixel_calls >= len(from_pixels) and cache_calls == 0
    assert from_cache == pytest.approx(from_pixels, rel=1e-5)
