"""Project hooks: say where the run's report (and other user-facing outputs) landed."""

from __future__ import annotations

import logging
from pathlib import Path

from kedro.framework.hooks import hook_impl

logger = logging.getLogger(__name__)

# outputs whose location a user wants to see at the end of a run
ANNOUNCED = (
    "eval_report",
    "user_captions",
    "user_captions_json",
    "reconstructions",
    "reconstruct_sheets",
    "reconstruct_metrics",
    "reconstruct_grid",
)


class AnnounceOutputsHook:
    def __init__(self) -> None:
        self._catalog = None
        self._saved: dict[str, str] = {}

    @hook_impl
    def after_catalog_created(self, catalog) -> None:
        self._catalog = catalog
        self._saved = {}

    @hook_impl
    def after_dataset_saved(self, dataset_name: str, data, node) -> None:
        if dataset_name in ANNOUNCED and self._catalog is not None:
            self._saved[dataset_name] = saved_path(self._catalog[dataset_name])

    @hook_impl
    def after_pipeline_run(self, run_params, pipeline, catalog) -> None:
        from vlv_pipeline.distributed import rank

        if rank() != 0:
            return
        for name, path in self._saved.items():
            logger.info("%s written to %s", name.replace("_", " "), path)
            print(f"{name.replace('_', ' ')}: {path}", flush=True)


def saved_path(dataset) -> str:
    """Where a (possibly versioned) file dataset just saved its data."""
    try:
        version = dataset.resolve_save_version()
        if version:
            return str(Path(dataset._get_versioned_path(version)))
    except AttributeError:
        pass
    described = dataset._describe()
    return str(described.get("filepath", described))
