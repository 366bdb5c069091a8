"""``LatestJSONDataset``: what a versioned JSON output held last time, or ``None``.

A node that writes a versioned JSON (``eval_set_ids``) and wants to know what it wrote last
time cannot read the same catalog entry it writes, and a versioned entry with no version
fails to load. This read-only entry names the same ``filepath`` and loads its latest version
(``<filepath>/<version>/<name>``, the newest version folder holding the file), or ``None``
when none was saved or the latest no longer parses (the node then starts afresh)::

    eval_set_ids_previous:
      type: vlv_pipeline.datasets.previous.LatestJSONDataset
      filepath: ${globals:data}/07_model_output/eval_set_ids.json
"""

from __future__ import annotations

import json
import logging
from pathlib import Path, PurePosixPath
from typing import Any

from kedro.io import AbstractDataset, DatasetError

logger = logging.getLogger(__name__)


class LatestJSONDataset(AbstractDataset[None, Any]):
    def __init__(self, *, filepath: str, metadata: dict | None = None) -> None:
        self._filepath = PurePosixPath(filepath)
        self.metadata = metadata

    def _latest(self) -> Path | None:
        base = Path(str(self._filepath))
        if not base.is_dir():
            return None
        versions = sorted(
            (p for p in base.glob(f"*/{base.name}") if not p.parent.name.startswith(".")),
            key=lambda p: p.parent.name,
            reverse=True,
        )
        return versions[0] if versions else None

    def load(self) -> Any:
        path = self._latest()
        if path is None:
            return None
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            logger.warning("%s does not read (%s): taken as nothing written before", path, error)
            return None

    def save(self, data: None) -> None:
        raise DatasetError(
            f"{self._filepath} is read here as what was written last time; "
            "its own catalog entry writes it"
        )

    def _exists(self) -> bool:
        return True  # nothing written yet reads as None

    def _describe(self) -> dict[str, Any]:
        return {"filepath": str(self._filepath), "latest": str(self._latest() or "none")}
