import json

import pytest
import torch
from regression_run import Regression, regression_data, regression_model, regression_params
from torch import nn

from vlv_pipeline.params.training import TrainParams
from vlv_pipeline.training.loop import TrainingDivergedError, train
from vlv_pipeline.training.optimization import lr_multiplier
from vlv_pipeline.training.run_folders import list_checkpoints, run_directory

_data, _params, _model = regression_data, regression_params, regression_model


def test_training_reduces_the_loss_and_keeps_frozen_parts_frozen():
    model = _model()
    frozen_before = model.frozen.weight.clone()
    result = train(model, _data(), _params(steps=60, learning_rate=0.1))
    assert result.history[-1]["loss"] < 0.1 * result.history[0]["loss"]
    assert torch.equal(model.frozen.weight, frozen_before)
    assert [e["step"] for e in result.history][:3] == [2, 4, 6]


def test_checkpoints_are_written_and_pruned(tmp_path):
    train(_model(), _data(), _params(), checkpoint_dir=tmp_path)
    assert [step for step, _ in list_checkpoints(tmp_path)] == [8, 12]
    assert not list(tmp_path.glob(".*"))  # no temporary or backup left


def test_a_killed_run_resumes_and_matches_an_uninterrupted_one(tmp_path):
    reference = _model()
    train(reference, _data(), _params())

    with pytest.raises(KeyboardInterrupt):
        train(_model(crash_at=6), _data(), _params(), checkpoint_dir=tmp_path)
    assert [step for step, _ in list_checkpoints(tmp_path)] == [4]

    resumed = _model()
    result = train(resumed, _data(), _params(), checkpoint_dir=tmp_path)
    assert result.resumed_from == 4
    assert result.steps == 12
    assert result.seconds > 0  # includes the killed run's time up to its checkpoint
    assert resumed.calls == 8  # only the remaining steps ran
    assert torch.allclose(resumed.linear.weight, reference.linear.weight, atol=1e-6)
    assert [e["step"] for e in result.history] == [2, 4, 6, 8, 10, 12]


def test_a_finished_run_returns_at_once_when_rerun(tmp_path):
    first = _model()
    train(first, _data(), _params(), checkpoint_dir=tmp_path)
    again = _model(seed=1)
    result = train(again, _data(), _params(), checkpoint_dir=tmp_path)
    assert again.calls == 0 and result.resumed_from == 12
    record = json.loads((list_checkpoints(tmp_path)[-1][1] / "history.json").read_text())
    assert result.seconds == pytest.approx(record["seconds"]) and result.seconds > 0
    assert torch.equal(again.linear.weight, first.linear.weight)


def test_resume_can_be_switched_off(tmp_path):
    train(_model(), _data(), _params(), checkpoint_dir=tmp_path)
    model = _model()
    result = train(model, _data(), _params(resume=False), checkpoint_dir=tmp_path)
    assert result.resumed_from is None and model.calls == 12


def test_nan_guard_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    with pytest.raises(TrainingDivergedError, match=r"checkpoint-4"):
        train(_model(nan_at=5), _data(), _params(), checkpoint_dir=tmp_path)
    assert [step for step, _ in list_checkpoints(tmp_path)] == [4]


def test_gradient_accumulation_matches_the_big_batch():
    big, small = _model(), _model()
    train(big, _data(), _params(steps=1, batch_size=8, max_grad_norm=None))
    train(
        small, _data(), _params(steps=1, batch_size=4, gradient_accumulation=2, max_grad_norm=None)
    )
    assert torch.allclose(big.linear.weight, small.linear.weight, atol=1e-6)


def test_ema_tracks_the_weights():
    model = _model()
    result = train(model, _data(), _params(steps=30, ema_decay=0.9))
    shadow = result.ema.shadow_params[0]
    assert not torch.equal(shadow, model.linear.weight)
    assert (shadow - model.linear.weight).abs().max() < 1.0


def test_schedule_warms_up_then_decays_to_the_floor():
    params = _params(steps=100, warmup_steps=10, learning_rate=1.0, min_learning_rate=0.01)
    multiplier = lr_multiplier(params)
    assert multiplier(0) == pytest.approx(0.1)
    assert multiplier(10) == pytest.approx(1.0)
    assert multiplier(100) == pytest.approx(0.01)
    values = [multiplier(s) for s in range(10, 101)]
    assert all(a >= b for a, b in zip(values, values[1:], strict=False))


def test_too_little_data_for_one_batch_says_so():
    with pytest.raises(ValueError, match="smaller than one batch"):
        train(_model(), _data(4), _params(batch_size=8))


def test_run_directory_changes_with_the_setup(tmp_path):
    a = run_directory(tmp_path, "unet", _params())
    assert a == run_directory(tmp_path, "unet", _params())
    assert a != run_directory(tmp_path, "unet", _params(learning_rate=0.01))
    assert a.name.startswith("unet-")


def test_params_name_the_bad_key():
    with pytest.raises(ValueError, match="warmup_steps"):
        _params(steps=5, warmup_steps=10)
    with pytest.raises(ValueError, match="batch_sise"):
        TrainParams(steps=1, batch_sise=3, learning_rate=1e-3)


def test_stages_with_different_precisions_run_in_one_process():
    """stage 1 in fp32 then stage 2 in bf16 within one `kedro run` (Accelerate's state is global)."""
    for precision in ("no", "bf16", "no"):
        result = train(_model(), _data(), _params(steps=2, mixed_precision=precision))
        assert len(result.history) == 1 and torch.isfinite(torch.tensor(result.history[0]["loss"]))


def test_norms_and_biases_can_be_left_undecayed():
    from vlv_pipeline.training.optimization import parameter_groups

    model = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))
    trainable = list(model.parameters())
    assert parameter_groups(trainable, _params()) == [{"params": trainable}]
    decay, plain = parameter_groups(trainable, _params(decay_norms_and_biases=False))
    assert decay["params"] == [model[0].weight] and "weight_decay" not in decay
    assert plain["weight_decay"] == 0.0 and len(plain["params"]) == 3
    # with no gradient at all, AdamW's decay alone moves the weight, never the biases
    optimizer = torch.optim.AdamW([decay, plain], lr=0.1, weight_decay=0.5)
    before = [p.detach().clone() for p in trainable]
    for p in trainable:
        p.grad = torch.zeros_like(p)
    optimizer.step()
    moved = [not torch.equal(b, p) for b, p in zip(before, trainable, strict=True)]
    assert moved == [True, False, False, False]


class Indexed(torch.utils.data.Dataset):
    """Regression data that also says which items a batch holds."""

    def __init__(self, n=40):
        self.x, self.y = _data(n).tensors

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], self.y[i], i


class Recording(Regression):
    def __init__(self, **kw):
        super().__init__(**kw)
        self.seen: list[list[int]] = []

    def forward(self, batch):
        x, y, index = batch
        self.seen.append(index.tolist())
        return super().forward((x, y))


def test_worker_processes_read_the_same_batches_and_resume_mid_epoch(tmp_path):
    # 40 items, batch 8: 5 batches an epoch, so step 7 (the checkpoint) is mid-epoch 2
    params = _params(steps=12, checkpoint_every=7)
    torch.manual_seed(0)
    in_loop = Recording()
    train(in_loop, Indexed(), params)
    torch.manual_seed(0)
    workers = Recording()
    train(workers, Indexed(), params.model_copy(update={"num_workers": 2, "prefetch_factor": 1}))
    assert workers.seen == in_loop.seen
    assert sorted(sum(in_loop.seen[:5], [])) == list(range(40))  # one epoch: every item once
    assert torch.equal(workers.linear.weight, in_loop.linear.weight)

    with_workers = params.model_copy(update={"num_workers": 2})
    torch.manual_seed(0)
    with pytest.raises(KeyboardInterrupt):
        train(Recording(crash_at=9), Indexed(), with_workers, checkpoint_dir=tmp_path)
    torch.manual_seed(0)
    resumed = Recording()
    result = train(resumed, Indexed(), with_workers, checkpoint_dir=tmp_path)
    assert result.resumed_from == 7
    assert resumed.seen == in_loop.seen[7:]  # the same next batches as the uninterrupted run
    assert torch.allclose(resumed.linear.weight, in_loop.linear.weight, atol=1e-6)


def test_how_batches_are_read_is_not_part_of_the_run_folder(tmp_path):
    base = _params()
    fast = base.model_copy(update={"num_workers": 4, "prefetch_factor": 2, "pin_memory": False})
    assert run_directory(tmp_path, "s", base) == run_directory(tmp_path, "s", fast)
    assert run_directory(tmp_path, "s", {"training": base.model_dump()}) == run_directory(
        tmp_path, "s", {"training": fast.model_dump()}
    )
    with pytest.raises(ValueError, match="prefetch_factor needs num_workers"):
        _params(prefetch_factor=2)


def test_validation_sees_the_ema_weights_and_leaves_training_as_it_was(tmp_path):
    from vlv_pipeline.training.loop import Validation

    params = _params(ema_decay=0.9)
    plain = _model()
    plain_result = train(plain, _data(), params)
    seen = {}
    watched = _model()

    def run(step):
        seen[step] = watched.linear.weight.detach().clone()
        torch.rand(100)  # validation may draw: training's random state must not notice
        return {"score": float(step)}, {}

    result = train(watched, _data(), params, validation=Validation(every=6, run=run))
    assert sorted(seen) == [6, 12]
    assert torch.equal(watched.linear.weight, plain.linear.weight)  # live weights restored
    assert torch.equal(seen[12], result.ema.shadow_params[0])  # validated with EMA weights
    assert not torch.equal(seen[12], watched.linear.weight)
    assert plain_result.history == result.history


def test_objective_naming_its_models_must_cover_every_trainable_weight(tmp_path):
    model = _model()
    model.trained_models = lambda: {"frozen": model.frozen}  # leaves out `linear`
    with pytest.raises(ValueError, match="leaves out trainable parameters"):
        train(model, _data(), _params(), checkpoint_dir=tmp_path)


def test_a_checkpoint_of_the_whole_objective_from_before_still_resumes(tmp_path):
    from safetensors.torch import load_file, save_file

    from vlv_pipeline.training.checkpoint import TRAINABLE_FILE

    whole = _model()
    train(whole, _data(), _params(), checkpoint_dir=tmp_path / "a")
    resumed_dir = tmp_path / "b"
    first = _model(crash_at=9)  # killed in step 9: checkpoints 4 and 8 are on disk
    with pytest.raises(KeyboardInterrupt):
        train(first, _data(), _params(), checkpoint_dir=resumed_dir)
    # rewrite checkpoint-8 as the old format: Accelerate's model.safetensors, all weights
    old = resumed_dir / "checkpoint-8"
    state = first.state_dict()
    state.update(load_file(str(old / TRAINABLE_FILE)))
    (old / TRAINABLE_FILE).unlink()
    save_file({k: v.contiguous() for k, v in state.items()}, str(old / "model.safetensors"))
    again = _model(seed=1)
    train(again, _data(), _params(), checkpoint_dir=resumed_dir)
    assert torch.equal(again.linear.weight, whole.linear.weight)
    (resumed_dir / "checkpoint-12" / TRAINABLE_FILE).unlink()  # neither format: a clear error
    with pytest.raises(FileNotFoundError, match="checkpoint-12 has none of"):
        train(_model(), _data(), _params(), checkpoint_dir=resumed_dir)


def test_an_old_checkpoint_that_stored_tied_weights_once_still_loads(tmp_path):
    from safetensors.torch import save_file

    from vlv_pipeline.training.checkpoint import load_trained

    class Tied(nn.Module):  # an LLM's lm_head shares its embeddings' tensor
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(4, 3)
            self.head = nn.Linear(3, 4, bias=False)
            self.head.weight = self.embed.weight

    saved = Tied()
    state = {k: v.clone() for k, v in saved.state_dict().items() if k != "head.weight"}
    save_file(state, str(tmp_path / "model.safetensors"))  # safetensors keeps one name
    loaded = Tied()
    load_trained(loaded, tmp_path)
    assert torch.equal(loaded.head.weight, saved.embed.weight)
    del state["embed.weight"]  # a really missing weight is still refused
    save_file(state, str(tmp_path / "model.safetensors"))
    with pytest.raises(ValueError, match="missing"):
        load_trained(Tied(), tmp_path)
