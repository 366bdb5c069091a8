"""Teacher families behind one interface, on tiny replicas saved and loaded the real way."""

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from world_factory import stage1_data

from vlv_pipeline.models.encoders import build_encoder
from vlv_pipeline.models.stage1 import Stage1Objective
from vlv_pipeline.models.teachers import Condition, call_kwargs_of, family_of, load_teacher
from vlv_pipeline.models.teachers.families import (
    FluxTeacher,
    StableDiffusion3Teacher,
    StableDiffusionTeacher,
    StableDiffusionXLTeacher,
)
from vlv_pipeline.params.stage1 import Stage1Params
from vlv_pipeline.params.t2i import T2IParams
from vlv_pipeline.params.world import WorldParams
from vlv_pipeline.pipelines.stage1.nodes import train_stage1, validate_stage1
from vlv_pipeline.training.run_folders import list_checkpoints
from vlv_pipeline.world import Vocabulary, build_world_tokenizer

SHIPPED = Path(__file__).resolve().parents[3] / "src/vlv_pipeline/assets/teacher"
CAPTIONS = ["a large red circle at the top left", "a small blue square in the centre"]
# fixture, teacher class, the fed encoders' widths, the condition's width, latent channels
FAMILIES = {
    "sdxl": ("tiny_sdxl", StableDiffusionXLTeacher, [16, 24], 40, 4),
    "sd3": ("tiny_sd3", StableDiffusion3Teacher, [16, 24], 40, 16),
    "flux": ("tiny_flux", FluxTeacher, [16, 32], 32, 16),
}


def _ids(tokenizer):
    return tokenizer(
        CAPTIONS, padding="max_length", max_length=77, truncation=True, return_tensors="pt"
    ).input_ids


def test_the_family_comes_from_model_index(tiny_sd, tiny_sdxl, tiny_sd3, tiny_flux, tmp_path):
    assert family_of(str(tiny_sd)) is StableDiffusionTeacher
    for fixture, family, widths, condition_width, _ in FAMILIES.values():
        path = {"tiny_sdxl": tiny_sdxl, "tiny_sd3": tiny_sd3, "tiny_flux": tiny_flux}[fixture]
        teacher = load_teacher(str(path))
        assert type(teacher) is family and family_of(str(path)) is family
        assert teacher.widths == widths and teacher.condition_width == condition_width
    other = tmp_path / "other"
    other.mkdir()
    (other / "model_index.json").write_text(json.dumps({"_class_name": "KandinskyPipeline"}))
    with pytest.raises(ValueError, match="KandinskyPipeline.*StableDiffusionXLPipeline"):
        load_teacher(str(other))


@pytest.mark.parametrize("which", ["tiny", "shipped"])
def test_sd_loss_is_the_noise_prediction_loss_it_always_was(which, tiny_sd):
    """SD 1/2 numbers unchanged: the same draws, the loaded scheduler's noising and target
    (the shipped teacher ships a DDIM scheduler predicting the sample; training noises with
    its DDPM form, which adds noise exactly as DDIM's own ``add_noise`` did)."""
    t2i = load_teacher(str(tiny_sd if which == "tiny" else SHIPPED))
    torch.manual_seed(0)
    latents, states = torch.randn(3, 4, 8, 8), torch.randn(3, 5, t2i.width)
    torch.manual_seed(1)
    got = t2i.loss(latents, Condition(states), (10, 90))
    torch.manual_seed(1)
    noise = torch.randn_like(latents)
    t = torch.randint(10, 90, (3,))
    noisy = t2i.scheduler.add_noise(latents, noise, t)
    prediction = t2i.unet(noisy, t, encoder_hidden_states=states).sample
    target = noise if t2i.scheduler.config.prediction_type == "epsilon" else latents
    assert torch.equal(got, F.mse_loss(prediction, target))


def test_sdxl_condition_is_what_the_pipeline_reads_from_tokens(tiny_sdxl):
    """Token embeddings of both tables, fed as caption embeddings, give SDXL's own prompt
    states (both encoders' penultimate states, concatenated); the pooled vector is the
    second encoder's projection of its last position (the rule for embeddings)."""
    t2i = load_teacher(str(tiny_sdxl))
    assert t2i.widths == [16, 24] and t2i.width == 40
    ids = _ids(t2i.tokenizer)
    with torch.no_grad():
        condition = t2i.condition(t2i.token_embeddings[ids])
        one = t2i.text_encoder(ids, output_hidden_states=True)
        two = t2i.text_encoder_2(ids, output_hidden_states=True)
        states = torch.cat([one.hidden_states[-2], two.hidden_states[-2]], -1)
        pooled = t2i.text_encoder_2.text_projection(two.last_hidden_state[:, -1])
        prompt_embeds, _, _, _ = t2i.pipeline().encode_prompt(
            CAPTIONS, device="cpu", do_classifier_free_guidance=False
        )
    torch.testing.assert_close(condition.states, states, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(condition.states, prompt_embeds, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(condition.pooled, pooled, atol=1e-5, rtol=1e-5)
    assert condition.states.shape == (2, 77, 40) and condition.pooled.shape == (2, 12)
    empty = t2i.empty_condition(5)  # SDXL base zeroes the unconditional input
    assert empty.states.shape == (1, 5, 40) and not empty.states.any() and not empty.pooled.any()
    with pytest.raises(ValueError, match="16 wide.*reads 40 \\(16 \\+ 24"):
        t2i.condition(torch.randn(1, 4, 16))


@pytest.mark.parametrize("family", FAMILIES)
def test_renders_from_embeddings_and_from_text(family, request):
    t2i = load_teacher(str(request.getfixturevalue(FAMILIES[family][0])))
    torch.manual_seed(0)
    condition = t2i.condition(torch.randn(3, 5, t2i.width))
    sampler = "DDIMScheduler" if family == "sdxl" else None  # flow matching: its own
    kwargs = {"steps": 2, "seed": 0, "batch_size": 2, "scheduler": sampler}
    plain = t2i.render(condition, guidance=1.0, **kwargs)
    again = t2i.render(condition, guidance=1.0, **kwargs)
    guided = t2i.render(condition, guidance=3.0, **kwargs)
    assert plain.shape == (3, 3, 16, 16) and plain.min() >= -1 and plain.max() <= 1
    # seeded: reproducible; guidance (CFG, or FLUX's guidance embedding) changes the render
    assert torch.equal(plain, again) and not torch.allclose(plain, guided)
    other = t2i.render(Condition(condition.states, condition.pooled.flip(0)), guidance=1, **kwargs)
    assert not torch.allclose(plain, other)  # the pooled vector reaches the denoiser
    text = t2i.render_captions(CAPTIONS, guidance=1.0, **kwargs)
    assert text.shape == (2, 3, 16, 16)


def test_sd3_and_flux_conditions_are_what_their_pipelines_read(tiny_sd3, tiny_flux):
    """SD 3: both CLIPs' penultimate states (then T5's zeros, as without T5); FLUX: T5's
    states of the token embeddings, as from the ids."""
    sd3 = load_teacher(str(tiny_sd3))
    ids = _ids(sd3.tokenizer)
    with torch.no_grad():
        condition = sd3.condition(sd3.token_embeddings[ids])
        prompt_embeds, _, _, _ = sd3.pipeline().encode_prompt(
            CAPTIONS, None, None, device="cpu", do_classifier_free_guidance=False
        )
        full = sd3.denoiser_condition(condition)
    torch.testing.assert_close(condition.states, prompt_embeds[:, :77, :40], atol=1e-5, rtol=1e-5)
    assert full.states.shape == (2, 77 + 256, 48) and not full.states[:, 77:].any()
    flux = load_teacher(str(tiny_flux))
    ids = _ids(flux.tokenizer)
    with torch.no_grad():
        condition = flux.condition(flux.token_embeddings[ids])
        expected = flux.text_encoder_2(ids).last_hidden_state
    torch.testing.assert_close(condition.states, expected, atol=1e-5, rtol=1e-5)


def test_an_sd3_built_without_t5_reads_no_t5_positions_in_training_and_from_text(
    tiny_sd3, tmp_path
):
    """SD 3.5 (T5 declared) gets T5's 256 zero positions, loaded with T5 or not; a model
    built without T5 (``text_encoder_3: [null, null]``, the shapes world's flow teacher)
    never saw them: its condition is the CLIP part alone, from embeddings and from text."""
    from vlv_pipeline.models.teachers import StableDiffusion3Teacher

    with_t5 = load_teacher(str(tiny_sd3))
    assert with_t5.t5_length == 256 and with_t5.call_kwargs() == {"max_sequence_length": 256}
    pipe = with_t5.pipeline()
    pipe.text_encoder_3, pipe.tokenizer_3 = None, None
    pipe.register_to_config(text_encoder_3=(None, None), tokenizer_3=(None, None))
    pipe.save_pretrained(tmp_path / "no_t5")
    index = json.loads((tmp_path / "no_t5" / "model_index.json").read_text())
    assert index["text_encoder_3"] == [None, None]
    without = load_teacher(str(tmp_path / "no_t5"))
    assert isinstance(without, StableDiffusion3Teacher) and without.text_encoder_3 is None
    assert without.t5_length == 0
    condition = without.condition(torch.randn(2, 5, without.width))
    assert without.denoiser_condition(condition).states.shape[1] == 5
    with torch.no_grad():
        prompt_embeds, *_ = without.pipeline().encode_prompt(
            CAPTIONS,
            None,
            None,
            device="cpu",
            do_classifier_free_guidance=False,
            **without.call_kwargs(),
        )
    assert prompt_embeds.shape[1] == 77  # the CLIP tokens only
    text = without.render_captions(CAPTIONS, guidance=1.0, steps=2, seed=0, scheduler=None)
    assert text.shape == (2, 3, 16, 16) and torch.isfinite(text).all()
    # the same teacher over an in-memory pipeline (what the teacher pipeline judges)
    again = StableDiffusion3Teacher.from_pipeline(without.pipeline())
    assert again.t5_length == 0 and again.width == without.width
    # what caption renders through a pipeline loaded another way pass (evaluate, Table 1,
    # reconstruct, the demo): read from the model's files, nothing loaded
    assert call_kwargs_of(str(tmp_path / "no_t5")) == {"max_sequence_length": 0}
    assert call_kwargs_of(str(tiny_sd3)) == {"max_sequence_length": 256}
    from diffusers import DiffusionPipeline

    from vlv_pipeline.models.teacher import render

    loaded = DiffusionPipeline.from_pretrained(
        tmp_path / "no_t5", text_encoder_3=None, tokenizer_3=None
    )
    kwargs = {"steps": 2, "guidance": 1.0, "seed": 0, "scheduler": None}
    torch.testing.assert_close(
        render(
            loaded, captions=CAPTIONS, call_kwargs=call_kwargs_of(str(tmp_path / "no_t5")), **kwargs
        ),
        text,
    )
    # without them, SD 3's pipeline appends 256 T5 zeros this MMDiT never saw
    assert not torch.allclose(render(loaded, captions=CAPTIONS, **kwargs), text)


@pytest.fixture(scope="module", params=list(FAMILIES))
def family_data(request, tmp_path_factory):
    """(family, replica path, 8 train + 4 test world images with latents of its VAE)."""
    family = request.param
    replica = request.getfixturevalue(FAMILIES[family][0])
    return family, replica, stage1_data(replica, tmp_path_factory.mktemp("family-world"))


def _stage1_params(replica, tmp_path, steps):
    return Stage1Params(
        encoder={
            "backbone": "small",
            "num_queries": 4,
            "small": {"width": 16, "heads": 2, "image_size": 16, "vision_tower": "t2i_vae"},
        },
        training={
            "steps": steps,
            "batch_size": 8,
            "learning_rate": 3e-3,
            "warmup_steps": 0,
            "checkpoint_every": 4,
            "log_every": 1,
        },
        validation={
            "images": 4,
            "grid_images": 2,
            # conf/base's DPM-Solver++: flow-matching teachers keep their own, with a warning
            "sampling": {"steps": 2, "batch_size": 4, "scheduler": "DPMSolverMultistepScheduler"},
        },
        checkpoint_dir=str(tmp_path / "ckpt"),
    )


def test_the_objective_falls_and_reaches_every_fed_encoder(family_data, tmp_path):
    """Under fixed draws (one seed per step) the stage-1 loss is a plain function of the
    encoder: a few AdamW steps lower it, and the gradient reaches each fed text encoder's
    slices of the caption embeddings and the pooled vector, in every family."""
    family, replica, data = family_data
    params = _stage1_params(replica, tmp_path, 1)
    teacher = load_teacher(str(replica))
    torch.manual_seed(0)
    encoder = build_encoder(params.encoder, teacher.width, teacher.vae, teacher.token_embeddings)
    objective = Stage1Objective(encoder, teacher, features_from_cache=True)
    items = data["train"].training_set(True, 0).__getitems__(list(range(8)))
    batch = tuple(torch.stack(column) for column in zip(*items, strict=True))
    optimizer = torch.optim.AdamW([p for p in encoder.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(6):
        torch.manual_seed(0)
        loss = objective(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    # strictly falling (SD 3's tiny MMDiT reads the pooled vector and CLIPs weakly: -0.4%)
    assert all(b < a for a, b in zip(losses, losses[1:], strict=False))
    assert losses[-1] < 0.998 * losses[0]

    embeddings = encoder.from_features(batch[1]).detach().requires_grad_(True)
    condition = teacher.condition(embeddings)
    torch.manual_seed(0)
    teacher.loss(teacher.latents(batch[1], batch[2]), condition).backward()
    assert all(part.abs().sum() > 0 for part in embeddings.grad.split(teacher.widths, -1))
    pooled = condition.pooled.detach().requires_grad_(True)
    torch.manual_seed(0)
    teacher.loss(
        teacher.latents(batch[1], batch[2]), Condition(condition.states.detach(), pooled)
    ).backward()
    assert pooled.grad.abs().sum() > 0


def test_stage1_runs_resumes_exactly_and_validates(family_data, tmp_path):
    family, replica, data = family_data
    params = _stage1_params(replica, tmp_path / "straight", 8)
    encoder, log = train_stage1(data, params, T2IParams(model=str(replica)))
    assert len(log["history"]) == 8
    width = sum(FAMILIES[family][2])
    assert encoder(data["test"].images()).shape == (4, 4, width)

    killed = _stage1_params(replica, tmp_path / "killed", 8)
    calls = {"n": 0}
    original = Stage1Objective.forward

    def dying(self, batch):
        calls["n"] += 1
        if calls["n"] > 5:
            raise KeyboardInterrupt("killed")
        return original(self, batch)

    Stage1Objective.forward = dying
    try:
        with pytest.raises(KeyboardInterrupt):
            train_stage1(data, killed, T2IParams(model=str(replica)))
    finally:
        Stage1Objective.forward = original
    run = next((tmp_path / "killed" / "ckpt").iterdir())
    assert [s for s, _ in list_checkpoints(run)] == [4]
    resumed, _ = train_stage1(data, killed, T2IParams(model=str(replica)))
    for name, tensor in encoder.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[name], tensor, atol=1e-6, rtol=1e-5)

    metrics, grid = validate_stage1(encoder, data, params, T2IParams(model=str(replica)))
    assert metrics["images"] == 4 and len(grid.axes) == 4
    # the metrics name the sampler that rendered: a flow-matching teacher's own
    flow = family in ("sd3", "flux")
    assert metrics["sampling"]["scheduler"].startswith("FlowMatch") == flow


@pytest.mark.parametrize("family", FAMILIES)
def test_a_captioner_reads_the_text_side_and_saves_it(family, request, tmp_path):
    """Stage 2 reads the teacher's conditioning states (SDXL: both encoders' penultimate
    states, 40 wide); the captioner saves both text encoders and its family, and loads back
    to the same captions. Only the text side is loaded: no UNet, no VAE."""
    from shapes_captioner import TINY_QWEN2
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from vlv_pipeline.models.caption_decoder import CaptionDecoder
    from vlv_pipeline.models.captioner import VLVCaptioner
    from vlv_pipeline.models.stage2 import Stage2Objective
    from vlv_pipeline.models.teachers import load_text_side
    from vlv_pipeline.models.vlv_encoder import SmallVLVEncoder

    fixture, cls, _, condition_width, _ = FAMILIES[family]
    side = load_text_side(str(request.getfixturevalue(fixture)))
    assert isinstance(side, cls) and side.condition_width == condition_width
    for part in ("unet", "transformer", "vae", "text_encoder_3"):
        assert not hasattr(side, part)  # only the fed text encoders are loaded
    torch.manual_seed(0)
    encoder = SmallVLVEncoder(num_queries=4, out_dim=side.width, width=16, heads=2, image_size=16)
    tokenizer = build_world_tokenizer(Vocabulary.from_params(WorldParams()))
    llm = Qwen2ForCausalLM(
        Qwen2Config(**TINY_QWEN2, vocab_size=len(tokenizer), eos_token_id=tokenizer.eos_token_id)
    )
    decoder = CaptionDecoder(llm, side.condition_width)
    captioner = VLVCaptioner(encoder, side, decoder, tokenizer, max_new_tokens=3).eval()
    pixels = torch.rand(2, 3, 16, 16) * 2 - 1
    assert captioner.conditions(pixels).shape == (2, 4, condition_width)

    objective = Stage2Objective(decoder, encoder, side)
    ids = torch.tensor([[1, 5, 6, 2], [1, 7, 2, 0]])
    loss = objective((pixels, ids, (ids > 0).long()))
    loss.backward()
    assert torch.isfinite(loss) and encoder.queries.grad.abs().sum() > 0

    captioner.save_pretrained(tmp_path / "captioner")
    saved = {p.name for p in (tmp_path / "captioner").iterdir()}
    assert {"text_encoder", "text_encoder_2", "teacher.json"} <= saved
    again = VLVCaptioner.from_pretrained(tmp_path / "captioner")
    assert isinstance(again.text_encoder, cls)
    with torch.no_grad():
        torch.testing.assert_close(again.conditions(pixels), captioner.conditions(pixels))
    assert again.caption(pixels) == captioner.caption(pixels)
