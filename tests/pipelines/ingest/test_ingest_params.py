"""IngestParams: defaults, the YAML file, and errors that name the bad key."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from vlv_pipeline.params.ingest import IngestParams, SplitFractions

CONF = Path(__file__).resolve().parents[3] / "conf" / "base"


def test_parameters_file_validates_and_matches_the_defaults():
    text = (CONF / "parameters_ingest.yml").read_text()
    # conf/base/globals.yml: data: data
    raw = yaml.safe_load(text.replace("${globals:data}", "data"))["ingest"]
    params = IngestParams.model_validate(raw)
    assert params == IngestParams()
    assert params.resolution is None and params.background == (255, 255, 255)
    assert params.splits == SplitFractions(train=0.9, val=0.05, test=0.05)


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ({"resolutoin": 384}, "resolutoin"),
        ({"resolution": "big"}, "resolution"),
        ({"resolution": 0}, "resolution"),
        ({"min_side": 1.5}, "min_side"),
        ({"max_aspect_ratio": 0.5}, "max_aspect_ratio"),
        ({"background": [255, 255]}, "background"),
        ({"background": [0, 0, 300]}, "background.2"),
        ({"splits": {"train": 0.9, "val": 0.1, "tset": 0.0}}, "splits.tset"),
        ({"splits": {"train": "most"}}, "splits.train"),
        ({"max_pixels": 10**12}, "max_pixels"),
        ({"max_file_bytes": 0}, "max_file_bytes"),
        ({"max_file_bytes": "64MB"}, "max_file_bytes"),
        ({"follow_links": "yes"}, "follow_links"),
        ({"allow_outside_paths": 1}, "allow_outside_paths"),
    ],
)
def test_errors_name_the_key(raw, key):
    with pytest.raises(ValidationError) as info:
        IngestParams.model_validate(raw)
    assert key in str(info.value)


def test_split_fractions_must_sum_to_one():
    with pytest.raises(ValidationError, match=r"splits\n.*must sum to 1, got 0.95"):
        IngestParams.model_validate({"splits": {"train": 0.9, "val": 0.05, "test": 0.0}})
    assert IngestParams(splits={"train": 1.0, "val": 0.0, "test": 0.0}).splits.train == 1.0


def test_params_are_frozen():
    with pytest.raises(ValidationError):
        IngestParams().min_side = 3  # type: ignore[misc]
