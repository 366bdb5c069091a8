"""The teacher shipped in the package renders what its captions say, as its card records."""

import json
from pathlib import Path

import pytest
import torch
from diffusers import StableDiffusionPipeline

from vlv_pipeline.metrics.scenes import scene_agreement
from vlv_pipeline.models.probe import AttributeProbe
from vlv_pipeline.models.teacher import render_captions
from vlv_pipeline.params.world import WorldParams
from vlv_pipeline.world.data import scene_targets
from vlv_pipeline.world.generate import generate_labels

ASSETS = Path(__file__).resolve().parents[1] / "src" / "vlv_pipeline" / "assets"
N = 128

pytestmark = pytest.mark.skipif(not (ASSETS / "teacher").is_dir(), reason="no teacher shipped yet")


def first_test_scenes():
    """The default world's first N test scenes (by file) and their attribute targets."""
    world = WorldParams()
    labels = generate_labels(world)
    test = labels[labels["split"] == "test"].sort_values("file").head(N)
    targets = torch.stack(
        [
            scene_targets(o, world.shapes, list(world.colours), list(world.sizes))
            for o in test["objects"]
        ]
    )
    return test, targets


def as_sampled(sampling: dict) -> dict:
    """The render arguments of the card's sampling settings."""
    keys = ("steps", "guidance", "seed", "scheduler")
    return {**{k: sampling[k] for k in keys}, "batch_size": 64}


def assert_as_recorded(scores: dict, recorded: dict) -> None:
    """Within noise of the card's figure: 3 binomial standard deviations for N captions."""
    expected = recorded["render"]["exact_scene"]
    tolerance = 3 * (expected * (1 - expected) / N) ** 0.5 + 1 / N
    assert scores["exact_scene"] >= expected - tolerance, (scores, expected)
    assert scores["attributes"] >= recorded["render"]["attributes"] - 0.03


@pytest.mark.slow
def test_shipped_teacher_matches_its_recorded_quality():
    recorded = json.loads((ASSETS / "teacher_metrics.json").read_text())
    sampling = recorded["sampling"]
    pipe = StableDiffusionPipeline.from_pretrained(ASSETS / "teacher")  # as one loads SD 2.1
    assert pipe.unet.dtype == torch.float32 and pipe.text_encoder.dtype == torch.float32
    probe = AttributeProbe.from_pretrained(ASSETS / "attribute_probe").eval()

    test, targets = first_test_scenes()
    images = render_captions(pipe, test["caption"].tolist(), **as_sampled(sampling))
    assert_as_recorded(scene_agreement(probe.predict(images), targets), recorded)


@pytest.mark.slow
@pytest.mark.skipif(not (ASSETS / "teacher_flow").is_dir(), reason="no flow teacher shipped yet")
def test_shipped_flow_teacher_matches_its_recorded_quality():
    """The flow-matching teacher, loaded as `t2i` loads it, renders its card's figure."""
    from vlv_pipeline.models.teachers import StableDiffusion3Teacher, load_teacher

    recorded = json.loads((ASSETS / "teacher_flow_metrics.json").read_text())
    sampling = recorded["sampling"]
    teacher = load_teacher(str(ASSETS / "teacher_flow"))
    assert isinstance(teacher, StableDiffusion3Teacher) and teacher.text_encoder_3 is None
    assert teacher.transformer.dtype == torch.float32  # fp16 on disk, fp32 to compute
    probe = AttributeProbe.from_pretrained(ASSETS / "attribute_probe").eval()
    test, targets = first_test_scenes()
    images = teacher.render_captions(test["caption"].tolist(), **as_sampled(sampling))
    assert_as_recorded(scene_agreement(probe.predict(images), targets), recorded)
