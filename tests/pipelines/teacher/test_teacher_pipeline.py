"""The teacher pipeline end to end at a tiny size: world -> ingest -> teacher."""

import json
from pathlib import Path

import pytest
import torch
import yaml
from diffusers import StableDiffusionPipeline
from kedro.io import DataCatalog, MemoryDataset
from kedro.runner import SequentialRunner

from vlv_pipeline.datasets.image_source import ImageSourceDataset
from vlv_pipeline.datasets.model_directory import ModelDirectoryDataset
from vlv_pipeline.models.probe import AttributeProbe
from vlv_pipeline.params.ingest import IngestParams
from vlv_pipeline.params.teacher import TeacherParams
from vlv_pipeline.params.world import WorldParams
from vlv_pipeline.pipelines import ingest, teacher, world
from vlv_pipeline.training.loop import list_checkpoints

ROOT = Path(__file__).resolve().parents[3]


def tiny_teacher_params(checkpoint_dir) -> TeacherParams:
    raw = yaml.safe_load((ROOT / "conf/base/parameters_teacher.yml").read_text())["teacher"]
    for block in (raw["vae_training"], raw["unet_training"], raw["probe"]["training"]):
        block.update(steps=4, warmup_steps=1, checkpoint_every=2, batch_size=8)
    raw["probe"]["extra_scenes"] = 16
    raw["unet"]["init"]["block_out_channels"] = [32, 32]
    raw.update(eval_images=6, grid_images=4, checkpoint_dir=str(checkpoint_dir))
    raw["evaluation"].update(steps=2, batch_size=6)
    return TeacherParams(**raw)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("teacher")
    world_params = WorldParams(counts={"train": 32, "val": 4, "test": 8})
    memory = [
        "world_labels",
        "world_tokenizer",
        "image_manifest",
        "ingest_rejects",
        "teacher_splits",
        "teacher_vae",
        "teacher_trained",
        "teacher_metrics",
        "teacher_samples",
        "teacher_loss",
        "ingest_screened",
        "probe_log",
        "vae_log",
        "text_to_image_log",
        "teacher_render_scores",
    ]
    catalog = DataCatalog(
        {
            **{name: MemoryDataset(copy_mode="assign") for name in memory},
            "raw_images": ImageSourceDataset(
                kind="folder",
                path=str(tmp / "images"),
                captions=str(tmp / "labels.parquet"),
                writable=True,
            ),
            "attribute_probe": ModelDirectoryDataset(
                filepath=str(tmp / "probe"), load_class="vlv_pipeline.models.probe.AttributeProbe"
            ),
            "teacher": ModelDirectoryDataset(
                filepath=str(tmp / "teacher"), load_class="diffusers.StableDiffusionPipeline"
            ),
            "params:world": MemoryDataset(world_params),
            "params:ingest": MemoryDataset(IngestParams()),
            "params:teacher": MemoryDataset(tiny_teacher_params(tmp / "ckpt")),
        }
    )

    class LabelsToDisk(MemoryDataset):  # the folder source reads captions from a file
        def save(self, data):
            data.to_parquet(tmp / "labels.parquet")
            super().save(data)

    catalog["world_labels"] = LabelsToDisk(copy_mode="assign")
    pipeline = world.create_pipeline() + ingest.create_pipeline() + teacher.create_pipeline()
    SequentialRunner().run(pipeline, catalog)
    return catalog, tmp


def test_teacher_is_a_genuine_stable_diffusion_directory(tiny_run):
    catalog, tmp = tiny_run
    names = {p.name for p in (tmp / "teacher").iterdir()}
    assert {"model_index.json", "vae", "text_encoder", "tokenizer", "unet", "scheduler"} <= names
    assert not list((tmp / "teacher").rglob("*.bin"))
    unet_weights = next((tmp / "teacher" / "unet").glob("*.safetensors"))
    from safetensors.torch import load_file

    assert next(iter(load_file(unet_weights).values())).dtype == torch.float16  # shipped as fp16
    pipe = StableDiffusionPipeline.from_pretrained(tmp / "teacher")
    assert pipe.scheduler.config.prediction_type == "sample"
    assert pipe.vae.config.scaling_factor != 0.18215  # measured on the world's latents
    images = pipe(
        ["a large red circle at the top left"],
        num_inference_steps=2,
        guidance_scale=1.0,
        output_type="np",
    ).images
    assert images.shape == (1, 32, 32, 3)


def test_metrics_probe_and_figures(tiny_run):
    catalog, tmp = tiny_run
    metrics = catalog.load("teacher_metrics")
    json.dumps(metrics)  # must be JSON-serialisable
    assert {"render", "probe_test_real", "seconds", "sampling"} <= set(metrics)
    assert 0.0 <= metrics["render"]["exact_scene"] <= 1.0
    assert "vae_reconstruction" in metrics["render"]
    probe = catalog.load("attribute_probe")
    assert isinstance(probe, AttributeProbe) and list(probe.config.shapes) == [
        "circle",
        "square",
        "triangle",
    ]
    assert catalog.load("teacher_samples").axes and catalog.load("teacher_loss").axes


def test_training_left_resumable_checkpoints(tiny_run):
    _, tmp = tiny_run
    runs = sorted(p.name.split("-")[0] for p in (tmp / "ckpt").iterdir())
    assert runs == ["probe", "unet", "vae"]
    for run in (tmp / "ckpt").iterdir():
        assert [step for step, _ in list_checkpoints(run)] == [2, 4]
