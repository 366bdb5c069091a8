"""Stage 1 on tiny replicas: the shapes-world path and the paper's Florence-2 path."""

import pytest
import torch
from diffusers import AutoencoderKL
from stage2_factory import TINY_FLORENCE
from tb_events import read_events
from transformers import Florence2Config, Florence2ForConditionalGeneration

from vlv_pipeline.models.probe import AttributeProbe
from vlv_pipeline.models.stage1 import Stage1Objective
from vlv_pipeline.models.teachers import load_teacher
from vlv_pipeline.models.vlv_encoder import (
    Florence2VLVEncoder,
    SmallVLVEncoder,
    VLVEncoder,
    vae_config_of,
)
from vlv_pipeline.params.stage1 import Stage1Params
from vlv_pipeline.params.t2i import T2IParams
from vlv_pipeline.params.world import WorldParams
from vlv_pipeline.pipelines.stage1 import nodes as stage1_nodes
from vlv_pipeline.pipelines.stage1.nodes import (
    build_encoder,
    plot_stage1_loss,
    train_stage1,
    validate_stage1,
)
from vlv_pipeline.training.run_folders import list_checkpoints


def _params(tiny_sd, tmp_path, **encoder):
    encoder = encoder or {
        "backbone": "small",
        "num_queries": 4,
        "small": {"width": 16, "stem_channels": [8, 16], "heads": 2, "image_size": 16},
    }
    return Stage1Params(
        encoder=encoder,
        training={
            "steps": 2,
            "batch_size": 4,
            "learning_rate": 1e-3,
            "checkpoint_every": 1,
            "betas": [0.9, 0.99],
            "weight_decay": 0.01,
            "log_every": 1,
        },
        validation={"images": 4, "grid_images": 2, "sampling": {"steps": 2, "batch_size": 4}},
        checkpoint_dir=str(tmp_path / "ckpt"),
    )


def test_small_encoder_trains_against_the_frozen_decoder(tiny_sd, data, tmp_path):
    from diffusers import UNet2DConditionModel

    params = _params(tiny_sd, tmp_path)
    encoder, log = train_stage1(data, params, T2IParams(model=str(tiny_sd)))
    assert isinstance(encoder, SmallVLVEncoder) and len(log["history"]) == 2
    # the decoder on disk is untouched, the saved encoder reloads to the same function
    unet = UNet2DConditionModel.from_pretrained(tiny_sd / "unet")
    assert unet.conv_in.weight.requires_grad  # a fresh load: proves we compare real weights below
    encoder.save_pretrained(tmp_path / "enc")
    again = VLVEncoder.from_pretrained(tmp_path / "enc")
    x = data["test"].images()
    with torch.no_grad():
        torch.testing.assert_close(again(x), encoder(x))
    assert encoder(x).shape == (4, 4, 16)

    metrics, grid = validate_stage1(encoder, data, params, T2IParams(model=str(tiny_sd)))
    assert metrics["images"] == 4 and "reconstruction" not in metrics
    assert len(grid.axes) == 4  # 2 items side by side x (original, reconstruction)
    assert plot_stage1_loss(log).axes


def test_frozen_parts_do_not_move(tiny_sd, data):
    from vlv_pipeline.models.teachers import load_teacher
    from vlv_pipeline.params.training import TrainParams
    from vlv_pipeline.training.loop import train

    t2i = load_teacher(str(tiny_sd))
    before = {k: v.clone() for k, v in t2i.unet.state_dict().items()}
    encoder = SmallVLVEncoder(
        num_queries=4, out_dim=16, width=16, stem_channels=(8, 16), heads=2, image_size=16
    )
    enc_before = encoder.queries.detach().clone()
    objective = Stage1Objective(
        encoder,
        t2i,
        (50, 100),
        noise_draws=3,
    )
    train(
        objective,
        data["train"].training_set(with_pixels=True, cache_bytes=2**20),
        TrainParams(steps=3, batch_size=4, learning_rate=1e-2),
    )
    assert all(torch.equal(before[k], v) for k, v in t2i.unet.state_dict().items())
    assert not torch.equal(enc_before, encoder.queries)


def test_validation_judges_reconstructions_with_the_probe(tiny_sd, data, tmp_path):
    probe = AttributeProbe(image_size=16, width=4, hidden=8)
    probe.save_pretrained(tmp_path / "probe")
    params = _params(tiny_sd, tmp_path)
    params = Stage1Params(
        **{
            **params.model_dump(),
            "validation": {**params.validation.model_dump(), "probe": str(tmp_path / "probe")},
        }
    )
    encoder, _ = train_stage1(data, params, T2IParams(model=str(tiny_sd)))
    metrics, _ = validate_stage1(encoder, data, params, T2IParams(model=str(tiny_sd)))
    assert set(metrics["reconstruction"]) >= {"exact_scene", "shape", "colour", "size", "position"}


def test_a_killed_stage1_run_resumes_from_its_checkpoint(tiny_sd, data, tmp_path, monkeypatch):
    params = _params(tiny_sd, tmp_path)
    params = Stage1Params(
        **{
            **params.model_dump(),
            "training": {**params.training.model_dump(), "steps": 4, "checkpoint_every": 2},
        }
    )
    original = Stage1Objective.forward
    calls = {"n": 0}

    def dying(self, batch):
        calls["n"] += 1
        if calls["n"] > 3:
            raise KeyboardInterrupt("killed")
        return original(self, batch)

    monkeypatch.setattr(Stage1Objective, "forward", dying)
    with pytest.raises(KeyboardInterrupt):
        train_stage1(data, params, T2IParams(model=str(tiny_sd)))
    monkeypatch.setattr(Stage1Objective, "forward", original)
    run = next((tmp_path / "ckpt").iterdir())
    assert [s for s, _ in list_checkpoints(run)] == [2]
    _, log = train_stage1(data, params, T2IParams(model=str(tiny_sd)))
    assert [e["step"] for e in log["history"]][-2:] == [3, 4]
    assert [s for s, _ in list_checkpoints(run)] == [2, 4]


def test_paper_path_florence2_two_steps(tiny_sd, data, tmp_path):
    """conf/paper's code path: Florence-2 (frozen DaViT, trainable BART) + SD, from directories."""
    from vlv_pipeline.world import Vocabulary, build_world_tokenizer

    torch.manual_seed(0)
    Florence2ForConditionalGeneration(Florence2Config(**TINY_FLORENCE)).save_pretrained(
        tmp_path / "florence"
    )
    build_world_tokenizer(Vocabulary.from_params(WorldParams())).save_pretrained(tmp_path / "tok")
    params = _params(
        tiny_sd,
        tmp_path,
        backbone="florence2",
        num_queries=5,
        florence2={"pretrained": str(tmp_path / "florence"), "tokenizer": str(tmp_path / "tok")},
    )
    reference = Florence2ForConditionalGeneration.from_pretrained(tmp_path / "florence")
    encoder, log = train_stage1(data, params, T2IParams(model=str(tiny_sd)))
    assert isinstance(encoder, Florence2VLVEncoder) and len(log["history"]) == 2
    assert encoder(data["test"].images()).shape == (4, 5, 16)
    trained = encoder.florence.state_dict()
    for name, tensor in reference.state_dict().items():
        moved = not torch.equal(trained[name], tensor)
        if name.startswith(("model.vision_tower", "model.multi_modal_projector", "lm_head")):
            assert not moved, f"{name} should stay frozen"
    decoder = [n for n in trained if n.startswith("model.language_model.decoder.layers")]
    assert any(not torch.equal(trained[n], reference.state_dict()[n]) for n in decoder)
    encoder.save_pretrained(tmp_path / "enc")
    again = VLVEncoder.from_pretrained(tmp_path / "enc")
    assert isinstance(again, Florence2VLVEncoder)
    with torch.no_grad():
        torch.testing.assert_close(again(data["test"].images()), encoder(data["test"].images()))


@pytest.mark.parametrize("latent_stem", [(), (8, 16)])
def test_small_encoder_on_the_t2i_vae_tower(tiny_sd, data, tmp_path, latent_stem):
    """The vision tower seeded from the frozen decoder's own VAE encoder stays frozen; an
    optional 3x3 stem on the latent grid keeps the grid (stride 1) and round-trips."""
    params = _params(tiny_sd, tmp_path)
    small = {
        **params.encoder.small.model_dump(),
        "vision_tower": "t2i_vae",
        "latent_stem_channels": latent_stem,
    }
    params = Stage1Params(
        **{**params.model_dump(), "encoder": {**params.encoder.model_dump(), "small": small}}
    )
    vae = AutoencoderKL.from_pretrained(tiny_sd / "vae")
    encoder, _ = train_stage1(data, params, T2IParams(model=str(tiny_sd)))
    for name, tensor in vae.encoder.state_dict().items():
        assert torch.equal(encoder.vae_tower["encoder"].state_dict()[name], tensor)
    convs = [m for m in encoder.stem if isinstance(m, torch.nn.Conv2d)]
    assert [c.kernel_size for c in convs[:-1]] == [(3, 3)] * len(latent_stem)
    assert all(c.stride == (1, 1) for c in convs)
    grid = data["test"].posteriors()[0].shape[-1]
    assert encoder.positions.shape[1] == grid * grid  # one token per latent cell
    encoder.save_pretrained(tmp_path / "enc")
    again = VLVEncoder.from_pretrained(tmp_path / "enc")
    with torch.no_grad():
        torch.testing.assert_close(again(data["test"].images()), encoder(data["test"].images()))


def test_render_from_conditions_with_and_without_guidance(tiny_sd):
    from vlv_pipeline.models.teachers import load_teacher

    t2i = load_teacher(str(tiny_sd))
    torch.manual_seed(0)
    conditions = t2i.condition(torch.randn(3, 5, 16))
    plain = t2i.render(conditions, steps=2, guidance=1.0, seed=0, batch_size=2)
    again = t2i.render(conditions, steps=2, guidance=1.0, seed=0, batch_size=2)
    guided = t2i.render(conditions, steps=2, guidance=3.0, seed=0, batch_size=2)
    assert plain.shape == (3, 3, 16, 16) and plain.min() >= -1 and plain.max() <= 1
    assert torch.equal(plain, again)  # seeded: reproducible
    assert not torch.allclose(plain, guided)  # the empty-prompt negative is used
    assert t2i.empty_condition(5).states.shape == (1, 5, 16)


def test_vae_tower_encoder_reads_the_cached_posterior_mean(tiny_sd, data):
    """Training feeds the cached mean past the frozen tower: the same function as from pixels."""
    vae = AutoencoderKL.from_pretrained(tiny_sd / "vae")
    encoder = SmallVLVEncoder(
        num_queries=4, out_dim=16, width=16, heads=2, image_size=16, vae_config=vae_config_of(vae)
    )
    encoder.load_vae_tower(vae)
    assert encoder.reads_vae_latents
    split = data["test"]
    with torch.no_grad():
        torch.testing.assert_close(
            encoder.from_features(split.posteriors()[0]), encoder(split.images())
        )
    plain = SmallVLVEncoder(num_queries=4, out_dim=16, width=16, stem_channels=(8, 16), heads=2)
    with pytest.raises(ValueError, match="VAE"):
        Stage1Objective(plain, torch.nn.Linear(1, 1), features_from_cache=True)


def test_stage1_refuses_a_latent_cache_of_another_vae(tiny_sd, tmp_path):
    from vlv_pipeline.datasets.fingerprints import vae_fingerprint
    from vlv_pipeline.datasets.shard_store import LatentCache
    from vlv_pipeline.pipelines.stage1.nodes import check_cache_made_by

    cache = LatentCache(tmp_path / "cache")
    cache.reset({"weights_sha256": "0" * 64, "config_sha256": "0" * 64, "resolution": None})
    with pytest.raises(ValueError, match="not made by the VAE of .*kedro run --pipeline cache"):
        check_cache_made_by(cache, str(tiny_sd), None)
    vae = AutoencoderKL.from_pretrained(tiny_sd / "vae")
    cache.reset(vae_fingerprint(vae, None))
    check_cache_made_by(cache, str(tiny_sd), None)  # the right VAE passes
    with pytest.raises(ValueError, match="resolution 64"):
        check_cache_made_by(cache, str(tiny_sd), 64)


def test_vocabulary_output_mixes_the_text_encoders_word_embeddings(tmp_path):
    torch.manual_seed(0)
    encoder = SmallVLVEncoder(
        num_queries=3,
        out_dim=6,
        width=16,
        stem_channels=(8, 16),
        heads=2,
        image_size=16,
        vocab_size=6,
    )
    encoder.load_vocabulary(torch.eye(6))  # word i = unit vector i: outputs are the mixtures
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        out = encoder(x)
    assert out.shape == (2, 3, 6) and (out >= 0).all()
    torch.testing.assert_close(out.sum(-1), torch.ones(2, 3))
    encoder.save_pretrained(tmp_path / "enc")
    again = VLVEncoder.from_pretrained(tmp_path / "enc")
    with torch.no_grad():
        torch.testing.assert_close(again(x), out)


def test_validation_reads_the_split_it_is_told(tiny_sd, data, tmp_path):
    """Sweeps choose on val and the reported run reads test: the split is a parameter."""
    from vlv_pipeline.pipelines.stage1.nodes import validation_split

    assert validation_split(data, "train") is data["train"]
    assert validation_split(data, None) is data["test"]  # first non-empty of test, val, train
    with pytest.raises(ValueError, match=r"stage1.validation.split is 'val'.*\['test', 'train'\]"):
        validation_split(data, "val")
    params = _params(tiny_sd, tmp_path)
    params = Stage1Params(
        **{
            **params.model_dump(),
            "validation": {**params.validation.model_dump(), "split": "train"},
        }
    )
    encoder, _ = train_stage1(data, params, T2IParams(model=str(tiny_sd)))
    metrics, grid = validate_stage1(encoder, data, params, T2IParams(model=str(tiny_sd)))
    assert metrics["split"] == "train" and metrics["images"] == 4
    from vlv_pipeline.world.data import tensor_to_uint8

    shown = grid.axes[0].images[0].get_array()  # the grid's first original is train's first
    assert (shown == tensor_to_uint8(data["train"].images(1))[0]).all()


def test_stratified_timesteps_cover_the_range_evenly():
    from vlv_pipeline.models.diffusion import draw_timesteps

    torch.manual_seed(0)
    t = draw_timesteps(30, 850, 1000, stratified=True)
    assert t.dtype == torch.long and t.min() >= 850 and t.max() < 1000
    # one draw in each of the 30 equal slices (5 timesteps wide), in shuffled order
    assert sorted((t - 850).div(5, rounding_mode="floor").tolist()) == list(range(30))
    assert not torch.equal(t, t.sort().values)
    plain = draw_timesteps(30, 850, 1000)
    assert plain.min() >= 850 and plain.max() < 1000
    # still uniform over the range: the mean of many stratified draws sits at its centre
    many = torch.cat([draw_timesteps(64, 850, 1000, stratified=True) for _ in range(200)])
    assert abs(many.float().mean().item() - 924.5) < 1.0


def test_streamed_items_train_exactly_as_the_in_memory_split_did(tiny_sd, data):
    """uint8 pixels read per item (here by 2 worker processes) and cached latents read per
    row give the same weights as the old path: every float tensor of the split in memory."""
    import pandas as pd
    from torch.utils.data import TensorDataset

    from vlv_pipeline.datasets.shard_store import LatentCache
    from vlv_pipeline.imaging.sources import iter_images
    from vlv_pipeline.models.teachers import load_teacher
    from vlv_pipeline.params.training import TrainParams
    from vlv_pipeline.training.loop import train
    from vlv_pipeline.world.data import pil_to_tensor

    split = data["train"]
    reader = split.pixels.reader  # the old path: one streaming pass, floats, whole-split load
    refs = pd.DataFrame({"image_id": split.image_ids, "source": reader.refs.astype(str)})
    images = dict(iter_images(reader.source, refs, None))
    old = TensorDataset(
        torch.stack([pil_to_tensor(images[i]) for i in split.image_ids]),
        *LatentCache(split.latents.root).load(split.image_ids),
    )

    def trained(dataset, **reading):
        t2i = load_teacher(str(tiny_sd))
        torch.manual_seed(0)
        encoder = SmallVLVEncoder(
            num_queries=4, out_dim=16, width=16, stem_channels=(8, 16), heads=2, image_size=16
        )
        objective = Stage1Objective(encoder, t2i, (50, 100))
        params = TrainParams(steps=5, batch_size=4, learning_rate=1e-2, **reading)
        train(objective, dataset, params)
        return encoder.state_dict()

    expected = trained(old)
    for got in (
        trained(split.training_set(with_pixels=True, cache_bytes=0)),
        trained(split.training_set(with_pixels=True, cache_bytes=2**20), num_workers=2),
    ):
        assert all(torch.equal(got[k], v) for k, v in expected.items())


def test_a_mid_run_checkpoint_holds_only_the_encoder_and_loads_as_one(tiny_sd, data, tmp_path):
    from vlv_pipeline.models.vlv_encoder import VLVEncoder

    params = _params(tiny_sd, tmp_path)
    encoder, _ = train_stage1(
        data, params, T2IParams(model=str(tiny_sd))
    )  # 2 steps, checkpoints after each
    run = next((tmp_path / "ckpt").iterdir())
    (_, first), (_, last) = list_checkpoints(run)
    # the frozen UNet and text encoder are not in it; the optimizer and RNG are
    assert sorted(p.name for p in first.iterdir()) == [
        "history.json",
        "optimizer.bin",
        "random_states_0.pkl",
        "scheduler.bin",
        "vlv_encoder",
    ]
    final = VLVEncoder.from_pretrained(last / "vlv_encoder")
    for name, tensor in encoder.state_dict().items():
        assert torch.equal(final.state_dict()[name], tensor), name
    # checkpoint-1 is the encoder after one step: a one-step run ends with the same weights
    mid = VLVEncoder.from_pretrained(first / "vlv_encoder").eval()
    one = Stage1Params(
        **{
            **params.model_dump(),
            "training": {**params.training.model_dump(), "steps": 1},
            "checkpoint_dir": str(tmp_path / "one"),
        }
    )
    after_one, _ = train_stage1(data, one, T2IParams(model=str(tiny_sd)))
    pixels = data["test"].images(2)
    assert torch.equal(mid(pixels), after_one(pixels))
    assert not torch.equal(mid(pixels), encoder(pixels))


def test_training_logs_loss_lr_grad_norm_and_throughput_to_tensorboard(
    tiny_sd, data, tmp_path, monkeypatch
):
    params = _params(tiny_sd, tmp_path)
    params = Stage1Params(
        **{
            **params.model_dump(),
            "validation": {**params.validation.model_dump(), "every": 1, "probe": None},
        }
    )
    loads = []
    real_load = stage1_nodes.load_teacher
    monkeypatch.setattr(
        stage1_nodes, "load_teacher", lambda *a, **k: loads.append(a) or real_load(*a, **k)
    )
    _, log = train_stage1(data, params, T2IParams(model=str(tiny_sd)))
    assert len(loads) == 1  # the two validations reuse the training's teacher
    logs = next((tmp_path / "ckpt").iterdir()) / "logs"
    scalars = read_events(logs)
    for tag in ("loss", "lr", "grad_norm", "images_per_s"):
        assert [step for step, _ in scalars[tag]] == [1, 2], tag
    assert [v for _, v in scalars["loss"]] == pytest.approx([e["loss"] for e in log["history"]])
    assert all(v > 0 for _, v in scalars["grad_norm"] + scalars["images_per_s"])
    # validation.every: the reconstruction grid at steps 1 and 2
    assert [step for step, _ in scalars["validation/reconstructions"]] == [1, 2]


def test_validation_during_training_logs_the_probe_metric(tiny_sd, data, tmp_path):
    AttributeProbe(image_size=16, width=4, hidden=8).save_pretrained(tmp_path / "probe")
    params = _params(tiny_sd, tmp_path)
    params = Stage1Params(
        **{
            **params.model_dump(),
            "training": {**params.training.model_dump(), "steps": 1},
            "validation": {
                **params.validation.model_dump(),
                "every": 1,
                "probe": str(tmp_path / "probe"),
            },
        }
    )
    encoder, _ = train_stage1(data, params, T2IParams(model=str(tiny_sd)))
    scalars = read_events(next((tmp_path / "ckpt").iterdir()) / "logs")
    metrics, _ = validate_stage1(encoder, data, params, T2IParams(model=str(tiny_sd)))
    logged = dict(scalars["validation/exact_scene"])[1]
    assert logged == pytest.approx(metrics["reconstruction"]["exact_scene"])


def test_gradient_checkpointing_changes_memory_not_the_numbers(tiny_sd, data, tmp_path):
    from vlv_pipeline.training.loop import enable_gradient_checkpointing

    def loss_and_grads(checkpointing: bool):
        t2i = load_teacher(str(tiny_sd), "float32")
        torch.manual_seed(0)
        encoder = build_encoder(_params(tiny_sd, tmp_path).encoder, t2i.width, t2i.vae, None)
        objective = Stage1Objective(encoder, t2i).train()
        if checkpointing:
            assert "teacher.unet" in enable_gradient_checkpointing(objective)
            assert objective.teacher.unet.is_gradient_checkpointing
        batch = data["train"].training_set(True, 0).__getitems__([0, 1, 2, 3])
        batch = tuple(torch.stack(column) for column in zip(*batch, strict=True))
        torch.manual_seed(1)
        loss = objective(batch)
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in encoder.parameters() if p.grad is not None]

    plain, checkpointed = loss_and_grads(False), loss_and_grads(True)
    assert torch.equal(plain[0], checkpointed[0])
    assert all(
        torch.allclose(a, b, atol=1e-6) for a, b in zip(plain[1], checkpointed[1], strict=True)
    )
