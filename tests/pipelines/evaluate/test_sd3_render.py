"""Captions re-rendered by a Stable Diffusion 3 pipeline (conf/paper: SD 3.5 Medium), here one
built tiny from configs and loaded back through the real path (``DiffusionPipeline``)."""

from __future__ import annotations

import pytest
import torch
from diffusers import DiffusionPipeline
from table1_factory import build_tiny_sd3

from vlv_pipeline.errors import ParameterError
from vlv_pipeline.metrics.tables import PaperTable
from vlv_pipeline.models.seeds import image_generators
from vlv_pipeline.models.teacher import render
from vlv_pipeline.params.evaluate import EvaluateParams
from vlv_pipeline.params.rerender import RerenderParams
from vlv_pipeline.params.t2i import T2IParams
from vlv_pipeline.pipelines.evaluate import nodes, renders, rerender

CAPTIONS = ["a large red circle at the top left", "a small blue square in the centre", ""]


@pytest.fixture(scope="module")
def sd3(tmp_path_factory):
    return build_tiny_sd3(tmp_path_factory.mktemp("sd3") / "sd3")


@pytest.fixture(scope="module")
def pipeline(sd3):
    loaded = DiffusionPipeline.from_pretrained(sd3, dtype=torch.float32)
    assert type(loaded).__name__ == "StableDiffusion3Pipeline"
    assert type(loaded.scheduler).__name__ == "FlowMatchEulerDiscreteScheduler"
    return loaded


def _generators(n: int) -> list[torch.Generator]:
    return image_generators(0, range(n))


def test_captions_render_through_sd3_with_its_own_sampler(pipeline):
    kwargs = dict(captions=CAPTIONS, steps=3, guidance=2.0, scheduler=None)
    images = render(pipeline, generator=_generators(3), batch_size=3, **kwargs)
    assert images.shape == (3, 3, 16, 16) and images.dtype == torch.float32
    assert -1 <= images.min() < images.max() <= 1
    # each image draws its own noise: one at a time gives the same images
    alone = render(pipeline, generator=_generators(3), batch_size=1, **kwargs)
    torch.testing.assert_close(alone, images, rtol=0, atol=1e-5)
    assert not torch.allclose(images[0], images[1])  # different captions and noise
    # naming its own scheduler is the same; a larger side is asked of the pipeline
    same = render(pipeline, generator=_generators(3), batch_size=3, **{**kwargs, "scheduler": None})
    torch.testing.assert_close(same, images)
    bigger = render(
        pipeline, generator=_generators(1), size=32, **{**kwargs, "captions": CAPTIONS[:1]}
    )
    assert bigger.shape == (1, 3, 32, 32)


def test_a_flow_matching_model_keeps_its_own_sampler(pipeline, tiny_sd, caplog):
    """A noise-prediction sampler named for a flow-matching model (conf's default, made for
    Stable Diffusion teachers) gives way to the model's own, with a warning; the reverse is
    refused."""
    kwargs = dict(captions=CAPTIONS[:1], steps=2, guidance=1.0)
    with caplog.at_level("WARNING"):
        named = render(pipeline, scheduler="DDIMScheduler", generator=_generators(1), **kwargs)
    assert "does not apply to a flow-matching model" in caplog.text
    assert type(pipeline.scheduler).__name__ == "FlowMatchEulerDiscreteScheduler"  # untouched
    own = render(pipeline, scheduler=None, generator=_generators(1), **kwargs)
    torch.testing.assert_close(named, own)
    kwargs["generator"] = _generators(1)
    with pytest.raises(ParameterError, match="'NoSuchScheduler' is not a diffusers scheduler"):
        render(pipeline, scheduler="NoSuchScheduler", **kwargs)
    sd = DiffusionPipeline.from_pretrained(tiny_sd)
    with pytest.raises(ParameterError, match="cannot sample a model trained for DDPMScheduler"):
        render(sd, scheduler="FlowMatchEulerDiscreteScheduler", **kwargs)


def test_table1_and_the_reconstructions_render_captions_with_sd3(tiny_world, tiny_sd, sd3):
    """The paper's arrangement: the stage-1 T2I renders the embeddings, another model (SD 3)
    renders every caption, with its own sampler."""
    source, manifest = tiny_world
    params = EvaluateParams(
        render_t2i=str(sd3),
        images=3,
        sampling={"steps": 2, "batch_size": 3},
        judge="pixels",
        probe=None,
        captioners=[{"kind": "reference"}, {"kind": "chance"}],
    )
    t2i = T2IParams(model=str(tiny_sd))  # renders the embeddings; SD 3 the captions
    data = nodes.load_eval_data(source, manifest, params)
    captions = nodes.caption_eval_images(None, None, data, params)
    sweep = RerenderParams(guidance=[1.0, 3.0], steps=2, scheduler=None, batch_size=2)
    table, _ = rerender.rerender_table1(data, captions, {}, params, sweep, t2i)
    table = PaperTable.from_dict(table)
    assert [r.label for r in table.rows][0] == "reference captions (upper bound)"
    assert all(v is not None and v > 0 for r in table.rows for v in r.values.values())
    assert str(sd3) in table.notes[0] and "the pipeline's own sampler" in table.notes[0]
    # the evaluation's reconstructions from captions go through the same model
    from diffusers import AutoencoderKL

    from vlv_pipeline.models.vlv_encoder import SmallVLVEncoder, vae_config_of

    vae = AutoencoderKL.from_pretrained(tiny_sd / "vae")
    encoder = SmallVLVEncoder(
        num_queries=4, out_dim=16, width=16, heads=2, image_size=16, vae_config=vae_config_of(vae)
    )
    encoder.load_vae_tower(vae)
    names = set()
    for name, _, originals, images in renders.reconstruct(encoder, data, captions, params, t2i):
        names.add(name)
        assert images.shape == originals.shape and images.shape[1:] == (3, 16, 16)
    assert names == {"from_embeddings", "ground_truth_caption", "chance"}
