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
from vlv_pipeline.params.teacher import FlowTeacherParams, TeacherParams
from vlv_pipeline.params.world import WorldParams
from vlv_pipeline.pipelines import ingest, teacher, world
from vlv_pipeline.training.run_folders import list_checkpoints

ROOT = Path(__file__).resolve().parents[3]
ASSETS = ROOT / "src" / "vlv_pipeline" / "assets"


def tiny_teacher_params(checkpoint_dir) -> TeacherParams:
    raw = yaml.safe_load((ROOT / "conf/base/parameters_teacher.yml").read_text())["teacher"]
    for block in (raw["vae_training"], raw["unet_training"], raw["probe"]["training"]):
        block.update(steps=4, warmup_steps=1, checkpoint_every=2, batch_size=8)
    raw["probe"]["extra_scenes"] = 16
    raw["unet"]["init"]["block_out_channels"] = [32, 32]
    raw.update(eval_images=6, grid_images=4, checkpoint_dir=str(checkpoint_dir))
    raw["evaluation"].update(steps=2, batch_size=6)
    return TeacherParams(**raw)


def tiny_flow_params(checkpoint_dir) -> FlowTeacherParams:
    raw = yaml.safe_load((ROOT / "conf/base/parameters_teacher.yml").read_text())["teacher_flow"]
    raw["training"].update(steps=4, warmup_steps=1, checkpoint_every=2, batch_size=8)
    raw["transformer"]["init"].update(
        num_layers=1, num_attention_heads=2, caption_projection_dim=64
    )
    raw.update(eval_images=6, grid_images=4, checkpoint_dir=str(checkpoint_dir))
    raw["evaluation"].update(steps=2, batch_size=6)
    return FlowTeacherParams(**raw)


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
        "teacher_flow_trained",
        "teacher_flow_log",
        "teacher_flow_render_scores",
        "teacher_flow_metrics",
        "teacher_flow_samples",
        "teacher_flow_loss",
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
            # the flow-matching teacher reads the shipped VAE and is judged by the shipped probe
            "shipped_teacher_vae": ModelDirectoryDataset(
                filepath=str(ASSETS / "teacher" / "vae"), load_class="diffusers.AutoencoderKL"
            ),
            "shipped_probe": ModelDirectoryDataset(
                filepath=str(ASSETS / "attribute_probe"),
                load_class="vlv_pipeline.models.probe.AttributeProbe",
            ),
            "teacher_flow": ModelDirectoryDataset(
                filepath=str(tmp / "teacher_flow"),
                load_class="diffusers.StableDiffusion3Pipeline",
                load_args={"text_encoder_3": None, "tokenizer_3": None},
            ),
            "params:teacher_flow": MemoryDataset(tiny_flow_params(tmp / "ckpt")),
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
    assert runs == ["flow", "probe", "unet", "vae"]
    for run in (tmp / "ckpt").iterdir():
        assert [step for step, _ in list_checkpoints(run)] == [2, 4]


def test_flow_teacher_is_an_sd3_directory_without_t5(tiny_run):
    from diffusers import StableDiffusion3Pipeline

    from vlv_pipeline.models.teachers import StableDiffusion3Teacher, load_teacher

    catalog, tmp = tiny_run
    index = json.loads((tmp / "teacher_flow" / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusion3Pipeline"
    assert index["text_encoder_3"] == [None, None] and index["tokenizer_3"] == [None, None]
    weights = next((tmp / "teacher_flow" / "transformer").glob("*.safetensors"))
    from safetensors.torch import load_file

    assert next(iter(load_file(weights).values())).dtype == torch.float16  # shipped as fp16
    # as SD 3 is loaded without T5: diffusers wants the missing parts named
    pipe = StableDiffusion3Pipeline.from_pretrained(
        tmp / "teacher_flow", text_encoder_3=None, tokenizer_3=None
    )
    assert pipe.text_encoder_3 is None and pipe.vae.config.shift_factor == 0.0
    teacher = load_teacher(str(tmp / "teacher_flow"))
    assert isinstance(teacher, StableDiffusion3Teacher)
    assert teacher.t5_length == 0 and teacher.width == 128  # two 64-wide CLIPs, no T5 zeros
    # the shared VAE: the SD-style teacher's, so both teachers read one latent space
    shipped = ModelDirectoryDataset(
        filepath=str(ASSETS / "teacher" / "vae"), load_class="diffusers.AutoencoderKL"
    ).load()
    assert teacher.scaling_factor == pytest.approx(shipped.config.scaling_factor)
    images = teacher.render_captions(
        ["a large red circle at the top left"], steps=2, guidance=1.0, seed=0, scheduler=None
    )
    assert images.shape == (1, 3, 32, 32) and torch.isfinite(images).all()
    assert isinstance(catalog.load("teacher_flow"), StableDiffusion3Pipeline)
    metrics = catalog.load("teacher_flow_metrics")
    json.dumps(metrics)
    assert 0.0 <= metrics["render"]["exact_scene"] <= 1.0
    assert metrics["sampling"]["scheduler"] is None
    assert catalog.load("teacher_flow_samples").axes and catalog.load("teacher_flow_loss").axes


def test_the_flow_teacher_nodes_run_alone_by_their_tag():
    pipe = teacher.create_pipeline().only_nodes_with_tags("flow_matching")
    assert {n.name for n in pipe.nodes} == {
        "load_world_splits",
        "train_flow_teacher",
        "evaluate_flow_teacher",
        "package_flow_teacher",
    }
    # what it reads from outside: the ingested world and shipped, read-only models
    assert pipe.inputs() == {
        "raw_images",
        "image_manifest",
        "world_labels",
        "world_tokenizer",
        "shipped_teacher_vae",
        "shipped_probe",
        "params:world",
        "params:teacher_flow",
    }
