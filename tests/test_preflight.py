"""The check before any node runs: every missing component in one message, no traceback."""

import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import click
import pytest
from kedro.io import DataCatalog, DatasetError, MemoryDataset, Version
from kedro.pipeline import Node, Pipeline
from test_end_to_end import copy_project

from vlv_pipeline import preflight
from vlv_pipeline.datasets.credentials import CredentialsDataset
from vlv_pipeline.datasets.embedding_cache import EmbeddingCacheDataset
from vlv_pipeline.datasets.image_source import ImageSourceDataset
from vlv_pipeline.datasets.model_directory import ModelDirectoryDataset
from vlv_pipeline.params.cache import CacheParams
from vlv_pipeline.params.evaluate import CaptionParams, EvaluateParams
from vlv_pipeline.params.needs import ModelNeed
from vlv_pipeline.params.published import ImportParams
from vlv_pipeline.params.rating import RatingParams
from vlv_pipeline.params.reconstruct import ReconstructParams
from vlv_pipeline.params.stage1 import Stage1Params
from vlv_pipeline.params.stage2 import Stage2Params
from vlv_pipeline.params.synthesize import SynthesizeParams
from vlv_pipeline.params.t2i import T2IParams
from vlv_pipeline.params.vqa import VQAParams
from vlv_pipeline.preflight import (
    Finding,
    MissingComponentsError,
    PreflightHook,
    Producers,
    Reference,
    check,
    check_datasets,
    check_references,
)
from vlv_pipeline.preflight import check_parameters as check_models
from vlv_pipeline.preflight import findings as preflight_findings

KEDRO = str(Path(sys.executable).with_name("kedro"))


def _f(*args):  # a node function; never called
    return None


# each block's parameter model, as the nodes that take it declare
MODELS = {
    "cache": CacheParams,
    "caption": CaptionParams,
    "evaluate": EvaluateParams,
    "t2i": T2IParams,
    "import_published": ImportParams,
    "rating": RatingParams,
    "reconstruct": ReconstructParams,
    "stage1": Stage1Params,
    "stage2": Stage2Params,
    "synthesize": SynthesizeParams,
    "vqa": VQAParams,
}
TRAINING = {"steps": 3, "batch_size": 2, "learning_rate": 1e-4}


def check_parameters(blocks, *args, **kwargs):
    """``check_parameters`` on the models built from these raw blocks, as the hook builds them."""
    models = {
        name: MODELS[name.rsplit(".", 1)[-1]].model_validate(value)
        for name, value in blocks.items()
    }
    return check_models(models, *args, **kwargs)


def references(block: str, value: dict) -> list[ModelNeed]:
    """The models a block names (its model's ``ModelNeed`` records)."""
    model = MODELS[block.rsplit(".", 1)[-1]].model_validate(value)
    return [n for n in model.needs(block) if isinstance(n, ModelNeed)]


def _t2i(model: str) -> dict:
    """The ``t2i`` block naming ``model``."""
    return {"model": model}


# node functions whose annotations tell the preflight each block's model; never called
def _with_t2i(model: object, t2i: T2IParams) -> None:
    return None


def _t2i_only(t2i: T2IParams) -> None:
    return None


def _rate(rating: RatingParams, credentials: dict) -> None:
    return None


def _answer(vqa: VQAParams, credentials: dict) -> None:
    return None


def _imported(checkpoint=None, llm="."):
    """An ``import_published`` block whose components are local directories (``.``)."""
    spec = {"pretrained": "."}
    return {
        "checkpoint": checkpoint,
        "florence2": spec,
        "florence2_tokenizer": spec,
        "text_encoder": spec,
        "llm": {"pretrained": llm},
        "tokenizer": spec,
    }


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """An empty Hugging Face cache (and torch hub dir); ``add(repo, file)`` caches a file."""
    from huggingface_hub import constants

    cache = tmp_path / "hf"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    def add(repo: str, file: str = "config.json") -> None:
        root = cache / f"models--{repo.replace('/', '--')}"
        (root / "refs").mkdir(parents=True, exist_ok=True)
        (root / "refs/main").write_text("0123abcd")
        target = root / "snapshots/0123abcd" / file
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text("{}")

    return add


# --------------------------------------------------------------------------- references


def test_references_follow_the_chosen_backbone_and_backend_only():
    assert [
        r.key for r in references("t2i", {"model": "stabilityai/stable-diffusion-2-1-base"})
    ] == ["t2i.model"]  # the one block naming the T2I model
    stage1 = {
        "encoder": {
            "backbone": "small",
            "num_queries": 4,
            "small": {"width": 8},
            "florence2": {"pretrained": "microsoft/Florence-2-large", "tokenizer": "x/y"},
        },
        "validation": {"probe": "src/vlv_pipeline/assets/attribute_probe"},
        "training": TRAINING,
    }
    assert [r.key for r in references("stage1", stage1)] == ["stage1.validation.probe"]
    stage1["encoder"]["backbone"] = "florence2"
    assert {r.key for r in references("stage1", stage1)} == {
        "stage1.encoder.florence2.pretrained",
        "stage1.encoder.florence2.tokenizer",
        "stage1.validation.probe",
    }
    synthesize = {
        "captioner": {
            "backend": "openai",
            "transformers": {"pretrained": "microsoft/Florence-2-large"},
            "openai": {"base_url": "https://x", "model": "m"},
        }
    }
    assert references("synthesize", synthesize) == []
    synthesize["captioner"]["backend"] = "transformers"
    assert references("synthesize", synthesize) == [
        Reference("synthesize.captioner.transformers.pretrained", "microsoft/Florence-2-large")
    ]


def test_references_keep_subfolders_and_respect_the_judge():
    stage2 = {
        "tokenizer": {"pretrained": "Qwen/Qwen2.5-3B", "subfolder": "tok"},
        "llm": {"init": {}},
        "training": TRAINING,
    }
    assert references("stage2", stage2) == [
        Reference("stage2.tokenizer.pretrained", "Qwen/Qwen2.5-3B", "tok", weights=False),
    ]
    imported = _imported("w.safetensors", llm="Qwen/Qwen2.5-3B")
    assert Reference("import_published.llm.pretrained", "Qwen/Qwen2.5-3B", weights=False) in (
        references("import_published", imported)
    )  # its weights are the published checkpoint's
    assert not any(r.weights for r in references("import_published", imported))
    evaluate = {"render_t2i": "c/d", "judge": "fid_clip", "probe": "p/q"}
    assert [r.key for r in references("evaluate", evaluate)] == [
        "evaluate.render_t2i",
        "evaluate.clip_model",
    ]  # the probe judges only under judge: probe
    assert [r.key for r in references("evaluate", {**evaluate, "judge": "probe"})] == [
        "evaluate.render_t2i",
        "evaluate.probe",
    ]
    # render_t2i null: the T2I model renders the captions too, named by params:t2i alone
    assert references("evaluate", {"render_t2i": None}) == []


# --------------------------------------------------------------------------- models


def test_local_directories_pass_and_missing_ones_name_their_key_and_maker(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models/sd/vae").mkdir(parents=True)
    registry = {"rehearsal": Pipeline([Node(_f, None, "t2i_dir", name="make")])}
    catalog = DataCatalog(
        datasets={
            "t2i_dir": ModelDirectoryDataset(
                filepath=str(tmp_path / "data/t2i"), load_class="diffusers.StableDiffusionPipeline"
            )
        }
    )
    refs = [
        Reference("cache.vae.pretrained", str(tmp_path / "models/sd"), "vae"),
        Reference("t2i.model", str(tmp_path / "models/sd")),
        Reference("reconstruct.render_t2i", str(tmp_path / "models/sd"), "unet"),
        Reference("reconstruct.probe", "data/t2i"),
        Reference("evaluate.render_t2i", "data/t2i"),
        Reference("stage1.validation.probe", "./nowhere/probe"),
    ]
    found = check_references(refs, Producers(registry, catalog), "rehearsal", [])
    assert [f.line() for f in found] == [
        f"reconstruct.render_t2i = {tmp_path / 'models/sd'}: has no subfolder 'unet' -> point "
        "`reconstruct.render_t2i` at a save_pretrained directory that has it",
        "reconstruct.probe, evaluate.render_t2i = data/t2i: no such directory -> "
        "`kedro run --env rehearsal --pipeline rehearsal`",
        "stage1.validation.probe = ./nowhere/probe: no such directory -> create it, or point "
        "`stage1.validation.probe` at a local directory or a hub id",
    ]
    assert not any(f.download for f in found)
    # a directory this run writes before reading it is no gap
    assert check_references(refs[3:4], None, None, [tmp_path / "data/t2i"]) == []


def test_hub_ids_are_looked_up_in_the_local_cache_only(hub_cache, monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("the check must never reach the network")

    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "snapshot_download", no_network)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_network)
    refs = [
        Reference("t2i.model", "stabilityai/stable-diffusion-2-1-base"),
        Reference("cache.vae.pretrained", "stabilityai/stable-diffusion-2-1-base", "vae"),
        Reference("stage2.llm.pretrained", "Qwen/Qwen2.5-3B"),
    ]
    found = check_references(refs, None, "paper", [])
    assert [f.line() for f in found] == [
        "t2i.model, cache.vae.pretrained = stabilityai/stable-diffusion-2-1-base: not a local "
        "directory and not in the Hugging Face cache -> `hf download "
        "stabilityai/stable-diffusion-2-1-base`",
        "stage2.llm.pretrained = Qwen/Qwen2.5-3B: not a local directory and not in the Hugging "
        "Face cache -> `hf download Qwen/Qwen2.5-3B`",
    ]
    assert all(f.download for f in found)
    sd = "stabilityai/stable-diffusion-2-1-base"
    for file in (
        "model_index.json",
        "unet/config.json",
        "unet/diffusion_pytorch_model.safetensors",
    ):
        hub_cache(sd, file)
    hub_cache("Qwen/Qwen2.5-3B")  # its configs only, as `hf download ... --include "*.json"`
    found = check_references(refs, None, "paper", [])
    assert [f.line() for f in found] == [
        f"t2i.model, cache.vae.pretrained = {sd}: not a local directory and not in the Hugging "
        f"Face cache -> `hf download {sd}`",  # the vae subfolder is not there yet
        "stage2.llm.pretrained = Qwen/Qwen2.5-3B: in the Hugging Face cache without its weights "
        "(configs only) -> `hf download Qwen/Qwen2.5-3B`",
    ]
    # a teacher of another family says what it needs beyond the download
    flux = check_references(
        [Reference("t2i.model", "black-forest-labs/FLUX.1-dev")], None, "paper", []
    )
    assert "gated: accept its licence" in flux[0].line() and "T5-XXL" in flux[0].line()
    # a tokenizer, or a block reading configs only, needs no weights
    configs_only = [
        Reference("stage2.tokenizer.pretrained", "Qwen/Qwen2.5-3B", weights=False),
        Reference("import_published.llm.pretrained", "Qwen/Qwen2.5-3B", weights=False),
    ]
    assert check_references(configs_only, None, "paper", []) == []
    hub_cache(sd, "vae/config.json")
    hub_cache(sd, "vae/diffusion_pytorch_model.safetensors")
    hub_cache("Qwen/Qwen2.5-3B", "model-00001-of-00002.safetensors")
    assert check_references(refs, None, "paper", []) == []


# --------------------------------------------------------------------------- other pieces


def test_the_openai_captioner_needs_an_api_key():
    block = {
        "captioner": {
            "backend": "openai",
            "openai": {"base_url": "https://api.example.com/v1", "model": "m"},
        }
    }
    (finding,) = check_parameters({"synthesize": block}, credentials=[{"api_key": None}])
    assert finding.line() == (
        "synthesize.captioner.backend = openai (https://api.example.com/v1): no api_key in the "
        "credentials -> add `captioner: {api_key: ...}` to conf/local/credentials.yml"
    )
    assert not finding.download
    assert check_parameters({"synthesize": block}, credentials=[{"api_key": "k"}]) == []
    local = {
        "captioner": {
            "backend": "openai",
            "openai": {"base_url": "http://localhost:8000", "model": "m"},
        }
    }
    assert check_parameters({"synthesize": local}, credentials=[{}]) == []  # a keyless server
    manifest = {"captioner": {"backend": "manifest"}}
    assert check_parameters({"synthesize": manifest}, credentials=[{}]) == []


def test_the_fid_clip_judge_needs_its_packages_weights_and_clip(hub_cache, monkeypatch):
    import importlib.util

    evaluate = {"render_t2i": ".", "judge": "fid_clip"}
    monkeypatch.setattr(  # torchmetrics there, torch-fidelity not
        importlib.util, "find_spec", lambda n, *a: None if n == "torch_fidelity" else object()
    )
    lines = [f.line() for f in check_parameters({"evaluate": evaluate})]
    assert lines == [
        "evaluate.clip_model = openai/clip-vit-large-patch14: not a local directory and not in "
        "the Hugging Face cache -> `hf download openai/clip-vit-large-patch14`",
        "evaluate.judge = fid_clip: torch_fidelity not installed -> "
        "`pip install 'torchmetrics[image]' torch-fidelity`",
    ]
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: object())
    (weights,) = [f for f in check_parameters({"evaluate": evaluate}) if "Inception" in f.what]
    assert weights.download and "FrechetInceptionDistance" in weights.fix
    import torch.hub

    cached = Path(torch.hub.get_dir()) / "checkpoints" / preflight.INCEPTION_WEIGHTS
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"")
    hub_cache("openai/clip-vit-large-patch14")
    hub_cache("openai/clip-vit-large-patch14", "model.safetensors")
    assert check_parameters({"evaluate": evaluate}) == []
    assert check_parameters({"evaluate": {**evaluate, "judge": "pixels"}}) == []


def test_caption_source_and_the_published_checkpoint(tmp_path):
    (finding,) = check_parameters({"caption": {"source": None, "kind": "folder"}}, env="paper")
    assert finding.line() == (
        "caption.source: not set -> `kedro run --env paper --pipeline caption --params "
        "caption.source=PATH` (a folder of images or one image file)"
    )
    (finding,) = check_parameters({"caption": {"source": str(tmp_path / "no"), "kind": "folder"}})
    assert finding.problem == "no folder of images there"
    assert check_parameters({"caption": {"source": str(tmp_path), "kind": "folder"}}) == []
    (tmp_path / "photo.jpg").write_bytes(b"")  # one image file (issue 29)
    for kind in ("folder", "file"):
        source = {"source": str(tmp_path / "photo.jpg"), "kind": kind}
        assert check_parameters({"caption": source}) == []
    (finding,) = check_parameters({"caption": {"source": str(tmp_path), "kind": "file"}})
    assert finding.problem == "no image file there"
    (finding,) = check_parameters({"import_published": _imported()}, env="paper")
    assert finding.what == "import_published.checkpoint" and finding.problem == "not set"
    assert f"hf download {preflight.PUBLISHED_REPO}" in finding.fix
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"")
    assert check_parameters({"import_published": _imported(str(weights))}) == []


def test_each_key_is_looked_for_in_its_own_credentials_entry():
    """By catalog entry (as ``check`` passes them), a key for the judge or the answerer never
    stands in for the captioner's; an openai row of Table 1 reads its own entry or the
    captioner's, as its node does."""
    block = {
        "captioner": {
            "backend": "openai",
            "openai": {"base_url": "https://api.example.com/v1", "model": "m"},
        }
    }
    others = {
        "captioner_credentials": {"api_key": None},
        "rating_credentials": {"api_key": "judge-key"},
        "vqa_credentials": {"api_key": "answerer-key"},
    }
    (finding,) = check_parameters({"synthesize": block}, credentials=others)
    assert finding.what.startswith("synthesize.captioner.backend = openai")
    keyed = {**others, "captioner_credentials": {"api_key": "k"}}
    assert check_parameters({"synthesize": block}, credentials=keyed) == []
    evaluate = {
        "render_t2i": ".",
        "captioners": [
            {
                "kind": "openai",
                "name": "gpt4o",
                "openai": {"base_url": "https://x.example/v1", "model": "m"},
            }
        ],
    }
    (finding,) = check_parameters({"evaluate": evaluate}, credentials=others)
    assert "eval_captioners: {gpt4o: {api_key: ...}}" in finding.fix
    for given in (
        {"eval_captioner_credentials": {"gpt4o": {"api_key": "k"}}},
        {"captioner_credentials": {"api_key": "k"}},
    ):
        assert check_parameters({"evaluate": evaluate}, credentials={**others, **given}) == []
    wrong_row = {**others, "eval_captioner_credentials": {"claude": {"api_key": "k"}}}
    assert len(check_parameters({"evaluate": evaluate}, credentials=wrong_row)) == 1


def _judge(base_url="https://generativelanguage.googleapis.com/v1beta/openai", judge="vlm"):
    return {"judge": judge, "vlm": {"base_url": base_url, "model": "gemini-2.0-flash"}}


def _vqa(folder, base_url="https://api.deepseek.com/v1", shots=(0, 4), write=True):
    datasets = []
    for name in ("vqav2", "okvqa"):
        paths = {
            key: str(folder / f"{name}_{key}.json")
            for key in ("questions", "annotations", "train_questions", "train_annotations")
        }
        paths["train_captions"] = str(folder / "captions_train2014.json")
        if write:
            for path in paths.values():
                Path(path).write_text("{}")
        datasets.append({"name": name, **paths})
    return {
        "source": "files",
        "shots": list(shots),
        "datasets": datasets,
        "answerer": {"base_url": base_url, "model": "deepseek-chat"},
    }


def test_the_vlm_judge_and_the_answering_llm_need_their_own_keys(tmp_path):
    none = {"rating_credentials": {"api_key": None}, "vqa_credentials": {"api_key": None}}
    blocks = {"rating": _judge(), "vqa": _vqa(tmp_path)}
    assert [f.line() for f in check_parameters(blocks, credentials=none)] == [
        "rating.judge = vlm (https://generativelanguage.googleapis.com/v1beta/openai): no "
        "api_key in the credentials -> add `judge: {api_key: ...}` to "
        "conf/local/credentials.yml (or run without the VLM judge: `--params rating.judge=none`)",
        "vqa.answerer (https://api.deepseek.com/v1): no api_key in the credentials -> add "
        "`answerer: {api_key: ...}` to conf/local/credentials.yml",
    ]
    # each key in its own entry: the judge's does not serve the answerer, nor the reverse
    swapped = {"rating_credentials": {"api_key": None}, "vqa_credentials": {"api_key": "k"}}
    (finding,) = check_parameters(blocks, credentials=swapped)
    assert finding.what.startswith("rating.judge = vlm")
    keyed = {"rating_credentials": {"api_key": "j"}, "vqa_credentials": {"api_key": "a"}}
    assert check_parameters(blocks, credentials=keyed) == []
    # a server on this machine needs no key; no VLM judge, no shapes questions: nothing
    local = {
        "rating": _judge("http://127.0.0.1:8011/v1"),
        "vqa": _vqa(tmp_path, "http://localhost:8012/v1"),
    }
    assert check_parameters(local, credentials=none) == []
    quiet = {"rating": _judge(judge="rubric"), "vqa": {"source": "shapes", "answerer": None}}
    assert check_parameters(quiet, credentials=none) == []
    assert check_parameters(blocks) == []  # a run that takes no credentials: not checked


def test_table3s_files_must_be_there_before_the_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    local = "http://127.0.0.1:8011/v1"
    vqa = _vqa(Path("vqa"), local, write=False)
    lines = [f.line() for f in check_parameters({"vqa": vqa}, credentials={})]
    # two datasets, five files each (shots > 0 need the examples); one COCO captions file
    assert len(lines) == 2 * 5 - 1
    assert lines[0] == (
        "vqa.datasets[0].questions = vqa/vqav2_questions.json: not there -> download it "
        "(https://visualqa.org/download.html; docs/PAPER.md: Reproduce the paper's tables) or correct "
        "the path in conf (vqa.datasets[0].questions)"
    )
    assert "https://okvqa.allenai.org/download.html" in lines[5]
    assert lines[4].startswith(
        "vqa.datasets[0].train_captions, vqa.datasets[1].train_captions = "
        "vqa/captions_train2014.json: not there -> download COCO 2014's annotations "
        "(http://images.cocodataset.org/annotations/annotations_trainval2014.zip"
    )
    zero_shot = [f.what for f in check_parameters({"vqa": {**vqa, "shots": [0]}})]
    assert zero_shot == [
        "vqa.datasets[0].questions = vqa/vqav2_questions.json",
        "vqa.datasets[0].annotations = vqa/vqav2_annotations.json",
        "vqa.datasets[1].questions = vqa/okvqa_questions.json",
        "vqa.datasets[1].annotations = vqa/okvqa_annotations.json",
    ]
    (tmp_path / "vqa").mkdir()
    assert check_parameters({"vqa": _vqa(Path("vqa"), local)}) == []


def test_the_hook_checks_each_credentials_entry_it_hands_a_node(tmp_path, monkeypatch):
    """``check`` on a pipeline whose nodes take the judge's and the answerer's credentials:
    one message lists every gap, each key found only in its own entry."""
    monkeypatch.chdir(tmp_path)
    catalog = DataCatalog(
        datasets={
            "params:rating": MemoryDataset(_judge()),
            "params:vqa": MemoryDataset(_vqa(Path("vqa"), write=False)),
            "rating_credentials": CredentialsDataset(credentials={}),
            "vqa_credentials": CredentialsDataset(credentials={"api_key": "k"}),
        }
    )
    pipeline = Pipeline(
        [
            Node(_rate, ["params:rating", "rating_credentials"], "table2", name="judge"),
            Node(_answer, ["params:vqa", "vqa_credentials"], "table3", name="answer"),
        ]
    )
    findings = check(pipeline, catalog, {}, "paper")
    assert [f.what for f in findings][0] == (
        "rating.judge = vlm (https://generativelanguage.googleapis.com/v1beta/openai)"
    )
    assert len(findings) == 1 + 9 and not any("vqa.answerer" in f.what for f in findings)
    text = preflight.message(findings, "kedro run --env paper --pipeline evaluate", True)
    assert text.startswith(
        "`kedro run --env paper --pipeline evaluate` cannot start: 10 pieces are missing"
    )


# --------------------------------------------------------------------------- datasets


def _catalog(tmp_path):
    def model(name):
        return ModelDirectoryDataset(
            filepath=str(tmp_path / "data" / name),
            load_class="transformers.AutoTokenizer",
            version=Version(None, None),
        )

    return DataCatalog(
        datasets={
            "vlv_captioner": model("vlv_captioner"),
            "published_captioner": model("published_captioner"),
            # caption.model chooses one of these two (second entries for the same folders)
            "caption_trained_captioner": model("vlv_captioner"),
            "caption_published_captioner": model("published_captioner"),
            "embedding_cache": EmbeddingCacheDataset(path=str(tmp_path / "data/emb")),
            "embedding_cache_previous": EmbeddingCacheDataset(path=str(tmp_path / "data/emb")),
            "raw_images": ImageSourceDataset(kind="webdataset", path=str(tmp_path / "laion")),
            "captioner_credentials": CredentialsDataset(credentials={}),
            "handed_over": MemoryDataset(),
        }
    )


def _registry():
    stage2 = Pipeline([Node(_f, "raw_images", "vlv_captioner", name="train")])
    imported = Pipeline([Node(_f, "params:import_published", "published_captioner", name="imp")])
    synthesize = Pipeline(
        [Node(_f, ["raw_images", "embedding_cache_previous"], "embedding_cache", name="emb")]
    )
    return {
        "stage2": stage2,
        "import_published": imported,
        "synthesize": synthesize,
        "__default__": synthesize + stage2,  # composite pipelines are never named
    }


def test_missing_datasets_name_the_pipeline_that_writes_them(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    catalog = _catalog(tmp_path)
    producers = Producers(_registry(), catalog)
    choose = ["caption_trained_captioner", "caption_published_captioner", "params:caption"]
    pipeline = Pipeline(
        [
            Node(_f, [*choose, "handed_over"], "out", name="a"),
            Node(_f, ["raw_images", "captioner_credentials"], "pairs", name="b"),
            # the previous state of an output it extends: may well be empty
            Node(_f, ["pairs", "embedding_cache_previous"], "embedding_cache", name="c"),
        ]
    )
    blocks = {"caption": {"source": "x", "model": "trained"}}
    found = check_datasets(pipeline, catalog, producers, "paper", blocks)
    assert [f.line() for f in found] == [
        "caption_trained_captioner (data/vlv_captioner): no saved version -> "
        "`kedro run --env paper --pipeline stage2` (or `--params caption.model=published`, "
        "after `kedro run --env paper --pipeline import_published`)",
        "raw_images (laion): not found -> put img2dataset / webdataset .tar shards at laion, or "
        "point `raw_images` in the catalog at them",
    ]
    # the node reads only the model caption.model names
    blocks["caption"]["model"] = "published"
    found = check_datasets(pipeline, catalog, producers, "paper", blocks)
    assert found[0].line() == (
        "caption_published_captioner (data/published_captioner): no saved version -> "
        "`kedro run --env paper --pipeline import_published` (or `--params "
        "caption.model=trained`, after `kedro run --env paper --pipeline stage2`)"
    )
    assert len(found) == 2
    # a saved version is enough
    version = tmp_path / "data/published_captioner/2026-01-01T00.00.00.000Z/published_captioner"
    version.mkdir(parents=True)
    (version / "config.json").touch()
    assert [f.what for f in check_datasets(pipeline, catalog, producers, "paper", blocks)] == [
        "raw_images (laion)"
    ]


def test_the_embedding_cache_is_needed_unless_stage2_trains_on_pixels(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    catalog = _catalog(tmp_path)
    producers = Producers(_registry(), catalog)
    pipeline = Pipeline([Node(_f, ["embedding_cache", "params:stage2"], "x", name="train")])
    blocks = {"stage2": {"trainable": "projector+llm"}}
    (found,) = check_datasets(pipeline, catalog, producers, None, blocks)
    assert found.line() == (
        "embedding_cache (data/emb): not found -> `kedro run --pipeline synthesize`"
    )
    blocks = {"stage2": {"trainable": "projector+llm+encoder"}}
    assert check_datasets(pipeline, catalog, producers, None, blocks) == []


def test_producers_leave_out_composite_pipelines(tmp_path):
    producers = Producers(_registry(), _catalog(tmp_path))
    assert producers.of("vlv_captioner") == ["stage2"]
    assert producers.of("caption_trained_captioner") == ["stage2"]  # its folder
    assert producers.of("embedding_cache") == ["synthesize"]
    assert producers.of("nothing") == []


# --------------------------------------------------------------------------- provenance
# A model directory the run reads says what it was made for (models/provenance.py): the
# preflight compares that record (JSON only) with the run's parameters.

SD21 = "stabilityai/stable-diffusion-2-1-base"
PAPER_PARAMETERS = {
    "t2i": {"model": SD21},
    "stage1": {
        "encoder": {"backbone": "florence2", "num_queries": 77},
        "resolution": 384,
    },
    "stage2": {"resolution": 384, "llm": {"pretrained": "Qwen/Qwen2.5-3B"}},
    "caption": {"source": "photos", "model": "trained", "resolution": 384},
}
CHOOSE = ["caption_trained_captioner", "caption_published_captioner", "params:caption"]


@pytest.fixture(scope="module")
def shapes_dirs(tmp_path_factory):
    """A shapes-world captioner saved with its record and without (as before records)."""
    from shapes_captioner import TEACHER, TINY_QWEN2, save_captioner, shapes_captioner

    from vlv_pipeline.models.provenance import captioner_record

    folder = tmp_path_factory.mktemp("shapes")
    captioner = shapes_captioner()
    save_captioner(captioner, folder / "legacy" / "vlv_captioner")
    captioner.provenance = captioner_record(
        captioner,
        t2i=str(TEACHER),
        resolution=None,
        llm={"init": {"model_type": "qwen2", **TINY_QWEN2}},
        model="vlv_captioner",
    )
    save_captioner(captioner, folder / "recorded" / "vlv_captioner")
    return folder


def _provenance_catalog(tmp_path, shapes_dirs, which, parameters=PAPER_PARAMETERS):
    import shutil

    shutil.copytree(shapes_dirs / which / "vlv_captioner", tmp_path / "data/vlv_captioner")
    (tmp_path / "photos").mkdir()  # caption.source
    catalog = _catalog(tmp_path)
    catalog["parameters"] = MemoryDataset(parameters)
    catalog["params:caption"] = MemoryDataset(parameters["caption"])
    registry = {**_registry(), "vlv": _registry()["__default__"]}
    return catalog, registry


def test_a_model_made_for_another_setting_is_named_with_what_makes_the_right_one(
    tmp_path, monkeypatch, hub_cache, shapes_dirs
):
    monkeypatch.chdir(tmp_path)
    catalog, registry = _provenance_catalog(tmp_path, shapes_dirs, "recorded")
    pipeline = Pipeline([Node(_f, CHOOSE, "out", name="choose")])
    (finding,) = check(pipeline, catalog, registry, "paper")
    version = next((tmp_path / "data/vlv_captioner").iterdir()).name
    assert finding.mismatch and not finding.download
    assert finding.what == f"caption_trained_captioner (data/vlv_captioner, version {version})"
    assert finding.problem.startswith("trained for 32 px images against "), finding.problem
    assert (
        f"; this run captions at 384 px against {SD21}, with a florence2 encoder, 77 queries "
        "and LLM Qwen/Qwen2.5-3B" in finding.problem
    ), finding.problem
    assert "with a small encoder, 16 queries and a qwen2 LLM built from a config" in (
        finding.problem
    )
    assert finding.fix == (
        "`kedro run --env paper --pipeline vlv` (or `--params caption.model=published`, after "
        "`kedro run --env paper --pipeline import_published`)"
    )
    text = preflight.message([finding], "kedro run --env paper --pipeline caption", True)
    assert text.startswith(
        "`kedro run --env paper --pipeline caption` cannot start: 1 model was made for another "
        "setting (nothing was run).\n  - caption_trained_captioner"
    ), text
    missing = Finding("x", "not found", "make x")
    assert preflight.message([missing, finding], "kedro run", True).startswith(
        "`kedro run` cannot start: 1 piece is missing and 1 model was made for another setting"
    )


def _shapes_parameters():
    from shapes_captioner import TEACHER, TINY_QWEN2

    return {
        "t2i": {"model": str(TEACHER)},
        "stage1": {
            "encoder": {"backbone": "small", "num_queries": 16, "small": {"image_size": 32}},
            "resolution": None,
        },
        "stage2": {
            "resolution": None,
            "llm": {"init": {"model_type": "qwen2", **TINY_QWEN2}},
        },
        "caption": {"source": "photos", "model": "trained", "resolution": None},
    }


@pytest.mark.parametrize("which", ["recorded", "legacy"])
def test_a_captioner_made_for_this_setting_passes(
    tmp_path, monkeypatch, hub_cache, shapes_dirs, which, caplog
):
    """The shapes world's own run, its T2I named by another path: the fingerprint agrees (for
    a directory saved before records: its text encoder's and its LLM's configs agree)."""
    monkeypatch.chdir(tmp_path)
    shapes = _shapes_parameters()
    catalog, registry = _provenance_catalog(tmp_path, shapes_dirs, which, shapes)
    pipeline = Pipeline([Node(_f, CHOOSE, "out", name="choose")])
    assert check(pipeline, catalog, registry, None) == []
    if which == "legacy":  # nothing the run fixes is left unchecked: no warning on load
        checks = preflight.provenance_checks(
            pipeline, catalog, Producers(registry, catalog), None, {}, registry
        )
        _, probe = checks["caption_trained_captioner"]
        directory = next((tmp_path / "data/vlv_captioner").glob("*/vlv_captioner"))
        with caplog.at_level(logging.WARNING):
            assert probe.problem(directory) is None
        assert "could not be checked" not in caplog.text
        return
    # stage 2 changed its LLM since: only the captioner is stale, stage 2 remakes it
    shapes["stage2"]["llm"] = {"pretrained": "Qwen/Qwen2.5-0.5B"}
    catalog["parameters"] = MemoryDataset(shapes)
    (finding,) = check(pipeline, catalog, registry, None)
    assert finding.fix.startswith("`kedro run --pipeline stage2` (or"), finding.fix
    assert "LLM Qwen/Qwen2.5-0.5B" in finding.problem


def test_captioning_at_another_size_says_the_size_it_was_made_for(
    tmp_path, monkeypatch, hub_cache, shapes_dirs
):
    monkeypatch.chdir(tmp_path)
    shapes = _shapes_parameters()
    shapes["caption"]["resolution"] = 64
    catalog, registry = _provenance_catalog(tmp_path, shapes_dirs, "recorded", shapes)
    pipeline = Pipeline([Node(_f, CHOOSE, "out", name="choose")])
    (finding,) = check(pipeline, catalog, registry, None)
    assert finding.problem == "trained for 32 px images; this run captions at 64 px"
    assert finding.fix.startswith(
        "`kedro run --pipeline stage2` (or `--params caption.resolution=32`) (or `--params "
        "caption.model=published`"
    ), finding.fix


def test_a_directory_saved_before_records_is_judged_by_its_configs(
    tmp_path, monkeypatch, hub_cache, shapes_dirs
):
    monkeypatch.chdir(tmp_path)
    catalog, registry = _provenance_catalog(tmp_path, shapes_dirs, "legacy")
    pipeline = Pipeline([Node(_f, CHOOSE, "out", name="choose")])
    (finding,) = check(pipeline, catalog, registry, "paper")
    assert finding.mismatch
    assert finding.problem.startswith("trained for 32 px images, with a small encoder"), (
        finding.problem
    )
    assert "this run captions at 384 px, with a florence2 encoder and 77 queries" in finding.problem


def test_with_the_check_off_the_hook_still_tells_the_loader_what_to_expect(
    tmp_path, monkeypatch, hub_cache, shapes_dirs
):
    from vlv_pipeline.models.provenance_check import ProvenanceError

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("VLV_SKIP_PREFLIGHT", "1")
    catalog, registry = _provenance_catalog(tmp_path, shapes_dirs, "recorded")
    pipeline = Pipeline([Node(_f, CHOOSE, "out", name="choose")])
    PreflightHook(registry).before_pipeline_run(_run_params(), pipeline, catalog)
    with pytest.raises(DatasetError) as error:  # the catalog puts the dataset's name first
        catalog.load("caption_trained_captioner")
    assert isinstance(error.value.__cause__, ProvenanceError)
    assert str(error.value).startswith("caption_trained_captioner: data/vlv_captioner, version ")
    assert "this run captions at 384 px" in str(error.value)
    assert "-> `kedro run --env paper --pipeline vlv`" in str(error.value)


def test_the_hook_builds_each_models_check_once_for_the_loader_and_the_preflight(
    tmp_path, monkeypatch, hub_cache, shapes_dirs
):
    """Building the checks reads the T2I's configs (from the HF cache): once per run, and the
    preflight's finding comes from the very check the loader holds."""
    from vlv_pipeline.models import provenance, provenance_check

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("VLV_SKIP_PREFLIGHT", raising=False)
    catalog, registry = _provenance_catalog(tmp_path, shapes_dirs, "recorded")
    built = []
    real = provenance.wanted_settings

    def counted(*args, **kwargs):
        built.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(provenance, "wanted_settings", counted)
    attached = {}
    real_problem = provenance_check.ProvenanceCheck.problem

    def problem(self, directory, warn=True):
        attached.setdefault("preflight", []).append(self)
        return real_problem(self, directory, warn)

    monkeypatch.setattr(provenance_check.ProvenanceCheck, "problem", problem)
    pipeline = Pipeline([Node(_f, CHOOSE, "out", name="choose")])
    with pytest.raises(MissingComponentsError) as error:
        PreflightHook(registry).before_pipeline_run(_run_params(), pipeline, catalog)
    assert [f.mismatch for f in error.value.findings] == [True]
    assert len(built) == 1, built  # one caption side: one setting, built once
    loader = preflight_findings.dataset_in(catalog, "caption_trained_captioner")._provenance_check
    assert attached["preflight"] == [loader]


# --------------------------------------------------------------------------- the hook


def _run_params(env="paper", names=("caption",)):
    return {"env": env, "pipeline_names": list(names)}


def test_offline_every_gap_stops_the_run_in_one_message(tmp_path, monkeypatch, hub_cache):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    catalog = _catalog(tmp_path)
    catalog["params:t2i"] = MemoryDataset(_t2i("stabilityai/stable-diffusion-2-1-base"))
    pipeline = Pipeline([Node(_with_t2i, ["vlv_captioner", "params:t2i"], "out", name="a")])
    with pytest.raises(MissingComponentsError) as error:
        PreflightHook(_registry()).before_pipeline_run(_run_params(), pipeline, catalog)
    assert str(error.value) == (
        "`kedro run --env paper --pipeline caption` cannot start: 2 pieces are missing "
        "(nothing was run).\n"
        "  - vlv_captioner (data/vlv_captioner): no saved version -> "
        "`kedro run --env paper --pipeline stage2`\n"
        "  - t2i.model = stabilityai/stable-diffusion-2-1-base: not a local directory and not "
        "in the Hugging Face cache -> `hf download stabilityai/stable-diffusion-2-1-base`\n"
        "The hub is offline (HF_HUB_OFFLINE=1): download where the network is reachable, or "
        "unset HF_HUB_OFFLINE to let the run download."
    )
    assert isinstance(error.value, RuntimeError) and isinstance(error.value, click.ClickException)
    assert len(error.value.findings) == 2


def test_online_downloads_are_announced_and_the_run_goes_on(
    tmp_path, monkeypatch, hub_cache, caplog
):
    from huggingface_hub import constants

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    catalog = _catalog(tmp_path)
    catalog["params:t2i"] = MemoryDataset(_t2i("stabilityai/stable-diffusion-2-1-base"))
    pipeline = Pipeline([Node(_t2i_only, "params:t2i", "out", name="a")])
    with caplog.at_level(logging.INFO, logger="vlv_pipeline.preflight"):
        PreflightHook(_registry()).before_pipeline_run(_run_params(), pipeline, catalog)
    assert "will download: t2i.model = stabilityai/stable-diffusion-2-1-base" in caplog.text
    # what no download provides still stops it, online too
    pipeline = Pipeline([Node(_with_t2i, ["vlv_captioner", "params:t2i"], "out", name="a")])
    with pytest.raises(MissingComponentsError) as error:
        PreflightHook(_registry()).before_pipeline_run(_run_params(), pipeline, catalog)
    assert [f.what for f in error.value.findings] == ["vlv_captioner (data/vlv_captioner)"]


def test_the_check_can_be_switched_off(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("VLV_SKIP_PREFLIGHT", "1")
    pipeline = Pipeline([Node(_f, "vlv_captioner", "out", name="a")])
    PreflightHook(_registry()).before_pipeline_run(_run_params(), pipeline, _catalog(tmp_path))


def test_only_rank_0_prints_and_the_ranks_agree(monkeypatch, capsys):
    error = MissingComponentsError("x: missing")
    monkeypatch.setenv("RANK", "3")
    error.show()
    assert capsys.readouterr().err == ""
    monkeypatch.setenv("RANK", "0")
    error.show()
    assert "Error: x: missing" in capsys.readouterr().err

    a, b = Finding("a", "gone", "make a"), Finding("b", "gone", "make b", download=True)
    every = {0: [a], 1: [a, b], 2: [a, b], 3: [a]}
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setattr(
        "vlv_pipeline.distributed.each_rank", lambda work: [every[r] for r in range(4)]
    )
    assert preflight_findings.every_rank([a]) == [
        a,
        Finding("b (ranks 1-2)", "gone", "make b", True),
    ]


# --------------------------------------------------------------------------- the project


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A copy of the project with no data, an empty Hugging Face cache and torch hub."""
    root = copy_project(tmp_path_factory.mktemp("preflight") / "project")
    (root / "conf/local").mkdir()
    caches = tmp_path_factory.mktemp("caches")
    env = {
        **os.environ,
        "KEDRO_DISABLE_TELEMETRY": "true",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_HUB_CACHE": str(caches / "hf"),
        "HF_HOME": str(caches / "hf_home"),
        "TORCH_HOME": str(caches / "torch"),
    }
    env.pop("VLV_SKIP_PREFLIGHT", None)
    return root, env


def _kedro_run(project, *args):
    root, env = project
    start = time.perf_counter()
    run = subprocess.run(
        [KEDRO, "run", "--env", "paper", *args],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    return run, run.stdout + run.stderr, time.perf_counter() - start


def test_a_paper_caption_run_without_a_captioner_says_what_is_missing(project):
    run, out, seconds = _kedro_run(project, "--pipeline", "caption")
    assert run.returncode == 1, out[-3000:]
    assert "Traceback" not in out and "Did not find any versions" not in out, out[-3000:]
    message = out[out.index("Error: ") :]
    assert message.startswith(
        "Error: `kedro run --env paper --pipeline caption` cannot start: 2 pieces are missing"
    )
    assert (
        "captioner (data/paper/06_models/vlv_captioner): no saved version -> "
        "`kedro run --env paper --pipeline stage2`" in message
    )
    if "caption_trained_captioner" in message:  # caption.model chooses the captioner
        assert (
            "(or `--params caption.model=published`, after `kedro run --env paper --pipeline "
            "import_published`)" in message
        )
    assert "caption.source: not set" in message
    assert not (project[0] / "data").exists()  # nothing ran, nothing was written
    print(f"\n{message}\n(kedro run took {seconds:.1f} s)")


def test_a_paper_run_with_nothing_downloaded_lists_everything(project):
    run, out, seconds = _kedro_run(project, "--pipelines", "vlv,import_published")
    assert run.returncode == 1, out[-3000:]
    assert "Traceback" not in out, out[-3000:]
    message = out[out.index("Error: ") :]
    for piece in (
        "raw_images (data/01_raw/laion): not found -> put img2dataset",
        "= stabilityai/stable-diffusion-2-1-base: not a local directory and not in the Hugging "
        "Face cache -> `hf download stabilityai/stable-diffusion-2-1-base`",
        "t2i.model",  # the one key naming it (the cache's VAE and every stage read it)
        "stage2.llm.pretrained",
        "`hf download microsoft/Florence-2-large`",
        "`hf download Qwen/Qwen2.5-3B`",
        "evaluate.render_t2i = stabilityai/stable-diffusion-3.5-medium",
        "evaluate.clip_model = openai/clip-vit-large-patch14",
        "evaluate.judge = fid_clip",
        "no api_key in the credentials -> add `captioner: {api_key: ...}`",
        "import_published.checkpoint: not set",
        "The hub is offline (HF_HUB_OFFLINE=1)",
    ):
        assert piece in message, message
    assert message.count("hf download stabilityai/stable-diffusion-2-1-base") == 1  # one line
    print(f"\n{message}\n(kedro run took {seconds:.1f} s)")


def test_in_a_session_the_default_run_passes_without_reading_weights_and_the_paper_run_stops(
    project,
):
    """The preflight reads configs and records only: no weights file is opened (what keeps it
    quick; its speed itself is not timed here, the machines differ)."""
    import safetensors.torch
    import torch
    from kedro.framework.project import pipelines
    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project

    root, _ = project
    cwd = os.getcwd()
    os.chdir(root)
    try:
        bootstrap_project(root)
        with KedroSession.create(project_path=root) as session:
            catalog = session.load_context().catalog
            opened = []
            with pytest.MonkeyPatch.context() as patch:
                for module, name in (
                    (torch, "load"),
                    (safetensors.torch, "load_file"),
                    (safetensors, "safe_open"),
                ):
                    real = getattr(module, name)

                    def spy(*args, _real=real, _name=name, **kwargs):
                        opened.append((_name, args[:1]))
                        return _real(*args, **kwargs)

                    patch.setattr(module, name, spy)
                findings = check(pipelines["__default__"], catalog, pipelines, "local")
        assert findings == []
        assert opened == [], opened
        with KedroSession.create(project_path=root, env="paper") as session:
            with pytest.raises(MissingComponentsError, match="data/paper/06_models/vlv_captioner"):
                session.run(pipeline_names=["caption"])
    finally:
        os.chdir(cwd)
    assert not (root / "data").exists()


@pytest.mark.slow
def test_under_accelerate_launch_rank_0_says_it_once_and_every_rank_stops(project):
    root, env = project
    accelerate = str(Path(sys.executable).with_name("accelerate"))
    config = Path(__file__).resolve().parents[1] / "conf/accelerate/cpu_2proc.yaml"
    run = subprocess.run(
        [accelerate, "launch", "--config_file", str(config), "-m", "kedro", "run"]
        + ["--env", "paper", "--pipeline", "caption"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    out = run.stdout + run.stderr
    assert run.returncode != 0
    assert out.count("cannot start: 2 pieces are missing") == 1, out[-3000:]
    assert "captioner (data/paper/06_models/vlv_captioner): no saved version" in out
