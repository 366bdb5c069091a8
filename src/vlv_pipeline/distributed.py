"""Running the project under ``accelerate launch`` (several processes, one per GPU or CPU).

    accelerate launch --num_processes N -m kedro run --pipeline stage1

Every rank runs the whole Kedro session (kedro-org/kedro#2049); the training loop
(``training/loop.py``) shards the data across ranks and averages gradients through
Accelerate. What must happen once happens on the main rank only:

- ``RankAwareDataCatalog`` (settings.py's ``DATA_CATALOG_CLASS``) persists a node's output on
  rank 0 only and then lets every rank continue together, so each versioned output gets
  exactly one version, written once; the other ranks load it back from disk like any later
  node would. In-memory datasets are kept per rank, as usual. A failed save on rank 0 is
  raised on every rank (no rank is left waiting).
- ``QuietRanksHook`` lowers logging to warnings on the other ranks; progress bars are already
  main-process only.

Single-process runs (no ``WORLD_SIZE`` > 1) take none of these paths.
"""

from __future__ import annotations

import logging
import os

from kedro.framework.hooks import hook_impl
from kedro.io import DataCatalog, MemoryDataset


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def _agree(error: str | None) -> None:
    """Every rank waits here; rank 0's error (if any) is raised on all of them."""
    import torch.distributed as dist
    from accelerate import PartialState

    PartialState()  # initialises the process group if the training loop has not yet
    message = [error]
    dist.broadcast_object_list(message, src=0)
    if message[0] is not None:
        raise RuntimeError(f"rank 0 failed to save: {message[0]}")


class RankAwareDataCatalog(DataCatalog):
    """Persists outputs on rank 0 only; in-memory datasets stay per rank."""

    def save(self, ds_name: str, data) -> None:
        if world_size() == 1 or isinstance(self[ds_name], MemoryDataset):
            return super().save(ds_name, data)
        error = None
        if rank() == 0:
            try:
                super().save(ds_name, data)
            except BaseException as exc:  # noqa: BLE001 - re-raised below on every rank
                error = f"{ds_name}: {type(exc).__name__}: {exc}"
                _agree(error)
                raise
        _agree(error)


class QuietRanksHook:
    @hook_impl
    def after_context_created(self, context) -> None:
        if world_size() > 1 and rank() != 0:
            for name in ("kedro", "vlv_pipeline", ""):
                logging.getLogger(name).setLevel(logging.WARNING)
