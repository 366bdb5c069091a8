"""A damaged safetensors file in a local ``pretrained`` directory is refused by name
(issue 26, items 15 and 16 follow-up): ``registry.load_component`` wraps the libraries'
``from_pretrained``, which would say "Error while deserializing header" (transformers) or
name no cause (diffusers)."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_registry import TINY_INIT

from vlv_pipeline.errors import UserError
from vlv_pipeline.models.registry import load_component
from vlv_pipeline.models.tensor_files import DamagedWeightsError


def _truncated(directory: Path) -> Path:
    [weights] = sorted(directory.rglob("*.safetensors"))
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    return weights


@pytest.mark.parametrize("kind", ["vae", "text_encoder", "causal_lm"])
def test_a_truncated_weights_file_is_named(kind: str, tmp_path: Path) -> None:
    load_component(kind, {"init": TINY_INIT[kind]}).save_pretrained(tmp_path / kind)
    weights = _truncated(tmp_path / kind)

    with pytest.raises(DamagedWeightsError) as info:
        load_component(kind, {"pretrained": str(tmp_path / kind)})

    text = str(info.value)
    assert str(weights) in text and kind in text
    assert "download it again" in text  # what to do
    assert isinstance(info.value, UserError)  # kedro run prints it without a traceback


def test_a_truncated_file_in_a_subfolder_is_named(tmp_path: Path) -> None:
    load_component("vae", {"init": TINY_INIT["vae"]}).save_pretrained(tmp_path / "t2i" / "vae")
    weights = _truncated(tmp_path / "t2i" / "vae")
    with pytest.raises(DamagedWeightsError, match=str(weights)):
        load_component("vae", {"pretrained": str(tmp_path / "t2i"), "subfolder": "vae"})


def test_an_intact_directory_still_loads(tmp_path: Path) -> None:
    load_component("vae", {"init": TINY_INIT["vae"]}).save_pretrained(tmp_path / "vae")
    assert load_component("vae", {"pretrained": str(tmp_path / "vae")}) is not None
