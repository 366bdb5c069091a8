"""The learning-rate schedules (``training.lr_schedule``): transformers' own schedule
functions, the loop's warm-up and floor, resume, and run folders that do not move."""

import math

import pytest
import torch
from regression_run import regression_data, regression_model, regression_params

from vlv_pipeline.training.loop import train
from vlv_pipeline.training.optimization import lr_multiplier
from vlv_pipeline.training.run_folders import run_directory

_data, _params, _model = regression_data, regression_params, regression_model


def _before(step: int, params) -> float:
    """The loop's hand-written schedule before `lr_schedule` existed (linear warm-up that counts
    the step being taken, then cosine down to min_learning_rate): the default must not move."""
    if step < params.warmup_steps:
        return (step + 1) / params.warmup_steps
    span = max(1, params.steps - params.warmup_steps)
    progress = min(1.0, (step - params.warmup_steps) / span)
    floor = params.min_learning_rate / params.learning_rate
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


@pytest.mark.parametrize(
    "setting",
    [
        # conf/base's stage 1 and stage 2 (lr 1e-3 to 1e-5, warm-up 50)
        dict(steps=2000, warmup_steps=50, learning_rate=1e-3, min_learning_rate=1e-5),
        dict(steps=1000, warmup_steps=50, learning_rate=1e-3, min_learning_rate=1e-5),
        dict(steps=7, warmup_steps=0, learning_rate=0.05),
        dict(steps=10, warmup_steps=10, learning_rate=0.3, min_learning_rate=0.07),
        dict(steps=100, warmup_steps=1, learning_rate=5e-5),
    ],
)
def test_the_default_cosine_is_the_schedule_it_replaced_step_by_step(setting):
    params = _params(**setting)
    assert params.lr_schedule == "cosine"
    multiplier = lr_multiplier(params)
    for step in range(params.steps + 1):
        assert multiplier(step) == _before(step, params), step  # exactly, not approximately


def test_each_schedule_at_chosen_steps():
    floor = 0.1
    setting = dict(steps=110, warmup_steps=10, learning_rate=1.0, min_learning_rate=floor)
    cosine, linear, constant = (
        lr_multiplier(_params(**setting, lr_schedule=name))
        for name in ("cosine", "linear", "constant")
    )
    for schedule in (cosine, linear, constant):  # the same warm-up: step s trains at (s+1)/10
        assert [schedule(s) for s in (0, 4, 9)] == pytest.approx([0.1, 0.5, 1.0])
    # halfway through the decay: cosine and linear both at the middle of [floor, 1]
    assert cosine(60) == pytest.approx(0.55) and linear(60) == pytest.approx(0.55)
    assert cosine(35) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 4)))
    assert linear(35) == pytest.approx(0.1 + 0.9 * 0.75)  # a straight line, not a cosine
    assert cosine(110) == pytest.approx(floor) and linear(110) == pytest.approx(floor)
    assert [constant(s) for s in (10, 60, 110)] == [1.0, 1.0, 1.0]
    # the paper's stage 2: linear from the rate to 0, no warm-up
    paper = lr_multiplier(_params(steps=100, learning_rate=1e-5, lr_schedule="linear"))
    assert [paper(s) for s in (0, 25, 100)] == pytest.approx([1.0, 0.75, 0.0])


def test_past_the_last_step_the_schedule_stays_at_its_end():
    """transformers' cosine rises again past num_training_steps; the loop's never does."""
    params = _params(steps=20, warmup_steps=2, learning_rate=1.0, min_learning_rate=0.2)
    for name in ("cosine", "linear"):
        multiplier = lr_multiplier(params.model_copy(update={"lr_schedule": name}))
        assert multiplier(25) == multiplier(40) == pytest.approx(0.2)


def test_the_optimizer_sees_the_schedule_step_by_step():
    """The learning rate each logged step reports is the multiplier of the next step."""
    params = _params(steps=12, warmup_steps=3, lr_schedule="linear", log_every=1)
    result = train(_model(), _data(), params)
    multiplier = lr_multiplier(params)
    logged = [e["lr"] for e in result.history]
    assert logged == pytest.approx([params.learning_rate * multiplier(s) for s in range(1, 13)])
    assert logged[-1] == 0.0  # linear to a floor of 0


@pytest.mark.parametrize("schedule", ["linear", "constant"])
def test_a_killed_run_resumes_on_its_schedule(tmp_path, schedule):
    params = _params(lr_schedule=schedule, warmup_steps=2)
    reference = _model()
    expected = train(reference, _data(), params)
    with pytest.raises(KeyboardInterrupt):
        train(_model(crash_at=6), _data(), params, checkpoint_dir=tmp_path)
    resumed = _model()
    result = train(resumed, _data(), params, checkpoint_dir=tmp_path)
    assert result.resumed_from == 4 and resumed.calls == 8
    assert [e["lr"] for e in result.history] == pytest.approx([e["lr"] for e in expected.history])
    assert torch.allclose(resumed.linear.weight, reference.linear.weight, atol=1e-6)


def test_run_folders_of_unchanged_settings_do_not_move(tmp_path):
    """The names the loop gave before `lr_schedule` existed (computed with that code), so an
    existing checkpoint folder is found and resumed; another schedule is another run."""
    assert run_directory("/r", "unet", _params()).name == "unet-56ac82132923"
    nested = {
        "timestep_range": [850, 1000],
        "training": _params(warmup_steps=3, min_learning_rate=0.001).model_dump(mode="json"),
    }
    assert run_directory("/r", "stage1", nested).name == "stage1-0f363ac050a5"
    assert run_directory("/r", "unet", _params(lr_schedule="cosine")).name == "unet-56ac82132923"
    assert run_directory("/r", "unet", _params(lr_schedule="linear")) != run_directory(
        "/r", "unet", _params()
    )


def test_an_unknown_schedule_names_the_choices():
    with pytest.raises(ValueError, match="lr_schedule"):
        _params(lr_schedule="cosine_with_restarts")
