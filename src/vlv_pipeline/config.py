"""The project's config loader: Kedro's ``OmegaConfigLoader`` plus the study's derived points."""

from __future__ import annotations

from typing import Any

from kedro.config import OmegaConfigLoader

from vlv_pipeline.params.study import expand_points


class StudyConfigLoader(OmegaConfigLoader):
    """``parameters`` gain ``study_points.<point>.<section>``: each study point's parameters,
    conf's sections with the point's few overrides (``params/study.py``). Runtime
    ``--params`` are already merged in, so ``--params study.size=small`` shrinks every point."""

    def __getitem__(self, key: str) -> dict[str, Any]:
        config = super().__getitem__(key)
        return expand_points(config) if key == "parameters" else config
