"""The ``webdataset`` image source: tar shards as img2dataset writes them, read as streams
(``WebDatasetSource``); the contract it keeps is in ``sources.py``."""

from __future__ import annotations

import glob
import json
import logging
import os
import stat
import tarfile
import zlib
from collections.abc import Container, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from vlv_pipeline.distributed import block
from vlv_pipeline.errors import MissingInputError
from vlv_pipeline.imaging.checks import Reason
from vlv_pipeline.imaging.reading import (
    VERIFIED,
    ReadPolicy,
    Refusal,
    broken_link,
    link_refused,
    not_a_file,
    unreadable,
)
from vlv_pipeline.imaging.sources import (
    ImageSource,
    Only,
    Part,
    Record,
    clean_caption,
    is_image_name,
    policy_for,
    watermark_of,
)

logger = logging.getLogger(__name__)

_WDS_META_EXTENSIONS = frozenset({"txt", "json", "cls"})


def _wds_key_ext(name: str) -> tuple[str, str]:
    """webdataset convention: the extension starts at the first dot of the basename."""
    head, _, base = name.rpartition("/")
    stem, dot, ext = base.partition(".")
    key = f"{head}/{stem}" if head else stem
    return key, ext if dot else ""


class WebDatasetSource(ImageSource):
    """Tar shards as img2dataset writes them: ``key.jpg`` + ``key.txt`` + ``key.json``.

    ``path`` is a tar file, a directory of ``*.tar`` files, or a glob. Each shard is read
    as a stream (``tarfile`` mode ``r|*``), grouping consecutive members by key. The caption
    is ``key.txt``, else a string ``caption`` field of ``key.json``; a number ``pwatermark``
    there is the record's ``watermark``. A shard that cannot be
    read to the end gives one ``corrupt`` record (ref = the shard) after its good members.
    A shard found in the directory or by the glob that the policy refuses (a link, a FIFO)
    gives one record (ref = the shard) and is never opened; a member over the byte cap, or
    one that is not a file (a link, a device), gives its own record and is never read.
    """

    kind = "webdataset"

    def _candidates(self) -> list[tuple[str, Path, bool]]:
        """``(name used in refs, path, named)`` for every ``*.tar`` found, sorted; ``named``:
        the path itself names the shard (then a link is followed, as the user named it)."""
        path = Path(self.path)
        if path.is_file():
            return [(path.name, path, True)]
        if path.is_dir():
            return [(p.name, p, False) for p in sorted(path.glob("*.tar"))]
        matches = sorted(Path(p) for p in glob.glob(self.path))
        matches = [p for p in matches if not p.is_dir()]
        if not matches:
            return []
        root = Path(os.path.commonpath([p.parent for p in matches]))
        return [(p.relative_to(root).as_posix(), p, False) for p in matches]

    def _entries(self, policy: ReadPolicy) -> list[tuple[str, Path, Refusal | None]]:
        """Every shard found, with the policy's refusal (None: read it)."""
        entries = []
        for name, path, named in self._candidates():
            refusal = None
            try:
                st = os.stat(path, follow_symlinks=named or policy.follow_links)
                if stat.S_ISLNK(st.st_mode):
                    refusal = link_refused(path, "shards")
                elif stat.S_ISDIR(st.st_mode):
                    continue  # a folder the glob matched: not a shard
                elif not stat.S_ISREG(st.st_mode):
                    refusal = not_a_file(st.st_mode)
            except OSError as error:
                refusal = broken_link(path, error) if path.is_symlink() else unreadable(error)
            entries.append((name, path, refusal))
        return entries

    def shards(self) -> list[tuple[str, Path]]:
        """``(name used in refs, path)`` for every readable shard, sorted (links followed)."""
        return [(name, path) for name, path, refusal in self._entries(VERIFIED) if refusal is None]

    def exists(self) -> bool:
        return bool(self.shards())

    def _records(self, only: Only, part: Part, policy: ReadPolicy) -> Iterator[Record]:
        shards = self._entries(policy)
        if not shards:
            raise MissingInputError(f"webdataset source {self.path!r}: no tar shards found")
        chosen = block(len(shards), part)
        for name, path, refusal in shards[chosen.start : chosen.stop]:
            if refusal is not None:
                if only is None:
                    yield Record(name, None, rejected=refusal)
                continue
            yield from self._iter_shard(name, path, only, policy)

    def _iter_shard(
        self, shard: str, path: Path, only: Container[str] | None, policy: ReadPolicy
    ) -> Iterator[Record]:
        current: str | None = None
        group = _Group()
        seen = 0
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
            with os.fdopen(fd, "rb") as raw:
                if not stat.S_ISREG(os.fstat(raw.fileno()).st_mode):  # replaced meanwhile
                    yield Record(shard, None, rejected=not_a_file(os.fstat(raw.fileno()).st_mode))
                    return
                with tarfile.open(name=os.fspath(path), mode="r|*", fileobj=raw) as tar:
                    # offsets in a compressed stream are not file offsets: no location then
                    plain = getattr(tar.fileobj, "comptype", None) == "tar"
                    for member in tar:
                        if member.isdir():
                            continue
                        base = member.name.rsplit("/", 1)[-1]
                        if base.startswith("."):
                            continue
                        key, ext = _wds_key_ext(member.name)
                        if key != current:
                            if current is not None:
                                yield from self._flush(shard, current, group, only)
                            current, group = key, _Group()
                        seen += 1
                        if only is None:  # images and their caption/metadata
                            needed = is_image_name(member.name) or ext in _WDS_META_EXTENSIONS
                        else:  # just the wanted images
                            needed = f"{shard}/{member.name}" in only and is_image_name(member.name)
                        group.members[ext] = None
                        mine = policy_for(policy, only, f"{shard}/{member.name}")
                        if not member.isfile():
                            group.refused[ext] = (Reason.NOT_A_FILE, _member_kind(member))
                        elif needed and mine.max_bytes is not None and member.size > mine.max_bytes:
                            group.refused[ext] = mine.too_large(member.size, "a tar member of ")
                        elif needed:
                            fileobj = tar.extractfile(member)
                            group.members[ext] = fileobj.read() if fileobj is not None else None
                        if plain and member.isfile():
                            group.where[ext] = (member.offset_data, member.size)
        except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
            if current is not None:
                yield from self._flush(shard, current, group, only)
            yield Record(
                shard,
                None,
                rejected=(Reason.CORRUPT, f"tar shard unreadable after {seen} members: {exc}"),
            )
            return
        if current is not None:
            yield from self._flush(shard, current, group, only)

    def _flush(
        self, shard: str, key: str, group: _Group, only: Container[str] | None = None
    ) -> Iterator[Record]:
        members, refused = group.members, group.refused
        for ext in _WDS_META_EXTENSIONS & refused.keys():
            logger.warning(
                "%s/%s.%s: %s; its caption is not read", shard, key, ext, refused[ext][1]
            )
        meta = None
        if members.get("json") is not None:
            try:
                meta = json.loads(members["json"])
            except ValueError:
                pass
        meta = meta if isinstance(meta, dict) else {}
        caption = None
        if members.get("txt") is not None:
            caption = clean_caption(members["txt"].decode("utf-8", errors="replace"))
        elif isinstance(meta.get("caption"), str):
            caption = clean_caption(meta["caption"])
        watermark = watermark_of(meta)
        images = [ext for ext in members if is_image_name(f"x.{ext}")]
        for ext in images:
            ref = f"{shard}/{key}.{ext}"
            if only is not None and ref not in only:
                continue
            if ext in refused:
                yield Record(ref, None, caption, rejected=refused[ext])
                continue
            yield Record(
                ref, members[ext], caption, location=group.where.get(ext), watermark=watermark
            )
        if images or only is not None:
            return
        others = [ext for ext in members if ext not in _WDS_META_EXTENSIONS]
        for ext in others:
            ref = f"{shard}/{key}.{ext}" if ext else f"{shard}/{key}"
            detail = f"extension .{ext} is not an image type" if ext else "no extension"
            yield Record(ref, None, caption, rejected=(Reason.UNSUPPORTED_EXTENSION, detail))
        if not others:
            found = ", ".join(sorted(members))
            yield Record(
                f"{shard}/{key}",
                None,
                caption,
                rejected=(Reason.UNSUPPORTED_EXTENSION, f"no image member (has {found})"),
            )


@dataclass(slots=True)
class _Group:
    """The members of one webdataset key, as read: bytes (None when not read), refusals,
    and where each member's bytes lie in a plain tar."""

    members: dict[str, bytes | None] = field(default_factory=dict)
    refused: dict[str, Refusal] = field(default_factory=dict)
    where: dict[str, tuple[int, int]] = field(default_factory=dict)


def _member_kind(member: tarfile.TarInfo) -> str:
    if member.issym():
        what = f"a symbolic link to {member.linkname}"
    elif member.islnk():
        what = f"a hard link to {member.linkname}"
    elif member.isfifo():
        what = "a FIFO"
    elif member.isdev():
        what = "a device"
    else:
        what = "not a regular file"
    return f"a tar member that is {what}: not read"
