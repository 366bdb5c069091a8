"""Tests for ``vlv_pipeline.models.registry``: tiny models, offline, seconds each."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from pydantic import ValidationError
from tiny_configs import tiny_florence

from vlv_pipeline.models.registry import KINDS, load_component, load_processor
from vlv_pipeline.params.components import ComponentSpec

TINY_INIT: dict[str, dict[str, Any]] = {
    "vae": {
        "in_channels": 3,
        "out_channels": 3,
        "latent_channels": 4,
        "block_out_channels": [8],
        "down_block_types": ["DownEncoderBlock2D"],
        "up_block_types": ["UpDecoderBlock2D"],
        "layers_per_block": 1,
        "norm_num_groups": 4,
        "sample_size": 16,
    },
    "unet": {
        "sample_size": 8,
        "in_channels": 4,
        "out_channels": 4,
        "block_out_channels": [8, 16],
        "layers_per_block": 1,
        "norm_num_groups": 4,
        "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D"],
        "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D"],
        "cross_attention_dim": 16,
        "attention_head_dim": 2,
    },
    "scheduler": {"_class_name": "DDIMScheduler", "num_train_timesteps": 10},
    "text_encoder": {
        "vocab_size": 64,
        "hidden_size": 16,
        "intermediate_size": 32,
        "projection_dim": 16,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "max_position_embeddings": 16,
        "pad_token_id": 1,
        "bos_token_id": 0,
        "eos_token_id": 2,
    },
    "causal_lm": {
        "model_type": "qwen2",
        "vocab_size": 64,
        "hidden_size": 16,
        "intermediate_size": 32,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "max_position_embeddings": 32,
    },
    "florence2": tiny_florence(),
    "t5_encoder": {
        "vocab_size": 64,
        "d_model": 16,
        "d_kv": 8,
        "d_ff": 32,
        "num_layers": 1,
        "num_heads": 2,
    },
    "sd3_transformer": {
        "sample_size": 8,
        "patch_size": 2,
        "in_channels": 16,
        "out_channels": 16,
        "num_layers": 1,
        "attention_head_dim": 8,
        "num_attention_heads": 2,
        "joint_attention_dim": 32,
        "caption_projection_dim": 16,
        "pooled_projection_dim": 32,
        "pos_embed_max_size": 8,
    },
    "flux_transformer": {
        "in_channels": 64,
        "num_layers": 1,
        "num_single_layers": 1,
        "attention_head_dim": 8,
        "num_attention_heads": 2,
        "joint_attention_dim": 32,
        "pooled_projection_dim": 16,
        "axes_dims_rope": [2, 2, 4],
    },
}
TINY_INIT["text_encoder_with_projection"] = TINY_INIT["text_encoder"]
MODEL_KINDS = [
    "vae",
    "unet",
    "text_encoder",
    "text_encoder_with_projection",
    "t5_encoder",
    "sd3_transformer",
    "flux_transformer",
    "causal_lm",
    "florence2",
]


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No test may reach the hub: offline flags on, an empty HF cache."""
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


def make_tokenizer_dir(path: Path) -> Path:
    """A word-level tokenizer saved with save_pretrained (like the project's own)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["<pad>", "<unk>", "<bos>", "<eos>", "a", "red", "blue", "circle", "square"]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        unk_token="<unk>",
        bos_token="<bos>",
        eos_token="<eos>",
    )
    fast.save_pretrained(path)
    return path


def assert_same_state(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ----------------------------------------------------------------------- round trips


@pytest.mark.parametrize("kind", MODEL_KINDS)
def test_model_round_trip(kind: str, tmp_path: Path) -> None:
    model = load_component(kind, {"init": TINY_INIT[kind]})
    assert n_params(model) < 1_000_000
    model.save_pretrained(tmp_path / kind)
    loaded = load_component(kind, {"pretrained": str(tmp_path / kind)})
    assert type(loaded) is type(model)
    assert_same_state(model, loaded)


def test_init_config_values_are_used() -> None:
    vae = load_component("vae", {"init": TINY_INIT["vae"]})
    assert list(vae.config.block_out_channels) == [8]
    clip = load_component("text_encoder", {"init": TINY_INIT["text_encoder"]})
    assert clip.config.hidden_size == 16 and clip.config.eos_token_id == 2
    lm = load_component("causal_lm", {"init": TINY_INIT["causal_lm"]})
    assert type(lm).__name__ == "Qwen2ForCausalLM" and lm.config.num_key_value_heads == 1
    flo = load_component("florence2", {"init": TINY_INIT["florence2"]})
    assert type(flo).__name__ == "Florence2ForConditionalGeneration"
    assert flo.config.text_config.d_model == 32
    assert list(flo.config.vision_config.embed_dim) == [16, 32]


def test_scheduler_round_trip(tmp_path: Path) -> None:
    sched = load_component("scheduler", {"init": TINY_INIT["scheduler"]})
    assert type(sched).__name__ == "DDIMScheduler"
    sched.save_pretrained(tmp_path / "scheduler")
    loaded = load_component("scheduler", {"pretrained": str(tmp_path / "scheduler")})
    assert type(loaded) is type(sched)
    assert loaded.config.num_train_timesteps == 10
    public = lambda config: {k: v for k, v in config.items() if not k.startswith("_")}  # noqa: E731
    assert public(loaded.config) == public(sched.config)


def test_scheduler_default_class_and_subfolder(tmp_path: Path) -> None:
    sched = load_component("scheduler", {"init": {"num_train_timesteps": 7}})
    assert type(sched).__name__ == "DDPMScheduler"
    sched.save_pretrained(tmp_path / "sd" / "scheduler")
    loaded = load_component(
        "scheduler", {"pretrained": str(tmp_path / "sd"), "subfolder": "scheduler"}
    )
    assert type(loaded).__name__ == "DDPMScheduler" and loaded.config.num_train_timesteps == 7


def test_scheduler_unknown_class() -> None:
    with pytest.raises(ValueError, match="NoSuchScheduler.*DDIMScheduler"):
        load_component("scheduler", {"init": {"_class_name": "NoSuchScheduler"}})
    with pytest.raises(ValueError, match="AutoencoderKL"):  # exists, not a scheduler
        load_component("scheduler", {"init": {"_class_name": "AutoencoderKL"}})


def test_tokenizer_round_trip(tmp_path: Path) -> None:
    make_tokenizer_dir(tmp_path / "tok")
    from transformers import PreTrainedTokenizerFast

    expected = PreTrainedTokenizerFast.from_pretrained(tmp_path / "tok")
    tok = load_component("tokenizer", {"pretrained": str(tmp_path / "tok")})
    text = "a red circle blue square"
    assert tok(text)["input_ids"] == expected(text)["input_ids"]
    assert tok.convert_tokens_to_ids(["red", "square"]) == [5, 8]
    assert tok.pad_token == "<pad>"


def test_tokenizer_init_is_refused() -> None:
    with pytest.raises(ValueError, match="not supported for tokenizers"):
        load_component("tokenizer", {"init": {"vocab": {}}})


def test_processor_from_tokenizer_dir(tmp_path: Path) -> None:
    make_tokenizer_dir(tmp_path / "tok")
    proc = load_processor({"pretrained": str(tmp_path / "tok")})
    assert proc.convert_tokens_to_ids("circle") == 7


# ----------------------------------------------------------------- subfolder, dtype


def test_subfolder(tmp_path: Path) -> None:
    vae = load_component("vae", {"init": TINY_INIT["vae"]})
    vae.save_pretrained(tmp_path / "vae")
    loaded = load_component("vae", {"pretrained": str(tmp_path), "subfolder": "vae"})
    assert_same_state(vae, loaded)


def test_missing_subfolder_names_it(tmp_path: Path) -> None:
    (tmp_path / "sd" / "unet").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="subfolder 'vae'.*unet"):
        load_component("vae", {"pretrained": str(tmp_path / "sd"), "subfolder": "vae"})


@pytest.mark.parametrize("kind", ["vae", "text_encoder"])  # one per library
def test_pretrained_dtype(kind: str, tmp_path: Path) -> None:
    load_component(kind, {"init": TINY_INIT[kind]}).save_pretrained(tmp_path / kind)
    loaded = load_component(kind, {"pretrained": str(tmp_path / kind), "dtype": "bfloat16"})
    assert {p.dtype for p in loaded.parameters()} == {torch.bfloat16}


def test_init_dtype() -> None:
    lm = load_component("causal_lm", {"init": TINY_INIT["causal_lm"], "dtype": "float16"})
    assert {p.dtype for p in lm.parameters()} == {torch.float16}
    lm = load_component("causal_lm", {"init": TINY_INIT["causal_lm"]})
    assert {p.dtype for p in lm.parameters()} == {torch.float32}


def test_dtype_refused_for_scheduler() -> None:
    with pytest.raises(ValueError, match="'dtype' does not apply"):
        load_component("scheduler", {"init": {}, "dtype": "float16"})


# -------------------------------------------------------------------- spec errors


def test_spec_needs_exactly_one_source() -> None:
    with pytest.raises(ValidationError, match="exactly one of 'pretrained'.*got both"):
        ComponentSpec(pretrained="x", init={})
    with pytest.raises(ValidationError, match="exactly one of 'pretrained'.*got neither"):
        ComponentSpec()
    with pytest.raises(ValidationError, match="got neither"):
        load_component("vae", {"dtype": "float16"})


def test_spec_unknown_key_is_named() -> None:
    with pytest.raises(ValidationError, match="pretrianed"):
        load_component("vae", {"pretrianed": "data/06_models/vae"})


def test_spec_bad_dtype_and_subfolder_with_init() -> None:
    with pytest.raises(ValidationError, match="dtype"):
        ComponentSpec(pretrained="x", dtype="float64")
    with pytest.raises(ValidationError, match="'subfolder' only applies with 'pretrained'"):
        ComponentSpec(init={}, subfolder="vae")


def test_spec_accepts_path_objects(tmp_path: Path) -> None:
    assert ComponentSpec(pretrained=tmp_path).pretrained == str(tmp_path)


@pytest.mark.parametrize(
    ("kind", "init", "bad"),
    [
        ("vae", {"latent_channel": 4}, "latent_channel"),
        ("scheduler", {"num_train_timestep": 4}, "num_train_timestep"),
        ("text_encoder", {"hidden_sise": 8}, "hidden_sise"),
        ("causal_lm", {"model_type": "qwen2", "hiden_size": 8}, "hiden_size"),
    ],
)
def test_unknown_init_key_is_named(kind: str, init: dict[str, Any], bad: str) -> None:
    with pytest.raises(ValueError, match=f"unknown init config key.*{bad}"):
        load_component(kind, {"init": init})


def test_causal_lm_init_needs_model_type() -> None:
    with pytest.raises(ValueError, match="model_type"):
        load_component("causal_lm", {"init": {"hidden_size": 8}})
    with pytest.raises(ValueError, match="unknown model_type 'qwen9'"):
        load_component("causal_lm", {"init": {"model_type": "qwen9"}})


def test_unknown_kind() -> None:
    with pytest.raises(ValueError, match="'vea'.*valid kinds.*'vae'"):
        load_component("vea", {"init": {}})
    assert set(KINDS) == {*MODEL_KINDS, "scheduler", "tokenizer", "pipeline_index"}


# --------------------------------------------------------------- missing sources


@pytest.mark.parametrize("ref", ["/nonexistent/teacher", "./missing_dir", "data/06_models/nope"])
def test_missing_local_path(ref: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match=f"unet: pretrained path '{ref}' does not exist"):
        load_component("unet", {"pretrained": ref})


def test_pretrained_file_not_dir(tmp_path: Path) -> None:
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(NotADirectoryError, match="model.safetensors"):
        load_component("vae", {"pretrained": str(tmp_path / "model.safetensors")})


@pytest.mark.filterwarnings("ignore:The `local_dir_use_symlinks` argument is deprecated")
@pytest.mark.parametrize("kind", ["vae", "scheduler", "text_encoder", "tokenizer", "causal_lm"])
def test_offline_missing_hub_id(kind: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(OSError, match="not in the local Hugging Face cache.*offline") as info:
        load_component(kind, {"pretrained": "vlv-test/does-not-exist"})
    assert "vlv-test/does-not-exist" in str(info.value)
    assert isinstance(info.value.__cause__, OSError)


def test_a_model_saved_in_bf16_loads_in_fp32_unless_told(tmp_path: Path) -> None:
    # transformers 5 would keep the saved dtype: training would have no fp32 master weights
    lm = load_component("causal_lm", {"init": TINY_INIT["causal_lm"], "dtype": "bfloat16"})
    lm.save_pretrained(tmp_path / "lm")
    loaded = load_component("causal_lm", {"pretrained": str(tmp_path / "lm")})
    assert {p.dtype for p in loaded.parameters()} == {torch.float32}
    kept = load_component("causal_lm", {"pretrained": str(tmp_path / "lm"), "dtype": "bfloat16"})
    assert {p.dtype for p in kept.parameters()} == {torch.bfloat16}
