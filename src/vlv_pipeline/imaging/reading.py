"""Reading one file of a user's source: what may be read, and how much.

A ``ReadPolicy`` is the trust boundary of the image sources (``sources.py``). By default:

- only regular files are opened, and never a FIFO, socket or device (``not_a_file``): a
  FIFO opened for reading blocks until someone writes to it;
- symbolic links are not followed (``symlink``); with ``follow_links`` they are, and a
  loop or a dangling link is a ``broken_link``;
- a parquet source's path cells must stay inside the parquet file's folder
  (``outside_source``) unless ``allow_outside``;
- no file (folder file, tar member, parquet cell) over ``max_bytes`` is read
  (``too_large``): its size is known before its bytes are (``stat``, the tar header, the
  parquet page headers: ``parquet_pages.py``), so a 3 GB sparse file costs nothing, and a
  parquet row group with a page over the cap is not decompressed.

Ingest and caption screen a source with the policy ``params:ingest`` gives
(``screen_table.read_policy``). Later stages read back only what screening kept and check
every item's sha256 against its image id. They read under ``VERIFIED``: links and parquet
paths outside the folder are followed, because screening may have been allowed to follow
them (``ingest.follow_links``, ``ingest.allow_outside_paths``) and the manifest does not
say which items it reached that way; but nothing is read past the size screening recorded
for the item (``read_back``; ``DEFAULT_MAX_FILE_BYTES`` for a manifest that records none),
and only a regular file is opened. So a kept file swapped for a link to anything, a larger
file or a FIFO is refused from its metadata, unread, and whatever else is read is used only
if its sha256 is the image id: never more than the bytes screening kept.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass

from vlv_pipeline.imaging.checks import Reason

#: ``ingest.max_file_bytes``'s default: far above any photo, far below a machine's memory.
DEFAULT_MAX_FILE_BYTES = 64 * 1024 * 1024

#: ``(reason, detail)``: why an entry was not read.
Refusal = tuple[Reason, str]

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_FLAGS = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
_CHUNK = 1 << 20


@dataclass(frozen=True, slots=True)
class ReadPolicy:
    """What a source may read (see the module docstring); ``max_bytes=None``: no cap.

    ``recorded``: the cap is the size screening recorded for the item (a read-back), not
    ``ingest.max_file_bytes``; only the message of a refusal differs."""

    max_bytes: int | None = DEFAULT_MAX_FILE_BYTES
    follow_links: bool = False
    allow_outside: bool = False
    recorded: bool = False

    def too_large(self, size: int, what: str = "") -> Refusal:
        assert self.max_bytes is not None
        return too_large(size, self.max_bytes, what, self.recorded)


#: Screening's default (``params:ingest``'s defaults).
SCREENING = ReadPolicy()
#: Reading back items screening kept (each then checked against its sha256), when the
#: manifest records no size: links and outside paths as screening may have followed them,
#: and ``ingest.max_file_bytes``'s default cap.
VERIFIED = ReadPolicy(follow_links=True, allow_outside=True)


def read_back(size: int | None, policy: ReadPolicy = VERIFIED) -> ReadPolicy:
    """The policy one kept item is read back with: ``policy`` capped at ``size``, the bytes
    screening read for it (the manifest's ``length``), where it is known."""
    if size is None or size < 0:
        return policy
    return ReadPolicy(size, policy.follow_links, policy.allow_outside, recorded=True)


def read_back_cap(sizes) -> int:
    """The cap a whole read-back works under (a parquet row group's pages, an item without a
    recorded size): the largest recorded size, and at least ``DEFAULT_MAX_FILE_BYTES``
    (screening may have kept larger files under a raised ``ingest.max_file_bytes``)."""
    known = [int(s) for s in sizes if s is not None and s >= 0]
    return max([DEFAULT_MAX_FILE_BYTES, *known])


def mib(size: int) -> str:
    return f"{size / (1 << 20):.4g} MiB"


def too_large(size: int, cap: int, what: str = "", recorded: bool = False) -> Refusal:
    if recorded:
        return (
            Reason.TOO_LARGE,
            f"{what}{size} bytes ({mib(size)}) > {cap} bytes, its size when ingest kept it: "
            "not read (it changed since ingest; re-run ingest if that was meant)",
        )
    return (
        Reason.TOO_LARGE,
        f"{what}{size} bytes ({mib(size)}) > max_file_bytes {cap} ({mib(cap)}): not read "
        "(raise ingest.max_file_bytes to read it)",
    )


def file_kind(mode: int) -> str:
    """``'a FIFO (named pipe)'``, ``'a socket'``, ... for a ``st_mode`` that is not a file."""
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISDIR(mode):
        return "a folder"
    return "not a regular file"


def not_a_file(mode: int) -> Refusal:
    return (Reason.NOT_A_FILE, f"{file_kind(mode)}, not a regular file: never opened")


def _target(path: str | os.PathLike[str]) -> str:
    try:
        return os.readlink(path)
    except OSError:
        return "?"


def link_refused(path: str | os.PathLike[str], what: str = "files") -> Refusal:
    return (
        Reason.SYMLINK,
        f"a symbolic link to {_target(path)}: not followed "
        f"(set ingest.follow_links: true to read linked {what})",
    )


def broken_link(path: str | os.PathLike[str], error: OSError) -> Refusal:
    if error.errno == errno.ELOOP:
        return (Reason.BROKEN_LINK, f"a symbolic link loop (-> {_target(path)})")
    return (
        Reason.BROKEN_LINK,
        f"a dangling symbolic link to {_target(path)} ({error.strerror or error})",
    )


def unreadable(error: OSError) -> Refusal:
    return (Reason.UNREADABLE, f"{type(error).__name__}: {error.strerror or error}")


def read_file(
    path: str | os.PathLike[str], policy: ReadPolicy
) -> tuple[bytes | None, Refusal | None]:
    """``(bytes, None)``, or ``(None, why not)``; never raises for a bad entry.

    The entry is classified from its metadata first, so a link, a FIFO or a file over the
    cap is refused without being opened; then it is opened without following a link
    (unless allowed) and non-blocking, checked again on the open descriptor (the entry may
    have changed in between), and read up to the cap.
    """
    try:
        st = os.stat(path, follow_symlinks=policy.follow_links)
    except OSError as error:
        if os.path.islink(path):
            return None, broken_link(path, error)
        return None, unreadable(error)
    if stat.S_ISLNK(st.st_mode):
        return None, link_refused(path)
    refusal = _refuse(st, policy)
    if refusal is not None:
        return None, refusal
    try:
        fd = os.open(path, _FLAGS | (0 if policy.follow_links else _NOFOLLOW))
    except OSError as error:
        if error.errno == errno.ELOOP and os.path.islink(path):  # became a link meanwhile
            return None, (
                link_refused(path) if not policy.follow_links else broken_link(path, error)
            )
        return None, unreadable(error)
    try:
        st = os.fstat(fd)
        refusal = _refuse(st, policy)
        if refusal is not None:
            return None, refusal
        return _read_bounded(fd, st.st_size, policy)
    except OSError as error:
        return None, unreadable(error)
    finally:
        os.close(fd)


def _refuse(st: os.stat_result, policy: ReadPolicy) -> Refusal | None:
    if not stat.S_ISREG(st.st_mode):
        return not_a_file(st.st_mode)
    if policy.max_bytes is not None and st.st_size > policy.max_bytes:
        return policy.too_large(st.st_size)
    return None


def _read_bounded(fd: int, size: int, policy: ReadPolicy) -> tuple[bytes | None, Refusal | None]:
    """The file's bytes; a file that grows past the cap while read is refused."""
    cap = policy.max_bytes
    parts: list[bytes] = []
    total = 0
    want = size + 1  # one more than the size, to see the end in the same read
    while True:
        limit = want - total if total < want else _CHUNK
        if cap is not None:
            limit = min(limit, cap + 1 - total)
        chunk = os.read(fd, limit)
        if not chunk:
            return b"".join(parts), None
        parts.append(chunk)
        total += len(chunk)
        if cap is not None and total > cap:
            return None, policy.too_large(total, "grew while read: at least ")


def ref_path(root: str | os.PathLike[str], ref: str) -> str | None:
    """The path of a folder source's ``ref`` (``a/b.png``, posix, relative) under ``root``;
    ``None`` for a ref no folder walk gives (empty parts, ``.`` or ``..``, absolute), which
    would name something else than a file under the folder."""
    parts = ref.split("/")
    if any(part in ("", ".", "..") for part in parts):
        return None
    return os.path.join(root, *parts)


def inside(folder: str | os.PathLike[str], path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` lies inside ``folder`` once both are resolved (links, ``..``)."""
    root = os.path.realpath(folder)
    real = os.path.realpath(path)
    return os.path.commonpath([root, real]) == root


def safe_name(name: str) -> str | None:
    """``None`` for a name that is valid UTF-8; else the name with ``\\x`` escapes (a file
    name the OS gave as bytes that are not UTF-8 cannot be stored in a parquet table)."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return os.fsencode(name).decode("utf-8", "backslashreplace")
    return None
