"""Fixtures: a hostile folder holding every bad kind of file at once."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
from imaging_factory import hostile_files, write_tree


@pytest.fixture
def hostile(tmp_path: Path) -> SimpleNamespace:
    """A folder with every bad kind of file at once, plus good images of awkward modes."""
    files = hostile_files()
    root = write_tree(tmp_path / "hostile", {k: v[0] for k, v in files.items()})
    (root / ".hidden.png").write_bytes(b"")
    (root / ".cache").mkdir()
    (root / ".cache" / "x.png").write_bytes(b"")
    return SimpleNamespace(
        root=root,
        data={k: v[0] for k, v in files.items()},
        # hidden entries get a row too, unread (issue 26, item 10)
        expected={k: v[1] for k, v in files.items()}
        | {".cache": "hidden", ".hidden.png": "hidden"},
    )
