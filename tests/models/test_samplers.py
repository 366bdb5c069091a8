"""Every sampler a render may name (SamplingParams' samplers) is built from the shipped
teacher's own scheduler config and renders through the evaluation's real path (issue 28)."""

from pathlib import Path
from typing import get_args

import pytest
import torch
from pydantic import ValidationError

from vlv_pipeline.models.teacher import _scheduler
from vlv_pipeline.models.teachers import load_teacher
from vlv_pipeline.params.evaluate import RenderParams
from vlv_pipeline.params.teacher import Sampler, SamplingParams
from vlv_pipeline.pipelines.evaluate.renders import render_from_embeddings

TEACHER = Path(__file__).resolve().parents[2] / "src/vlv_pipeline/assets/teacher"
SAMPLERS = get_args(Sampler)
STEPS = 3

pytestmark = pytest.mark.skipif(not TEACHER.is_dir(), reason="no teacher shipped")


@pytest.fixture(scope="module")
def t2i():
    return load_teacher(str(TEACHER))


@pytest.fixture(scope="module")
def conditions(t2i):
    """Two images' conditions from caption embeddings, as the stage-1 encoder makes them."""
    weight = t2i.text_encoder.get_input_embeddings().weight
    embeddings = torch.randn(2, 8, t2i.width, generator=torch.Generator().manual_seed(0))
    return t2i.condition(embeddings * weight.std())


def _render(t2i, conditions, name, seed=0, batch_size=2):
    sampling = RenderParams(scheduler=name, steps=STEPS, seed=seed, batch_size=batch_size)
    return render_from_embeddings(t2i, conditions, 0, sampling)


def test_the_choices_include_dpm_solver_and_unipc_and_refuse_a_typo():
    assert {"DPMSolverMultistepScheduler", "UniPCMultistepScheduler"} <= set(SAMPLERS)
    assert SamplingParams(scheduler="UniPCMultistepScheduler", steps=8).steps == 8
    with pytest.raises(ValidationError):
        SamplingParams(scheduler="UniPCScheduler")


@pytest.mark.parametrize("name", SAMPLERS)
def test_each_sampler_is_built_from_the_teachers_config(t2i, name):
    own = t2i.scheduler.config
    made = _scheduler(t2i.scheduler, name) if name != type(t2i.scheduler).__name__ else None
    made = made or t2i.scheduler
    assert type(made).__name__ == name
    for key in ("num_train_timesteps", "beta_schedule", "beta_start", "beta_end"):
        assert made.config[key] == own[key], key
    assert made.config.prediction_type == own.prediction_type  # the teacher predicts x0
    if name == "DPMSolverMultistepScheduler":  # DPM-Solver++, 2nd order
        assert made.config.algorithm_type == "dpmsolver++" and made.config.solver_order == 2
    if name == "UniPCMultistepScheduler":
        assert made.config.predict_x0 and made.config.solver_type == "bh2"
    made.set_timesteps(STEPS)
    assert len(made.timesteps) == STEPS


@pytest.mark.parametrize("name", SAMPLERS)
def test_each_sampler_renders_finite_images_deterministically(t2i, conditions, name):
    images = _render(t2i, conditions, name)
    pipeline = t2i.pipeline()
    side = pipeline.unet.config.sample_size * pipeline.vae_scale_factor  # the default size
    assert images.shape == (2, 3, side, side) and images.dtype == torch.float32
    assert torch.isfinite(images).all() and images.min() >= -1 and images.max() <= 1
    assert torch.equal(images, _render(t2i, conditions, name))  # the same seed, the same images
    assert not torch.allclose(images, _render(t2i, conditions, name, seed=1))
    # each image draws from its own generator: one at a time gives the same images
    alone = _render(t2i, conditions, name, batch_size=1)
    torch.testing.assert_close(alone, images, atol=1e-4, rtol=0)


def test_the_samplers_really_differ(t2i, conditions):
    """The scheduler is replaced, not ignored: the samplers render different images."""
    renders = [_render(t2i, conditions, name) for name in SAMPLERS]
    for i in range(len(renders)):
        for j in range(i + 1, len(renders)):
            assert not torch.allclose(renders[i], renders[j], atol=1e-3), (SAMPLERS[i], SAMPLERS[j])
