"""The provenance record's T2I fingerprint: it names an architecture, wherever the model lies.

A hash of the text encoder's, UNet's and VAE's architecture keys
(models/provenance_fingerprints.py): the same for a hub id in the Hugging Face cache, a local
copy and a ``save_pretrained`` copy (which may drop keys at their defaults), different for
another model. Reads JSON only.
"""

from __future__ import annotations

import inspect
import json
import shutil
from pathlib import Path

import pytest
from shapes_captioner import TEACHER

from vlv_pipeline.models import provenance_fingerprints
from vlv_pipeline.models.provenance_fingerprints import t2i_fingerprint

PARTS = ("text_encoder", "unet", "vae")


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """An empty Hugging Face cache; ``add(repo, folder)`` caches ``folder``'s configs."""
    from huggingface_hub import constants

    cache = tmp_path / "hf"
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))

    def add(repo: str, folder: Path) -> None:
        root = cache / f"models--{repo.replace('/', '--')}"
        (root / "refs").mkdir(parents=True, exist_ok=True)
        (root / "refs/main").write_text("0123abcd")
        for part in PARTS:
            target = root / "snapshots/0123abcd" / part / "config.json"
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(folder / part / "config.json", target)

    return add


def test_the_fingerprint_survives_a_move_between_the_hub_and_local_copies(tmp_path, hub_cache):
    here = t2i_fingerprint(TEACHER)
    assert set(here["parts"]) == set(PARTS) and here["fingerprint"]
    # the same model in the Hugging Face cache, by hub id
    hub_cache("someone/shapes-teacher", TEACHER)
    assert t2i_fingerprint("someone/shapes-teacher") == here
    # a copy whose configs were written again, keys at their defaults dropped and the
    # library's bookkeeping changed (as save_pretrained by another version writes them)
    copy = tmp_path / "copy"
    shutil.copytree(TEACHER, copy)
    config = json.loads((copy / "text_encoder/config.json").read_text())
    assert (config["max_position_embeddings"], config["hidden_act"]) == (77, "quick_gelu")
    for key in ("max_position_embeddings", "hidden_act"):  # CLIPTextConfig's defaults
        del config[key]
    config.update(_name_or_path="/elsewhere", dtype="bfloat16", transformers_version="9.9")
    (copy / "text_encoder/config.json").write_text(json.dumps(config))
    unet = json.loads((copy / "unet/config.json").read_text())
    unet.update(_diffusers_version="0.99.0", _name_or_path="/elsewhere")
    (copy / "unet/config.json").write_text(json.dumps(unet))
    assert t2i_fingerprint(copy) == here


def test_another_architecture_has_another_fingerprint(tmp_path):
    copy = tmp_path / "wider"
    shutil.copytree(TEACHER, copy)
    config = json.loads((copy / "text_encoder/config.json").read_text())
    config["hidden_size"] *= 2
    (copy / "text_encoder/config.json").write_text(json.dumps(config))
    here, there = t2i_fingerprint(TEACHER), t2i_fingerprint(copy)
    assert there["fingerprint"] != here["fingerprint"]
    assert there["parts"]["unet"] == here["parts"]["unet"]
    assert there["parts"]["text_encoder"] != here["parts"]["text_encoder"]


def test_a_model_not_on_disk_has_no_fingerprint(hub_cache):
    assert t2i_fingerprint("stabilityai/stable-diffusion-2-1-base") == {
        "fingerprint": None,
        "parts": {},
    }


def test_the_defaults_filled_in_are_the_libraries_own():
    """A key left out of a config means the class's default: the table must say the same."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig

    clip = CLIPTextConfig()
    for key, default in provenance_fingerprints.T2I_KEYS["text_encoder"].items():
        assert getattr(clip, key) == default, key
    for part, cls in (("unet", UNet2DConditionModel), ("vae", AutoencoderKL)):
        signature = inspect.signature(cls.__init__).parameters
        for key, default in provenance_fingerprints.T2I_KEYS[part].items():
            value = signature[key].default
            assert (list(value) if isinstance(value, tuple) else value) == default, (part, key)
