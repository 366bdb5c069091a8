"""The on-disk format of the project's shard caches (``shard_store.LatentCache`` and its
subclasses): file names, the index format and its checks, the cache error, and the writing
helpers.

Layout of a cache directory::

    index.json             {"format": "arrow", "fingerprint": {...},
                            "shards": [{"file", "count", "bytes", "checksum"}, ...]}
    shard-<hex>.arrow      one Hugging Face ``datasets`` Arrow file: columns ``image_id``
                           and one fixed-shape float32 array per field ("mean", "std")
    index.rank<r>.json     a rank's shards, not merged yet (``accelerate launch``)

What an index says is not trusted blindly: a shard name must be ``shard-<hex>.arrow`` (no
path, so no index makes the cache read or delete a file outside its folder), and each entry
must have the index's shape (else ``CorruptCacheError`` naming the index and the rebuild
command): ``checked_shards``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from kedro.io import DatasetError

from vlv_pipeline.errors import UserError
from vlv_pipeline.files import atomic_target

if TYPE_CHECKING:
    from vlv_pipeline.datasets.shard_store import LatentCache

INDEX = "index.json"
PART_INDEX = re.compile(r"index\.rank(\d+)\.json")  # one writer's shards, not yet merged
SHARD_NAME = re.compile(r"shard-[0-9a-f]{1,64}\.arrow")  # the only names an index may hold
# what ``reset`` deletes: shards, and those of the project's earlier layout (safetensors)
OWN_FILE = re.compile(r"shard-[0-9a-f]{1,64}\.(?:arrow|safetensors)")
FORMAT = "arrow"


class CorruptCacheError(UserError, DatasetError):
    """A shard of the cache is missing or unreadable."""


def write_atomic(path: Path, text: str) -> None:
    """``text`` to ``path`` through a temporary, flushed to disk, and a rename: the old file
    or the new one (``files.atomic_target``; a failed write is a ``SaveError``)."""
    with atomic_target(path, sweep=False) as tmp:  # begin_extension sweeps the folder
        tmp.write_text(text)


def close_quietly(writer) -> None:
    """Close an ``ArrowWriter`` after a failed write: closing flushes what is buffered, which
    fails again on a full disk, and the error to report is the first one."""
    try:
        writer.close()
    except Exception:  # the first error is the one raised
        stream = getattr(writer, "stream", None)
        try:
            if stream is not None and not stream.closed:
                stream.close()
        except Exception:
            pass


def arrow_features(fields: tuple[str, ...], tensors: tuple[torch.Tensor, ...]):
    """Arrow column types: the image id, then one fixed-shape float32 array per field."""
    from datasets import Array2D, Array3D, Array4D, Array5D, Features, Value

    arrays = {2: Array2D, 3: Array3D, 4: Array4D, 5: Array5D}
    columns: dict[str, Any] = {"image_id": Value("string")}
    for name, tensor in zip(fields, tensors, strict=True):
        shape = tuple(tensor.shape[1:])
        if len(shape) not in arrays:
            raise ValueError(f"field {name!r}: per-image tensors of 2 to 5 dims, got {shape}")
        columns[name] = arrays[len(shape)](shape=shape, dtype="float32")
    return Features(columns)


def checked_shards(cache: LatentCache, shards: Any, where: Path) -> list[dict]:
    """``shards`` (an index's list), after checking that each names a shard file of this
    cache: a plain ``shard-<hex>.arrow`` name, so nothing an index says can make the cache
    read or delete a file outside its folder; and that each entry has the index's shape
    (``check_entry``), so a hand-edited index gives this error, not a crash later."""
    if not isinstance(shards, list):
        raise CorruptCacheError(
            f"{cache.KIND} index {where} has no list of shards; delete {cache.path} and rerun "
            f"{cache.REBUILD} to rebuild it"
        )
    for shard in shards:
        name = shard.get("file") if isinstance(shard, dict) else shard
        if not (isinstance(name, str) and SHARD_NAME.fullmatch(name)):
            raise CorruptCacheError(
                f"{cache.KIND} index {where} names shard {name!r}, which is not a shard file "
                f"(shard-<hex>.arrow) inside {cache.path}: refusing to read or delete it. The "
                f"index was edited or damaged: delete {where} (or all of {cache.path}) and "
                f"rerun {cache.REBUILD} to rebuild what it listed"
            )
        check_entry(cache, shard, where)
    return shards


def check_entry(cache: LatentCache, shard: Any, where: Path) -> None:
    """One entry of an index's shard list: ``{"file": str, "count": int, "bytes": int,
    "checksum": str}`` (``bytes`` and ``checksum`` may be missing: written before they
    were recorded)."""
    wanted = {"file": str, "count": int, "bytes": int, "checksum": str}
    wrong = None
    if not isinstance(shard, dict):
        wrong = f"is {type(shard).__name__} {shard!r}, not an object"
    elif "count" not in shard:
        wrong = "has no count"
    else:
        for key, kind in wanted.items():
            value = shard.get(key)
            if key in shard and (not isinstance(value, kind) or isinstance(value, bool)):
                wrong = f"has {key} {value!r}, not a {kind.__name__}"
                break
            if kind is int and isinstance(value, int) and value < 0:
                wrong = f"has {key} {value!r}, a negative number"
                break
    if wrong is not None:
        raise CorruptCacheError(
            f'{cache.KIND} index {where}: a shard entry {wrong} (each is {{"file": '
            f'"shard-<hex>.arrow", "count": <int>, "bytes": <int>, "checksum": '
            f'"crc32:<hex>"}}). The index was edited or damaged: delete {where} (or all of '
            f"{cache.path}) and rerun {cache.REBUILD} to rebuild what it listed"
        )
