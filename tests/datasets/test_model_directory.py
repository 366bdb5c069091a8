"""Tests for ``ModelDirectoryDataset`` (tiny models, local files, seconds each)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from kedro.io.core import DatasetError, Version, VersionNotFoundError, generate_timestamp

from vlv_pipeline.datasets import ModelDirectoryDataset
from vlv_pipeline.datasets.model_directory import _takes_use_safetensors

CLIP = "transformers.CLIPTextModel"


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


def tiny_clip(seed: int = 0) -> Any:
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    config = CLIPTextConfig(
        vocab_size=64,
        hidden_size=16,
        intermediate_size=32,
        projection_dim=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        max_position_embeddings=16,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
    )
    return CLIPTextModel(config)


def tiny_vae() -> Any:
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        block_out_channels=(8,),
        down_block_types=("DownEncoderBlock2D",),
        up_block_types=("UpDecoderBlock2D",),
        layers_per_block=1,
        norm_num_groups=4,
        latent_channels=4,
        sample_size=16,
    )


def tiny_tokenizer() -> Any:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["<pad>", "<unk>", "<bos>", "<eos>", "a", "red", "blue", "circle", "square"]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        unk_token="<unk>",
        bos_token="<bos>",
        eos_token="<eos>",
    )


def assert_same_state(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def crash_after_writing(directory: str, **_: Any) -> None:
    (Path(directory) / "config.json").write_text("{}")
    (Path(directory) / "model.safetensors").write_bytes(b"half")
    raise RuntimeError("simulated crash")


@pytest.fixture
def filepath_model(tmp_path: Path) -> str:
    return (tmp_path / "06_models" / "clip").as_posix()


@pytest.fixture
def dataset(filepath_model: str) -> ModelDirectoryDataset:
    return ModelDirectoryDataset(filepath=filepath_model, load_class=CLIP)


@pytest.fixture
def load_version(request: pytest.FixtureRequest) -> str | None:
    return getattr(request, "param", None)


@pytest.fixture
def save_version() -> str:
    return generate_timestamp()


@pytest.fixture
def versioned_dataset(
    filepath_model: str, load_version: str | None, save_version: str
) -> ModelDirectoryDataset:
    return ModelDirectoryDataset(
        filepath=filepath_model, load_class=CLIP, version=Version(load_version, save_version)
    )


class TestModelDirectoryDataset:
    def test_save_and_load(self, dataset: ModelDirectoryDataset, filepath_model: str) -> None:
        model = tiny_clip()
        dataset.save(model)
        assert (Path(filepath_model) / "config.json").is_file()
        assert (Path(filepath_model) / "model.safetensors").is_file()
        reloaded = dataset.load()
        assert type(reloaded) is type(model)
        assert_same_state(model, reloaded)

    def test_save_and_load_vae(self, tmp_path: Path) -> None:
        ds = ModelDirectoryDataset(filepath=tmp_path / "vae", load_class="diffusers.AutoencoderKL")
        vae = tiny_vae()
        ds.save(vae)
        assert (tmp_path / "vae" / "diffusion_pytorch_model.safetensors").is_file()
        assert_same_state(vae, ds.load())

    def test_save_and_load_tokenizer(self, tmp_path: Path) -> None:
        ds = ModelDirectoryDataset(
            filepath=tmp_path / "tok", load_class="transformers.AutoTokenizer"
        )
        tok = tiny_tokenizer()
        ds.save(tok)
        reloaded = ds.load()
        text = "a blue square red circle"
        assert reloaded(text)["input_ids"] == tok(text)["input_ids"] == [4, 6, 8, 5, 7]

    def test_save_and_load_pipeline(self, tmp_path: Path) -> None:
        from diffusers import DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel

        unet = UNet2DConditionModel(
            sample_size=8,
            block_out_channels=(8, 16),
            layers_per_block=1,
            norm_num_groups=4,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            cross_attention_dim=16,
            attention_head_dim=2,
        )
        pipe = StableDiffusionPipeline(
            vae=tiny_vae(),
            text_encoder=tiny_clip(),
            tokenizer=tiny_tokenizer(),
            unet=unet,
            scheduler=DDPMScheduler(num_train_timesteps=10, steps_offset=1, clip_sample=False),
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
        ds = ModelDirectoryDataset(
            filepath=tmp_path / "teacher", load_class="diffusers.StableDiffusionPipeline"
        )
        ds.save(pipe)
        assert (tmp_path / "teacher" / "model_index.json").is_file()
        reloaded = ds.load()
        assert type(reloaded) is StableDiffusionPipeline
        assert_same_state(pipe.unet, reloaded.unet)
        assert reloaded.scheduler.config.num_train_timesteps == 10

    def test_load_args_dtype_names(self, tmp_path: Path) -> None:
        ds = ModelDirectoryDataset(
            filepath=tmp_path / "clip", load_class=CLIP, load_args={"dtype": "bfloat16"}
        )
        ds.save(tiny_clip())
        assert {p.dtype for p in ds.load().parameters()} == {torch.bfloat16}
        ds = ModelDirectoryDataset(
            filepath=tmp_path / "vae",
            load_class="diffusers.AutoencoderKL",
            load_args={"torch_dtype": "float16"},
        )
        ds.save(tiny_vae())
        assert {p.dtype for p in ds.load().parameters()} == {torch.float16}

    def test_exists(self, dataset: ModelDirectoryDataset) -> None:
        assert not dataset.exists()
        dataset.save(tiny_clip())
        assert dataset.exists()

    def test_describe(self, dataset: ModelDirectoryDataset, filepath_model: str) -> None:
        description = str(dataset)
        assert "ModelDirectoryDataset" in description
        assert CLIP in description and filepath_model in description

    def test_preview(self, dataset: ModelDirectoryDataset) -> None:
        dataset.save(tiny_clip())
        preview = dataset.preview()
        assert set(preview) == {"index", "columns", "data"}
        assert preview["columns"] == ["source", "name", "value"]
        assert len(preview["index"]) == len(preview["data"]) > 2
        assert all(len(row) == 3 for row in preview["data"])
        assert ["config.json", "hidden_size", 16] in preview["data"]
        sizes = {row[1]: row[2] for row in preview["data"] if row[0] == "file"}
        assert sizes["model.safetensors"] > 1000
        assert len(dataset.preview(nrows=2)["data"]) == 2

    def test_overwrite_replaces_atomically(
        self, dataset: ModelDirectoryDataset, filepath_model: str
    ) -> None:
        dataset.save(tiny_clip(seed=0))
        new = tiny_clip(seed=1)
        dataset.save(new)
        assert_same_state(new, dataset.load())
        assert sorted(p.name for p in Path(filepath_model).parent.iterdir()) == ["clip"]

    def test_crash_mid_save_keeps_previous(
        self, dataset: ModelDirectoryDataset, filepath_model: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        old = tiny_clip(seed=0)
        dataset.save(old)
        new = tiny_clip(seed=1)
        monkeypatch.setattr(new, "save_pretrained", crash_after_writing)
        with pytest.raises(DatasetError, match="simulated crash"):
            dataset.save(new)
        assert_same_state(old, dataset.load())
        assert sorted(p.name for p in Path(filepath_model).parent.iterdir()) == ["clip"]

    def test_save_refuses_pickle_weights(
        self, dataset: ModelDirectoryDataset, filepath_model: str
    ) -> None:
        class PickleSaver:
            def save_pretrained(self, directory: str) -> None:
                (Path(directory) / "config.json").write_text("{}")
                (Path(directory) / "pytorch_model.bin").write_bytes(b"pickle")

        with pytest.raises(DatasetError, match=r"pickle files \['pytorch_model.bin'\]"):
            dataset.save(PickleSaver())
        assert not Path(filepath_model).parent.exists() or not any(
            Path(filepath_model).parent.iterdir()
        )

    def test_load_refuses_pickle_weights(self, tmp_path: Path) -> None:
        (tmp_path / "m" / "sub").mkdir(parents=True)
        (tmp_path / "m" / "config.json").write_text("{}")
        (tmp_path / "m" / "sub" / "weights.ckpt").write_bytes(b"pickle")
        ds = ModelDirectoryDataset(filepath=tmp_path / "m", load_class=CLIP)
        with pytest.raises(DatasetError, match=r"pickle weights \['sub/weights.ckpt'\]"):
            ds.load()

    def test_load_missing_directory(
        self, dataset: ModelDirectoryDataset, filepath_model: str
    ) -> None:
        with pytest.raises(DatasetError, match=f"'{filepath_model}' does not exist.*Run the"):
            dataset.load()

    def test_load_not_a_model_directory(self, tmp_path: Path) -> None:
        (tmp_path / "m").mkdir()
        (tmp_path / "m" / "notes.txt").write_text("hi")
        ds = ModelDirectoryDataset(filepath=tmp_path / "m", load_class=CLIP)
        with pytest.raises(DatasetError, match="is not a save_pretrained directory.*notes.txt"):
            ds.load()
        assert not ds.exists()

    def test_save_object_without_save_pretrained(self, dataset: ModelDirectoryDataset) -> None:
        with pytest.raises(DatasetError, match="save_pretrained method; got dict"):
            dataset.save({"weights": 1})

    def test_bad_load_class(self, tmp_path: Path) -> None:
        with pytest.raises(DatasetError, match="dotted import path"):
            ModelDirectoryDataset(filepath=tmp_path / "m", load_class="AutoencoderKL")
        ds = ModelDirectoryDataset(filepath=tmp_path / "m", load_class="diffusers.NoSuchModel")
        ds.save(tiny_clip())
        with pytest.raises(DatasetError, match="Cannot import load_class 'diffusers.NoSuchModel'"):
            ds.load()

    def test_remote_protocol_refused(self) -> None:
        with pytest.raises(DatasetError, match="local paths only"):
            ModelDirectoryDataset(filepath="s3://bucket/model", load_class=CLIP)

    def test_use_safetensors_only_for_weight_loaders(self) -> None:
        import diffusers
        import transformers

        assert _takes_use_safetensors(diffusers.AutoencoderKL)
        assert _takes_use_safetensors(diffusers.StableDiffusionPipeline)
        assert _takes_use_safetensors(transformers.CLIPTextModel)
        assert _takes_use_safetensors(transformers.AutoModelForCausalLM)
        assert not _takes_use_safetensors(transformers.AutoTokenizer)
        assert not _takes_use_safetensors(diffusers.DDPMScheduler)


class TestModelDirectoryDatasetVersioned:
    def test_version_str_repr(self, filepath_model: str, save_version: str) -> None:
        ds = ModelDirectoryDataset(filepath=filepath_model, load_class=CLIP)
        ds_versioned = ModelDirectoryDataset(
            filepath=filepath_model, load_class=CLIP, version=Version(None, save_version)
        )
        assert "version=" not in str(ds)
        assert f"version=Version(load=None, save='{save_version}')" in str(ds_versioned)

    def test_save_and_load(
        self, versioned_dataset: ModelDirectoryDataset, filepath_model: str, save_version: str
    ) -> None:
        model = tiny_clip()
        versioned_dataset.save(model)
        assert (Path(filepath_model) / save_version / "clip" / "config.json").is_file()
        assert_same_state(model, versioned_dataset.load())
        assert versioned_dataset.exists()

    def test_two_saves_load_latest(self, filepath_model: str) -> None:
        first, second = tiny_clip(seed=0), tiny_clip(seed=1)
        v1, v2 = "2025-01-01T00.00.00.000Z", "2025-01-02T00.00.00.000Z"
        ModelDirectoryDataset(
            filepath=filepath_model, load_class=CLIP, version=Version(None, v1)
        ).save(first)
        ModelDirectoryDataset(
            filepath=filepath_model, load_class=CLIP, version=Version(None, v2)
        ).save(second)
        latest = ModelDirectoryDataset(
            filepath=filepath_model, load_class=CLIP, version=Version(None, None)
        )
        assert latest.list_versions(full_path=False) == [v2, v1]
        assert_same_state(second, latest.load())
        pinned = ModelDirectoryDataset(
            filepath=filepath_model, load_class=CLIP, version=Version(v1, None)
        )
        assert_same_state(first, pinned.load())

    def test_save_same_version_twice_raises(
        self, versioned_dataset: ModelDirectoryDataset, filepath_model: str, save_version: str
    ) -> None:
        model = tiny_clip()
        versioned_dataset.save(model)
        with pytest.raises(DatasetError, match="must not exist if versioning is enabled"):
            versioned_dataset.save(tiny_clip(seed=1))
        assert_same_state(model, versioned_dataset.load())

    def test_no_versions(self, versioned_dataset: ModelDirectoryDataset) -> None:
        with pytest.raises(DatasetError, match="Did not find any versions"):
            versioned_dataset.load()
        assert not versioned_dataset.exists()

    def test_crash_mid_save_leaves_no_version(
        self,
        versioned_dataset: ModelDirectoryDataset,
        filepath_model: str,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        model = tiny_clip()
        monkeypatch.setattr(model, "save_pretrained", crash_after_writing)
        with pytest.raises(DatasetError, match="simulated crash"):
            versioned_dataset.save(model)
        assert list(Path(filepath_model).iterdir()) == []  # no version, no tmp dir
        assert not versioned_dataset.exists()
        with pytest.raises(VersionNotFoundError):
            versioned_dataset.load()

    def test_stale_tmp_dir_is_not_a_version(
        self, versioned_dataset: ModelDirectoryDataset, filepath_model: str, save_version: str
    ) -> None:
        # What a killed process leaves behind: a hidden, half-written directory.
        stale = Path(filepath_model) / f".clip.tmp-{save_version}"
        (stale / "clip").mkdir(parents=True)
        (stale / "config.json").write_text("{}")
        (stale / "clip" / "config.json").write_text("{}")
        assert versioned_dataset.list_versions() == []
        assert not versioned_dataset.exists()
        model = tiny_clip()
        versioned_dataset.save(model)
        assert_same_state(model, versioned_dataset.load())

    @pytest.mark.parametrize("load_version", ["2025-01-01T00.00.00.000Z"], indirect=True)
    def test_load_missing_pinned_version(
        self, versioned_dataset: ModelDirectoryDataset, load_version: str
    ) -> None:
        with pytest.raises(DatasetError, match=f"{load_version}/clip' does not exist"):
            versioned_dataset.load()


# --------------------------------------------------------------------------- damaged weights


def test_a_truncated_safetensors_file_is_refused_by_name(tmp_path: Path) -> None:
    """transformers' own error ("Error while deserializing header") never says which file."""
    from vlv_pipeline.models.tensor_files import DamagedWeightsError

    ds = ModelDirectoryDataset(filepath=tmp_path / "clip", load_class=CLIP)
    ds.save(tiny_clip())
    weights = tmp_path / "clip" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # cut short, as by a full disk or a copy
    with pytest.raises(DatasetError) as error:  # Kedro wraps what a load raises
        ds.load()
    assert isinstance(error.value.__cause__, DamagedWeightsError)
    assert str(weights) in str(error.value)
    assert "make it again with the pipeline that wrote it" in str(error.value)


# --------------------------------------------------------------------------- provenance
# What a model directory was made for (models/provenance.py): a loader told what this run
# expects refuses a model made for another setting, naming what differs; a directory saved
# before models recorded it is judged by what its own configs say, and accepted with a
# warning naming what could not be checked.

SD21 = "stabilityai/stable-diffusion-2-1-base"


def _shapes_captioner_dir(tmp_path: Path, *, record: bool = True) -> Path:
    from shapes_captioner import TEACHER_REF, TINY_QWEN2, save_captioner, shapes_captioner

    from vlv_pipeline.models.provenance import captioner_record

    captioner = shapes_captioner()
    if record:
        captioner.provenance = captioner_record(
            captioner,
            t2i=TEACHER_REF,
            resolution=None,
            llm={"init": {"model_type": "qwen2", **TINY_QWEN2}},
            model="vlv_captioner",
        )
    save_captioner(captioner, tmp_path / "vlv_captioner")
    return tmp_path / "vlv_captioner"


def _captioner_dataset(folder: Path, expect: dict | None) -> ModelDirectoryDataset:
    """The captioner's dataset, told (as the preflight hook tells it) what the run expects."""
    from vlv_pipeline.models.provenance_check import ProvenanceCheck

    dataset = ModelDirectoryDataset(
        filepath=str(folder),
        load_class="vlv_pipeline.models.captioner.VLVCaptioner",
        version=Version(None, None),
    )
    if expect is not None:
        dataset.check_provenance_with(ProvenanceCheck(str(folder), settings={"*": expect}))
    return dataset


def test_the_captioner_directory_records_what_it_was_made_for(tmp_path: Path) -> None:
    import json

    from shapes_captioner import TEACHER, TEACHER_REF

    from vlv_pipeline.models.provenance import RECORD
    from vlv_pipeline.models.provenance_fingerprints import t2i_fingerprint

    folder = _shapes_captioner_dir(tmp_path)
    version = next(folder.glob(f"*/vlv_captioner/{RECORD}"))
    record = json.loads(version.read_text())
    assert record["model"] == "vlv_captioner" and record["made_by"] == "stage2"
    assert record["t2i"] == TEACHER_REF
    assert record["t2i_fingerprint"] == t2i_fingerprint(TEACHER)["fingerprint"]
    assert record["t2i_fingerprint"] is not None
    assert (record["encoder"], record["resolution"]) == ("small", 32)
    assert (record["num_queries"], record["embedding_width"]) == (16, 64)
    assert record["llm"] == "a qwen2 LLM built from a config" and record["llm_fingerprint"]
    loaded = _captioner_dataset(folder, None).load()
    assert loaded.provenance == record  # the record travels with the loaded model


def test_a_loader_refuses_a_model_made_for_another_setting(tmp_path: Path) -> None:
    from vlv_pipeline.errors import UserError
    from vlv_pipeline.models.provenance_check import ProvenanceError

    folder = _shapes_captioner_dir(tmp_path)
    paper = {"t2i": SD21, "resolution": 384, "encoder": "florence2", "num_queries": 77}
    with pytest.raises(ProvenanceError) as error:
        _captioner_dataset(folder, paper).load()
    assert isinstance(error.value, UserError)
    message = str(error.value)
    for piece in (
        "trained for 32 px images against src/vlv_pipeline/assets/teacher",
        f"this run reads it at 384 px against {SD21}",
        "a small encoder",
        "16 queries",
        "a florence2 encoder",
        "77 queries",
    ):
        assert piece in message, message
    # the same setting, the T2I named by another path (moved): its fingerprint agrees
    from shapes_captioner import TEACHER

    same = {"t2i": str(TEACHER.resolve()), "resolution": 32, "encoder": "small"}
    assert _captioner_dataset(folder, same).load().provenance["resolution"] == 32


def test_a_directory_without_a_record_is_judged_by_its_configs(tmp_path: Path) -> None:
    """Saved before models recorded their setting: the encoder's and text encoder's configs
    still say the size, the queries and the text encoder; a mismatch there is refused."""
    from vlv_pipeline.models.provenance import RECORD
    from vlv_pipeline.models.provenance_check import ProvenanceError

    folder = _shapes_captioner_dir(tmp_path, record=False)
    assert not list(folder.glob(f"*/*/{RECORD}"))
    with pytest.raises(ProvenanceError, match="32 px images.*384 px"):
        _captioner_dataset(folder, {"t2i": SD21, "resolution": 384}).load()


def test_a_directory_without_a_record_is_accepted_with_a_warning(tmp_path: Path, caplog) -> None:
    import logging

    folder = _shapes_captioner_dir(tmp_path, record=False)
    with caplog.at_level(logging.WARNING):
        loaded = _captioner_dataset(folder, {"t2i": SD21, "resolution": 32}).load()
    assert loaded.provenance is None
    warning = caplog.text
    assert "no provenance.json" in warning and "could not be checked" in warning, warning
    assert f"the T2I model ({SD21})" in warning, warning
    assert "checked: 32 px images" in warning, warning  # what its configs could tell
