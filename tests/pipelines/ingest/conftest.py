"""A tiny shapes-world-like folder: images in split folders, a labels table, a few bad files."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from ingest_factory import png


@pytest.fixture
def shapes_like(tmp_path: Path) -> Path:
    """``images/{train,val,test}/00000N.png`` + ``labels.parquet``; returns the root."""
    images = tmp_path / "shapes" / "images"
    files = {
        "train/000000.png": png((255, 0, 0)),
        "train/000001.png": png((0, 255, 0)),
        "train/000002.png": png((255, 0, 0)),  # duplicate of 000000
        "val/000000.png": png((0, 0, 255)),
        "test/000000.png": png((9, 9, 9), (4, 4)),  # too small
        "test/000001.png": b"",  # empty
        "test/000002.png": png((200, 100, 0)),
    }
    for rel, data in files.items():
        (images / rel).parent.mkdir(parents=True, exist_ok=True)
        (images / rel).write_bytes(data)
    pd.DataFrame(
        {
            "file": list(files),
            "split": [f.split("/")[0] for f in files],
            "caption": [f"caption of {f}" for f in files],
            "n_objects": range(len(files)),
        }
    ).to_parquet(tmp_path / "shapes" / "labels.parquet")
    return tmp_path / "shapes"
