"""Extending a shard cache (``shard_store``), from one process or from every rank of
``accelerate launch``: ``extend_cache``, the one incremental rank-parallel writer of the
latent and embedding caches, and its steps (``begin_extension``, ``write_shards``,
``end_extension``)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import TypeVar

import torch

from vlv_pipeline.datasets.shard_store import LatentCache
from vlv_pipeline.distributed import barrier, rank, together, world_size

logger = logging.getLogger(__name__)

C = TypeVar("C", bound=LatentCache)


def begin_extension(cache: C, fingerprint: dict) -> C:
    """Ready ``cache`` to be extended with tensors made by ``fingerprint``; returns the handle
    this process adds shards through.

    Rank 0 (or the only process) first merges the parts an interrupted run left, when they
    were made by the same fingerprint, and empties a cache made by another fingerprint (or an
    older format). Then every rank reopens the cache; under several processes each rank
    writes its own part, which ``end_extension`` merges. Call it on every rank.
    """

    def prepare() -> None:
        if rank() != 0:
            return
        current = type(cache)(cache.path)
        current.remove_stale_temporaries()  # the other ranks wait: none is theirs
        if current.fingerprint == fingerprint:
            merged = current.merge_parts()
            if merged:
                logger.info(
                    "%s %s: kept %d shards an interrupted run wrote", cache.KIND, cache.path, merged
                )
            current.repair()  # damaged or missing shards: their images are encoded again
            return
        if len(current) or current.part_files():
            logger.warning(
                "%s %s was made by other weights or settings than this run's: rebuilding it",
                cache.KIND,
                cache.path,
            )
        current.reset(fingerprint)

    together(prepare)
    return type(cache)(cache.path, part=rank() if world_size() > 1 else None)


def end_extension(cache: C) -> C:
    """Once every rank has added its shards: rank 0 merges the parts into the index; every
    rank gets a handle on the merged cache. Call it on every rank."""
    barrier()

    def merge() -> None:
        if rank() == 0:
            type(cache)(cache.path).merge_parts()

    together(merge)
    return type(cache)(cache.path)


def write_shards(
    cache: LatentCache,
    items: Iterable[tuple[str, torch.Tensor]],
    encode: Callable[[torch.Tensor], tuple[torch.Tensor, ...]],
    batch_size: int,
    shard_size: int,
) -> int:
    """Encode ``(image_id, pixels)`` items ``batch_size`` at a time with ``encode(pixels) ->
    one tensor per FIELD`` and add them to ``cache`` in shards of at least ``shard_size``
    images (a shard is cut after the batch that fills it; the last one holds the rest), so
    memory holds one shard. Returns the number of images written."""
    ids: list[str] = []
    parts: list[tuple[torch.Tensor, ...]] = []
    batch_ids: list[str] = []
    batch: list[torch.Tensor] = []
    written = 0

    def encode_batch() -> None:
        tensors = encode(torch.stack(batch))
        parts.append(tuple(t.detach().float().cpu() for t in tensors))
        ids.extend(batch_ids)
        batch_ids.clear()
        batch.clear()

    def flush() -> None:
        nonlocal written
        cache.add(list(ids), *(torch.cat(column) for column in zip(*parts, strict=True)))
        written += len(ids)
        ids.clear()
        parts.clear()

    for image_id, pixels in items:
        batch_ids.append(image_id)
        batch.append(pixels)
        if len(batch) == batch_size:
            encode_batch()
            if len(ids) >= shard_size:
                flush()
    if batch:
        encode_batch()
    if ids:
        flush()
    return written


def extend_cache(
    cache: C,
    fingerprint: dict,
    rows,
    raw_images,
    resolution: int | None,
    encode: Callable[[torch.Tensor], tuple[torch.Tensor, ...]],
    batch_size: int,
    shard_size: int,
    desc: str,
) -> C:
    """``cache`` extended with the images of ``rows`` (a manifest slice) that it lacks: each
    read from ``raw_images`` at ``resolution``, encoded ``batch_size`` at a time, written in
    shards of ``shard_size`` (``write_shards``). Under ``accelerate launch`` each rank encodes
    its own contiguous block of the images still to do, and every rank returns the merged
    cache. A cache made by another fingerprint is rebuilt (``begin_extension``)."""
    from tqdm.auto import tqdm

    from vlv_pipeline.distributed import share
    from vlv_pipeline.imaging.sources import iter_images
    from vlv_pipeline.world.data import pil_to_tensor

    cache = begin_extension(cache, fingerprint)
    todo = rows[~rows["image_id"].isin(cache.image_ids())]
    mine = todo.iloc[share(len(todo))]
    logger.info(
        "%s: %d of %d images cached, encoding %d", desc, len(rows) - len(todo), len(rows), len(todo)
    )

    def encode_mine() -> int:
        images = iter_images(raw_images, mine, resolution) if len(mine) else iter(())
        items = (
            (image_id, pil_to_tensor(image))
            for image_id, image in tqdm(images, total=len(mine), desc=desc, unit="img")
        )
        return write_shards(cache, items, encode, batch_size, shard_size)

    together(encode_mine)
    return end_extension(cache)
