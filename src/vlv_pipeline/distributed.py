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

Nodes that work through a list of items (``cache``, ``synthesize``, ``evaluate``, ``caption``)
split it with the helpers below: ``share(n)`` is this rank's contiguous block of the ``n``
items (so rank order is input order); ``together(work)`` runs this rank's work and waits for
every rank (if any rank's work raised, every rank raises: no rank is left waiting);
``each_rank(work)`` does the same and gives every rank every rank's result, in rank order;
``gather_lists`` concatenates the ranks' lists, ``broadcast`` sends rank 0's object to all,
``barrier`` waits for all.

Single-process runs (no ``WORLD_SIZE`` > 1) take none of these paths: the helpers then do
no communication and never touch ``torch.distributed``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any, TypeVar

from kedro.framework.hooks import hook_impl
from kedro.io import DataCatalog, MemoryDataset


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


T = TypeVar("T")


def block(units: int, part: tuple[int, int] | None) -> range:
    """The ``part`` ``(k, n)`` of ``range(units)``: the k-th of n contiguous blocks whose
    sizes differ by at most one (all of it when ``part`` is None)."""
    if part is None:
        return range(units)
    k, n = part
    if not 0 <= k < n:
        raise ValueError(f"part {part}: need 0 <= k < n")
    size, extra = divmod(units, n)
    start = k * size + min(k, extra)
    return range(start, start + size + (k < extra))


def share(n: int) -> range:
    """This rank's contiguous block of ``n`` items: blocks in rank order cover ``range(n)``,
    their sizes differ by at most one (the first ``n % world_size()`` ranks take one more)."""
    return block(n, (rank(), world_size()))


def _process_group():
    """``torch.distributed``, its process group initialised (``PartialState`` does it, if the
    training loop has not yet).

    Accelerate's state is made once per process and the training loop's ``Accelerator`` reuses
    it, so it is made here as the loop asks for it (``cpu`` without CUDA): a bare
    ``PartialState()`` on a machine without CUDA records a non-distributed state, and a later
    training would then run one unsynchronised copy per rank."""
    import torch
    import torch.distributed as dist
    from accelerate import PartialState

    PartialState(cpu=not torch.cuda.is_available())
    return dist


def _run(work: Callable[[], T], share_results: bool) -> tuple[T, list[Any]]:
    """This rank's result of ``work``, and every rank's (when ``share_results``), after every
    rank has finished; if the work raised on any rank, every rank raises (the failed rank its
    own exception, the others an error naming it), so no rank is left waiting."""
    error, result = None, None
    try:
        result = work()
    except BaseException as exc:  # noqa: BLE001 - re-raised below, after the others know
        error = exc
    summary = None if error is None else f"{type(error).__name__}: {error}"
    shared = result if share_results and error is None else None
    results: list[Any] = [None] * world_size()
    _process_group().all_gather_object(results, (summary, shared))
    if error is not None:
        raise error
    failed = [(r, s) for r, (s, _) in enumerate(results) if s is not None]
    if failed:
        names = "; ".join(f"rank {r}: {s}" for r, s in failed)
        raise RuntimeError(f"another rank failed ({names})")
    return result, [value for _, value in results]


def together(work: Callable[[], T]) -> T:
    """Run this rank's ``work`` and wait for every rank to finish theirs; if it raised on any
    rank, every rank raises. Returns this rank's result. Single-process: ``work()``."""
    if world_size() == 1:
        return work()
    return _run(work, share_results=False)[0]


def each_rank(work: Callable[[], T]) -> list[T]:
    """Like ``together``, but every rank gets every rank's result, in rank order. Results
    travel pickled: keep them small and on the CPU. Single-process: ``[work()]``."""
    if world_size() == 1:
        return [work()]
    return _run(work, share_results=True)[1]


def gather_lists(items: list[T]) -> list[T]:
    """Every rank's ``items`` concatenated in rank order (to every rank)."""
    return [item for part in each_rank(lambda: list(items)) for item in part]


def broadcast(obj: T) -> T:
    """Rank 0's ``obj``, on every rank."""
    if world_size() == 1:
        return obj
    box = [obj]
    _process_group().broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    """Every rank waits here until all have arrived."""
    if world_size() > 1:
        _process_group().barrier()


def _agree(error: str | None) -> None:
    """Every rank waits here; rank 0's error (if any) is raised on all of them."""
    message = [error]
    _process_group().broadcast_object_list(message, src=0)
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
