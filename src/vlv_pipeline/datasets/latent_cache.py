"""A sharded cache of VAE posteriors (mean and std per image), keyed by image_id.

Layout of a cache directory::

    index.json             {"format": "arrow", "fingerprint": {...},
                            "shards": [{"file", "count", "bytes", "checksum"}, ...]}
    shard-<hex>.arrow      one Hugging Face ``datasets`` Arrow file: columns ``image_id``
                           and one fixed-shape float32 array per field ("mean", "std")
    index.rank<r>.json     a rank's shards, not merged yet (``accelerate launch``)

Shards are memory-mapped Arrow files (``datasets.Dataset.from_file``), so reading a row
touches only that row's pages and several processes share the page cache. Each shard lists
its own image ids; the index names shards only, so rewriting it after a shard costs
O(shards), not O(images). Shards are written one at a time, each to a temporary name,
flushed to disk, then renamed, and the index is rewritten (atomically, flushed too) after
every shard, so an interrupted encoding keeps every finished shard and a rerun continues from
there. The fingerprint
records what made the latents (the VAE's weights hash, its config, the resolution); a cache
with another fingerprint, or of an older format, is discarded rather than mixed.

What an index says is not trusted blindly: a shard name must be ``shard-<hex>.arrow`` (no
path, so no index makes the cache read or delete a file outside its folder), each entry must
have the index's shape (else ``CorruptCacheError`` naming the index and the rebuild command),
and each shard's size and CRC-32 are checked once per process before Arrow reads it. Starting
afresh (another fingerprint) deletes only ``shard-<hex>.arrow`` files (and the earlier
layout's ``shard-<hex>.safetensors``), never anything else in the folder. Writes go through hidden
temporaries named by their writer (``vlv_pipeline.files``); the run that extends the cache
removes the stale ones and drops missing or damaged shards, whose images it encodes again.

Catalog (the same directory under two names: the node that extends the cache reads the
previous state and writes the new one)::

    latent_cache_previous:
      type: vlv_pipeline.datasets.latent_cache.LatentCacheDataset
      path: data/04_feature/latent_cache
    latent_cache:
      type: vlv_pipeline.datasets.latent_cache.LatentCacheDataset
      path: data/04_feature/latent_cache
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import uuid
import zlib
from collections import OrderedDict
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from kedro.io import AbstractDataset, DatasetError
from kedro_datasets._typing import TablePreview

from vlv_pipeline.distributed import barrier, rank, together, world_size
from vlv_pipeline.errors import MissingEntryError, UserError
from vlv_pipeline.files import atomic_target, remove_quietly, remove_stale

logger = logging.getLogger(__name__)

INDEX = "index.json"
PART_INDEX = re.compile(r"index\.rank(\d+)\.json")  # one writer's shards, not yet merged
SHARD_NAME = re.compile(r"shard-[0-9a-f]{1,64}\.arrow")  # the only names an index may hold
# what ``reset`` deletes: shards, and those of the project's earlier layout (safetensors)
OWN_FILE = re.compile(r"shard-[0-9a-f]{1,64}\.(?:arrow|safetensors)")
FORMAT = "arrow"
CHECKSUM_CHUNK = 16 * 2**20
# shards whose checksum this process has verified, by (device, inode, size, mtime, checksum):
# a shard is hashed once per process (DataLoader workers forked later inherit the set), and
# again if the file changed since
_VERIFIED: set[tuple] = set()
_WARNED: set[str] = set()  # caches already warned about as having shards without checksums


def _file_checksum(path: Path) -> str:
    """``crc32:<hex>`` of a file's bytes, read in large chunks. CRC-32 detects corruption (any
    burst of up to 32 bits, anything else but one time in 4e9), not tampering: a checksum
    kept in the index beside the shard could be rewritten by whoever rewrites the shard."""
    crc = 0
    buffer = bytearray(CHECKSUM_CHUNK)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as file:
        while size := file.readinto(buffer):
            crc = zlib.crc32(view[:size], crc)
    return f"crc32:{crc:08x}"


def _identity(path: Path, checksum: str) -> tuple:
    stat = path.stat()
    return (stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns, checksum)


def weights_sha256(module: torch.nn.Module) -> str:
    """A hash of a module's weights (as float32), independent of the dtype it runs in."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().to(torch.float32).cpu().numpy().tobytes())
    return digest.hexdigest()


def embedding_fingerprint(encoder, text_encoders, resolution: int | None) -> dict:
    """What the stage-2 embedding cache was made by: the VLV encoder's weights, the text
    encoders' (one module, or a teacher's list of them), the resolution."""
    if isinstance(text_encoders, torch.nn.Module):
        text_encoders = [text_encoders]
    hashes = [weights_sha256(m) for m in text_encoders]
    text = hashes[0] if len(hashes) == 1 else hashlib.sha256("".join(hashes).encode()).hexdigest()
    return {
        "encoder_sha256": weights_sha256(encoder),
        "text_encoder_sha256": text,
        "resolution": resolution,
    }


def vae_fingerprint(vae, resolution: int | None) -> dict:
    """What makes the latents: a hash of the VAE's weights and config, and the resolution."""
    # private keys (_name_or_path, _use_default_values...) say where it was loaded from, not what it is
    config = {k: v for k, v in dict(vae.config).items() if not k.startswith("_")}
    # no shift, spelled null (SD) or 0.0 (SD 3's pipeline needs a number): the same VAE
    if not config.get("shift_factor"):
        config["shift_factor"] = None
    config = json.dumps(config, sort_keys=True, default=str)
    return {
        "weights_sha256": weights_sha256(vae),
        "config_sha256": hashlib.sha256(config.encode()).hexdigest(),
        "resolution": resolution,
    }


class CorruptCacheError(UserError, DatasetError):
    """A shard of the cache is missing or unreadable."""


def _write_atomic(path: Path, text: str) -> None:
    """``text`` to ``path`` through a temporary, flushed to disk, and a rename: the old file
    or the new one (``files.atomic_target``; a failed write is a ``SaveError``)."""
    with atomic_target(path, sweep=False) as tmp:  # begin_extension sweeps the folder
        tmp.write_text(text)


def _close_quietly(writer) -> None:
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


def _features(fields: tuple[str, ...], tensors: tuple[torch.Tensor, ...]):
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


class LatentCache:
    """A handle on a cache directory: what is cached, adding shards, reading latents.

    Subclasses cache other per-image tensors by naming their ``FIELDS`` (see
    ``EmbeddingCache``); ``add`` and ``load`` take and return them in that order.

    ``part``: this handle is one of several writers (a rank): ``add`` records its shards in
    ``index.rank<part>.json`` and leaves ``index.json`` alone until ``merge_parts``. Reading
    sees ``index.json`` and this writer's own shards.
    """

    FIELDS: tuple[str, ...] = ("mean", "std")
    KIND = "latent cache"
    REBUILD = "`kedro run --pipeline cache`"

    def __init__(self, path: str | Path, part: int | None = None):
        self.path = Path(path)
        self.part = part
        index_path = self.path / INDEX
        if index_path.is_file():
            try:
                index = json.loads(index_path.read_text())
            except json.JSONDecodeError as error:
                raise CorruptCacheError(
                    f"{self.KIND} index {index_path} is not valid JSON ({error}); delete "
                    f"{self.path} and rerun {self.REBUILD} to rebuild it"
                ) from error
            fingerprint = index.get("fingerprint") if isinstance(index, dict) else None
            if not isinstance(fingerprint, dict | None):
                index = None
            if not isinstance(index, dict):
                raise CorruptCacheError(
                    f"{self.KIND} index {index_path} is not an index (an object with format, "
                    f"fingerprint and shards): it was edited or damaged; delete {self.path} and "
                    f"rerun {self.REBUILD} to rebuild it"
                )
        else:
            index = {"format": FORMAT, "fingerprint": None, "shards": []}
        # a cache written by an older version of the project has no fingerprint to match:
        # the node that extends it rebuilds it, and readers say to
        self.outdated = index.get("format") != FORMAT
        self.fingerprint: dict | None = None if self.outdated else index.get("fingerprint")
        self.shards: list[dict] = (
            [] if self.outdated else self._checked_names(index.get("shards"), index_path)
        )
        self._ids: dict[str, tuple[int, int]] | None = None
        self._part_shards: list[dict] = []
        if part is not None and self.fingerprint is not None:
            own = self._read_part(self.path / f"index.rank{part}.json")
            if own is not None:  # a part this writer left unmerged: continue it
                self._part_shards = list(own)
                listed = {s["file"] for s in self.shards}
                self.shards = self.shards + [s for s in own if s["file"] not in listed]

    def _checked_names(self, shards: Any, where: Path) -> list[dict]:
        """``shards`` (an index's list), after checking that each names a shard file of this
        cache: a plain ``shard-<hex>.arrow`` name, so nothing an index says can make the cache
        read or delete a file outside its folder; and that each entry has the index's shape
        (``_check_entry``), so a hand-edited index gives this error, not a crash later."""
        if not isinstance(shards, list):
            raise CorruptCacheError(
                f"{self.KIND} index {where} has no list of shards; delete {self.path} and rerun "
                f"{self.REBUILD} to rebuild it"
            )
        for shard in shards:
            name = shard.get("file") if isinstance(shard, dict) else shard
            if not (isinstance(name, str) and SHARD_NAME.fullmatch(name)):
                raise CorruptCacheError(
                    f"{self.KIND} index {where} names shard {name!r}, which is not a shard file "
                    f"(shard-<hex>.arrow) inside {self.path}: refusing to read or delete it. The "
                    f"index was edited or damaged: delete {where} (or all of {self.path}) and "
                    f"rerun {self.REBUILD} to rebuild what it listed"
                )
            self._check_entry(shard, where)
        return shards

    def _check_entry(self, shard: Any, where: Path) -> None:
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
                f'{self.KIND} index {where}: a shard entry {wrong} (each is {{"file": '
                f'"shard-<hex>.arrow", "count": <int>, "bytes": <int>, "checksum": '
                f'"crc32:<hex>"}}). The index was edited or damaged: delete {where} (or all of '
                f"{self.path}) and rerun {self.REBUILD} to rebuild what it listed"
            )

    def _shard_path(self, shard: dict) -> Path:
        """Where ``shard`` is, refused when it resolves outside the cache folder (a link)."""
        path = self.path / shard["file"]
        if path.is_symlink() and path.resolve().parent != self.path.resolve():
            raise CorruptCacheError(
                f"{self.KIND} shard {path} links to {path.resolve()}, a file not inside "
                f"{self.path}: refusing to read it; delete the link and rerun {self.REBUILD}"
            )
        return path

    # -- what is there ---------------------------------------------------------------
    def __len__(self) -> int:
        return sum(s["count"] for s in self.shards)

    def image_ids(self) -> set[str]:
        return set(self._locations())

    def _locations(self) -> dict[str, tuple[int, int]]:
        if self._ids is None:
            self._ids = {}
            for i, shard in enumerate(self.shards):
                for row, image_id in enumerate(self._shard_ids(shard)):
                    self._ids[image_id] = (i, row)
        return self._ids

    def _open(self, shard: dict):
        """The shard as a memory-mapped ``datasets.Dataset``, checked against the index."""
        from datasets import Dataset

        path = self._shard_path(shard)
        if not path.is_file():
            raise CorruptCacheError(
                f"{self.KIND} shard {path} is missing; run {self.REBUILD}: it drops the shard "
                f"from the index and encodes its images again"
            )
        self._check_bytes(shard, path)  # before Arrow sees the file
        try:
            table = Dataset.from_file(str(path))
        except Exception as error:  # pyarrow raises several types for a damaged file
            raise CorruptCacheError(
                f"{self.KIND} shard {path} is corrupt ({error}); run {self.REBUILD}: it drops "
                f"the damaged shard and encodes its images again"
            ) from error
        if len(table) != shard["count"] or not set(self.FIELDS) <= set(table.column_names):
            raise CorruptCacheError(
                f"{self.KIND} shard {path} does not hold {shard['count']} rows of "
                f"{self.FIELDS}; run {self.REBUILD}: it drops the damaged shard and encodes its "
                f"images again"
            )
        return table

    def _check_bytes(self, shard: dict, path: Path) -> None:
        """The shard's size and checksum against those recorded when it was written; once per
        shard and process (``_VERIFIED``). A shard written before checksums were recorded is
        accepted, with one warning per cache (the next rebuild command records them)."""
        expected = shard.get("checksum")
        if expected is None:
            self._warn_unchecked()
            return
        identity = _identity(path, expected)
        if identity in _VERIFIED:
            return
        size = identity[2]
        if "bytes" in shard and size != shard["bytes"]:
            raise CorruptCacheError(
                f"{self.KIND} shard {path} holds {size} bytes, not the {shard['bytes']} it had "
                f"when written: it changed on disk and is not read. Run {self.REBUILD}: it drops "
                f"this shard and encodes its images again"
            )
        found = _file_checksum(path) if expected.startswith("crc32:") else "(unknown kind)"
        if found != expected:
            raise CorruptCacheError(
                f"{self.KIND} shard {path} does not match the checksum recorded when it was "
                f"written ({expected}; the file now gives {found}): it changed on disk (a failing "
                f"disk, an interrupted copy, an edit) and is not read. Run {self.REBUILD}: it "
                f"drops this shard and encodes its images again"
            )
        _VERIFIED.add(identity)

    def _warn_unchecked(self) -> None:
        key = str(self.path)
        if key in _WARNED:
            return
        _WARNED.add(key)
        unchecked = sum("checksum" not in s for s in self.shards)
        logger.warning(
            "%s %s: %d shard(s) have no checksums (written before the project recorded them), so "
            "damage on disk is not detected before they are read; the next %s records them",
            self.KIND,
            self.path,
            unchecked,
            self.REBUILD,
        )

    def _shard_ids(self, shard: dict) -> list[str]:
        return self._open(shard).data.column("image_id").to_pylist()

    # -- writing -----------------------------------------------------------------------
    def reset(self, fingerprint: dict) -> None:
        """Start afresh for latents made by ``fingerprint``; old shards and parts are removed:
        ``shard-<hex>.arrow`` (and the earlier layout's ``shard-<hex>.safetensors``), nothing
        else the folder holds."""
        found = self.path.iterdir() if self.path.is_dir() else ()
        old = [p for p in found if OWN_FILE.fullmatch(p.name) and p.is_file()]
        old += self.part_files()
        self.path.mkdir(parents=True, exist_ok=True)
        self.fingerprint, self.shards, self._ids, self.outdated = fingerprint, [], None, False
        self._part_shards = []
        self._write_index()
        for path in old:
            path.unlink(missing_ok=True)

    def add(self, image_ids: list[str], *tensors: torch.Tensor) -> None:
        """Write one shard (atomically) of ``FIELDS`` tensors and record it in the index."""
        from datasets.arrow_writer import ArrowWriter

        if self.fingerprint is None:
            raise DatasetError(f"call reset(fingerprint) before adding to a new {self.KIND}")
        if len(tensors) != len(self.FIELDS) or any(len(t) != len(image_ids) for t in tensors):
            raise ValueError(
                f"give image_ids and one tensor per field {self.FIELDS}, all the same length"
            )
        name = f"shard-{uuid.uuid4().hex[:12]}.arrow"
        final = self.path / name
        arrays = [t.detach().float().cpu().numpy() for t in tensors]
        # a hidden temporary naming its writer (files.is_stale), flushed, renamed into place;
        # a failed write (disk full, permissions) is a SaveError and the index still lists
        # only whole shards
        with atomic_target(final, sweep=False) as tmp:
            writer = ArrowWriter(path=str(tmp), features=_features(self.FIELDS, tensors))
            try:
                writer.write_batch(
                    {
                        "image_id": list(image_ids),
                        **{f: list(a) for f, a in zip(self.FIELDS, arrays, strict=True)},
                    }
                )
                writer.finalize()
                writer.close()
            except BaseException:
                _close_quietly(writer)  # never raises: the error to report is the write's
                raise
            checksum = _file_checksum(tmp)
            size = tmp.stat().st_size
        shard = {"file": name, "count": len(image_ids), "bytes": size, "checksum": checksum}
        _VERIFIED.add(_identity(final, checksum))  # hashed just now, from what was written
        own = self.shards if self.part is None else self._part_shards
        try:
            own.append(shard)
            if self.part is None:
                self._write_index()
            else:
                self._write_index(f"index.rank{self.part}.json", self._part_shards)
        except DatasetError:  # the index could not list it: no index names a shard it lacks
            own.remove(shard)
            remove_quietly(final)
            raise
        if self.part is not None:
            self.shards.append(shard)
        self._ids = None

    def _write_index(self, name: str = INDEX, shards: list[dict] | None = None) -> None:
        shards = self.shards if shards is None else shards
        _write_atomic(
            self.path / name,
            json.dumps({"format": FORMAT, "fingerprint": self.fingerprint, "shards": shards}),
        )

    def remove_stale_temporaries(self) -> list[Path]:
        """Remove the hidden temporaries (shards, indexes) that no live writer will finish:
        left by a killed run, or by a version of the project whose clean-up failed on a full
        disk. ``files.is_stale`` decides: a temporary names its machine and process; it is
        stale when that process, on this machine, is gone, or (another machine's, or an old
        unnamed one) when it was not touched for ``files.STALE_AFTER_S``. Run by rank 0 before
        any rank of the run writes (``begin_extension``), so none of them is this run's."""
        if not self.path.is_dir():
            return []
        removed = remove_stale(self.path.glob(".*.tmp*"))
        if removed:
            logger.info(
                "%s %s: removed %d temporaries a stopped run left (%s)",
                self.KIND,
                self.path,
                len(removed),
                ", ".join(p.name for p in removed[:3]),
            )
        return removed

    def repair(self) -> list[str]:
        """Check every shard (``_open``: size, checksum, Arrow structure) and drop from the index
        those that are missing or damaged, deleting their files, so the run that extends the
        cache encodes their images again; record the checksums of shards written before they
        were recorded (after a full Arrow validation: offsets and lengths in bounds, so what
        is trusted from now on cannot send a reader past its file). Returns the dropped shards'
        names. Rank 0 only (``begin_extension``).
        A shard that links outside the folder is refused, not repaired."""
        kept, dropped, recorded = [], [], 0
        _WARNED.add(str(self.path))  # recorded below: no warning about them
        for shard in self.shards:
            path = self._shard_path(shard)
            try:
                table = self._open(shard)
                if "checksum" not in shard:  # its checksum is about to be trusted: read it all
                    try:
                        table.data.table.validate(full=True)
                    except Exception as invalid:  # pyarrow.ArrowInvalid and kin
                        raise CorruptCacheError(
                            f"{self.KIND} shard {path} is corrupt ({invalid})"
                        ) from invalid
            except CorruptCacheError as error:
                dropped.append(shard["file"])
                logger.warning("%s: dropped, its images are encoded again", error)
                continue
            if "checksum" not in shard:
                shard.update(bytes=path.stat().st_size, checksum=_file_checksum(path))
                _VERIFIED.add(_identity(path, shard["checksum"]))
                recorded += 1
            kept.append(shard)
        if dropped or recorded:
            self.shards, self._ids = kept, None
            self._write_index()
            for name in dropped:
                remove_quietly(self.path / name)  # a checked shard-<hex>.arrow name
        if recorded:
            logger.info(
                "%s %s: recorded the checksums of %d shards written before checksums were kept",
                self.KIND,
                self.path,
                recorded,
            )
        return dropped

    # -- several writers -----------------------------------------------------------------
    def part_files(self) -> list[Path]:
        """The writers' part indexes not yet merged, in rank order."""
        if not self.path.is_dir():
            return []
        found = [(PART_INDEX.fullmatch(p.name), p) for p in self.path.iterdir()]
        return [p for _, p in sorted((int(m.group(1)), p) for m, p in found if m)]

    def _read_part(self, path: Path) -> list[dict] | None:
        """The shards a part index lists, when it was made by this cache's fingerprint."""
        try:
            index = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            return None
        if (
            isinstance(index, dict)
            and index.get("format") == FORMAT
            and index.get("fingerprint") == self.fingerprint
        ):
            return list(self._checked_names(index.get("shards", []), path))
        return None

    def merge_parts(self) -> int:
        """Fold every part index made by this cache's fingerprint into ``index.json`` (rank
        order, written atomically), then delete the parts; a part made by another fingerprint is
        dropped with its shards. Returns how many shards were merged."""
        if self.part is not None:
            raise DatasetError("merge the parts through a handle without a part")
        parts = self.part_files()
        if not parts:
            return 0
        # every part is read and its names checked before anything is written or deleted
        contents: list[tuple[list[dict] | None, list[str]]] = []
        for path in parts:
            try:
                raw = json.loads(path.read_text())
            except (OSError, ValueError):
                contents.append((None, []))  # unreadable: dropped, deletes nothing
                continue
            names = raw.get("shards", []) if isinstance(raw, dict) else []
            names = [s["file"] for s in self._checked_names(names, path)]
            mine = self._read_part(path) if self.fingerprint is not None else None
            contents.append((mine, [] if mine is not None else names))
        listed = {s["file"] for s in self.shards}
        merged, dropped = 0, []
        for shards, others in contents:
            dropped += others
            for shard in shards or []:
                if shard["file"] not in listed:  # already merged before a crash: once only
                    self.shards.append(shard)
                    listed.add(shard["file"])
                    merged += 1
        self._ids = None
        if self.fingerprint is not None:
            self._write_index()
        for path in parts:
            path.unlink(missing_ok=True)
        for name in dropped:
            if name not in listed:
                (self.path / name).unlink(missing_ok=True)  # a checked shard-<hex>.arrow name
        return merged

    # -- reading -----------------------------------------------------------------------
    def _check_current(self) -> None:
        if self.outdated:
            raise CorruptCacheError(
                f"{self.KIND} {self.path} was written by an older version of this project; "
                f"run {self.REBUILD} to rebuild it"
            )

    def load(self, image_ids: Iterable[str]) -> tuple[torch.Tensor, ...]:
        """The ``FIELDS`` tensors of the given images, in the given order (for small sets:
        training reads per row through ``rows``)."""
        rows = self.rows(image_ids)
        items = rows.__getitems__(list(range(len(rows))))  # one Arrow take per shard
        if not items:
            return tuple(torch.empty(0) for _ in self.FIELDS)
        return tuple(torch.stack([item[k] for item in items]) for k in range(len(self.FIELDS)))

    def rows(self, image_ids: Iterable[str], fields: tuple[str, ...] | None = None) -> CacheRows:
        """Per-image reads of the given images' ``fields`` (default: all ``FIELDS``), for a
        DataLoader: nothing is loaded yet."""
        self._check_current()
        return CacheRows(self, list(image_ids), fields)

    def verify(self) -> None:
        """Open every shard once, checking its size and checksum first (raises
        ``CorruptCacheError`` naming a bad one and the command that rebuilds it)."""
        self._check_current()
        for shard in self.shards:
            self._open(shard)


class CacheRows:
    """The ``fields`` tensors of a fixed list of images, one image (or one batch) at a time.

    Shards are opened lazily (memory-mapped) in each process that reads, at most
    ``MAX_OPEN_SHARDS`` at once, so a DataLoader worker holds the rows it reads and not the
    split. Per image it keeps 8 bytes (shard number and row). Picklable.
    """

    MAX_OPEN_SHARDS = 64

    def __init__(
        self, cache: LatentCache, image_ids: list[str], fields: tuple[str, ...] | None = None
    ) -> None:
        unknown = set(fields or ()) - set(cache.FIELDS)
        if unknown:
            raise ValueError(f"the {cache.KIND} has no field(s) {sorted(unknown)}: {cache.FIELDS}")
        where = cache._locations()
        missing = [i for i in image_ids if i not in where]
        if missing:
            raise MissingEntryError(
                f"{len(missing)} image(s) are not in the {cache.KIND} {cache.path} (e.g. "
                f"{missing[0][:12]}...): run {cache.REBUILD}"
            )
        self.cache = LatentCache.__new__(type(cache))  # a light copy: path and shard list
        self.cache.__dict__.update(path=cache.path, shards=cache.shards, _ids=None)
        self.fields = tuple(fields or cache.FIELDS)
        self.shard = np.array([where[i][0] for i in image_ids], dtype=np.int32)
        self.row = np.array([where[i][1] for i in image_ids], dtype=np.int64)

    @property
    def root(self) -> Path:
        return self.cache.path

    def __len__(self) -> int:
        return len(self.shard)

    def _table(self, number: int):
        """(the shard's memory-mapped pyarrow table, {field: per-image shape})."""
        tables = self.__dict__.setdefault("_tables", OrderedDict())
        table = tables.pop(number, None)
        if table is None:
            shard = self.cache._open(self.cache.shards[number])
            shapes = {f: tuple(shard.features[f].shape) for f in self.fields}
            table = (shard.data.table, shapes)
            while len(tables) >= self.MAX_OPEN_SHARDS:
                tables.popitem(last=False)
        tables[number] = table
        return table

    def _read(self, number: int, rows: list[int]) -> dict[str, np.ndarray]:
        """One Arrow ``take`` of ``rows``; the fixed-shape arrays unnested into numpy (what
        ``datasets``' numpy formatting gives, without its per-call overhead)."""
        import pyarrow as pa

        def nested(kind) -> bool:
            return (
                pa.types.is_list(kind)
                or pa.types.is_large_list(kind)
                or (pa.types.is_fixed_size_list(kind))
            )

        try:
            table, shapes = self._table(number)
            taken = table.select(list(self.fields)).take(rows)
            out = {}
            for field in self.fields:
                values = taken.column(field).combine_chunks()
                values = getattr(values, "storage", values)  # the ArrayND extension's lists
                while nested(values.type):
                    values = values.flatten()
                out[field] = values.to_numpy(zero_copy_only=False).reshape(
                    len(rows), *shapes[field]
                )
            return out
        except CorruptCacheError:
            raise
        except Exception as error:  # a file damaged after it was opened
            path = self.cache.path / self.cache.shards[number]["file"]
            raise CorruptCacheError(
                f"{self.cache.KIND} shard {path} is corrupt or missing ({error}); run "
                f"{self.cache.REBUILD}: it drops the damaged shard and encodes its images again"
            ) from error

    def __getitem__(self, i: int) -> tuple[torch.Tensor, ...]:
        return self.__getitems__([i])[0]

    def __getitems__(self, indices: list[int]) -> list[tuple[torch.Tensor, ...]]:
        """Items ``indices``, read with one Arrow take per shard they fall in."""
        by_shard: dict[int, list[int]] = {}
        for k, i in enumerate(indices):
            by_shard.setdefault(int(self.shard[i]), []).append(k)
        out: list = [None] * len(indices)
        for number, ks in by_shard.items():
            batch = self._read(number, [int(self.row[indices[k]]) for k in ks])
            for j, k in enumerate(ks):
                out[k] = tuple(torch.from_numpy(np.array(batch[f][j])) for f in self.fields)
        return out

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.pop("_tables", None)
        return state


class LatentCacheDataset(AbstractDataset[LatentCache, LatentCache]):
    """Kedro dataset whose ``load()`` is a :class:`LatentCache` handle on a directory.

    Nodes extend the cache through the handle (shard by shard, so memory stays bounded);
    ``save(handle)`` only checks that the handle's index is on disk at this path.
    """

    cache_class = LatentCache

    def __init__(self, *, path: str, metadata: dict[str, Any] | None = None):
        self._path = Path(path)
        self.metadata = metadata

    def load(self) -> LatentCache:
        return self.cache_class(self._path)

    def save(self, data: LatentCache) -> None:
        if not isinstance(data, self.cache_class):
            raise DatasetError(
                f"expected a {self.cache_class.__name__} handle, got {type(data).__name__}"
            )
        if data.path.resolve() != self._path.resolve():
            raise DatasetError(f"the handle writes to {data.path}, this dataset is {self._path}")
        if not (self._path / INDEX).is_file():
            raise DatasetError(f"{self._path} has no index: nothing was written")

    def _exists(self) -> bool:
        return (self._path / INDEX).is_file()

    def preview(self, nrows: int = 50) -> TablePreview:
        """A table for kedro-viz: what made the cache, then one row per shard."""
        cache = self.cache_class(self._path)
        rows = [[f"fingerprint.{k}", str(v)] for k, v in (cache.fingerprint or {}).items()]
        rows.append(["images", str(len(cache))])
        rows += [[s["file"], f"{s['count']} images"] for s in cache.shards[:nrows]]
        return TablePreview(
            {"index": list(range(len(rows))), "columns": ["item", "value"], "data": rows}
        )

    def _describe(self) -> dict[str, Any]:
        return {"path": str(self._path)}


class EmbeddingCache(LatentCache):
    """Stage 2's cache: a frozen VLV encoder's caption embeddings and their text-encoder outputs.

    The fingerprint names the encoder's version (a hash of its weights) and the text encoder's,
    so a retrained stage 1 invalidates it.
    """

    FIELDS = ("embeddings", "conditions")
    KIND = "embedding cache"
    REBUILD = "`kedro run --pipeline synthesize`"


class EmbeddingCacheDataset(LatentCacheDataset):
    """Kedro dataset whose ``load()`` is an :class:`EmbeddingCache` handle on a directory."""

    cache_class = EmbeddingCache


# -- extending a cache, from one process or from every rank of `accelerate launch` -----------

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
