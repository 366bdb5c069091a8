"""The shard store: ``LatentCache``, a handle on a sharded cache of per-image tensors (VAE
posteriors: mean and std per image), keyed by image_id, and ``EmbeddingCache``, stage 2's.
The files are those of ``shard_format``; ``shard_reader.CacheRows`` reads rows for training.

Shards are memory-mapped Arrow files (``datasets.Dataset.from_file``), so reading a row
touches only that row's pages and several processes share the page cache. Each shard lists
its own image ids; the index names shards only, so rewriting it after a shard costs
O(shards), not O(images). Shards are written one at a time, each to a temporary name,
flushed to disk, then renamed, and the index is rewritten (atomically, flushed too) after
every shard, so an interrupted encoding keeps every finished shard and a rerun continues from
there. The fingerprint
records what made the latents (the VAE's weights hash, its config, the resolution); a cache
with another fingerprint, or of an older format, is discarded rather than mixed.

What an index says is not trusted blindly: its shard names and entries are checked
(``shard_format.checked_shards``), and each shard's size and CRC-32 are checked once per
process before Arrow reads it. Starting
afresh (another fingerprint) deletes only ``shard-<hex>.arrow`` files (and the earlier
layout's ``shard-<hex>.safetensors``), never anything else in the folder. Writes go through hidden
temporaries named by their writer (``vlv_pipeline.files``); the run that extends the cache
removes the stale ones and drops missing or damaged shards, whose images it encodes again.
"""

from __future__ import annotations

import json
import logging
import uuid
import zlib
from collections.abc import Iterable
from pathlib import Path

import torch
from kedro.io import DatasetError

from vlv_pipeline.datasets.shard_format import (
    FORMAT,
    INDEX,
    OWN_FILE,
    PART_INDEX,
    CorruptCacheError,
    arrow_features,
    checked_shards,
    close_quietly,
    write_atomic,
)
from vlv_pipeline.datasets.shard_reader import CacheRows
from vlv_pipeline.files import atomic_target, remove_quietly, remove_stale

logger = logging.getLogger(__name__)

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
            [] if self.outdated else checked_shards(self, index.get("shards"), index_path)
        )
        self._ids: dict[str, tuple[int, int]] | None = None
        self._part_shards: list[dict] = []
        if part is not None and self.fingerprint is not None:
            own = self._read_part(self.path / f"index.rank{part}.json")
            if own is not None:  # a part this writer left unmerged: continue it
                self._part_shards = list(own)
                listed = {s["file"] for s in self.shards}
                self.shards = self.shards + [s for s in own if s["file"] not in listed]

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
            writer = ArrowWriter(path=str(tmp), features=arrow_features(self.FIELDS, tensors))
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
                close_quietly(writer)  # never raises: the error to report is the write's
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
        write_atomic(
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
            return list(checked_shards(self, index.get("shards", []), path))
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
            names = [s["file"] for s in checked_shards(self, names, path)]
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


class EmbeddingCache(LatentCache):
    """Stage 2's cache: a frozen VLV encoder's caption embeddings and their text-encoder outputs.

    The fingerprint names the encoder's version (a hash of its weights) and the text encoder's,
    so a retrained stage 1 invalidates it.
    """

    FIELDS = ("embeddings", "conditions")
    KIND = "embedding cache"
    REBUILD = "`kedro run --pipeline synthesize`"
