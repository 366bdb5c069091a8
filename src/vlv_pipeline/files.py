"""Writing files: one message for a write that failed, used by every writer in the project
(model directories, caches, training checkpoints, the catalog's file datasets), and the
temporaries an atomic write goes through.

An atomic write puts its bytes under a hidden temporary name in the destination's own folder
(``temporary_for``), then renames it into place (``os.replace``: all or nothing on one file
system). The temporary's name says who wrote it::

    .<name>.tmp-<machine>-<pid>-<random><suffix>

so a later run can tell a temporary that belongs to no live writer (``is_stale``) and remove it
(``remove_stale``), without touching one that another process is writing right now.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import socket
import time
import uuid
from collections.abc import Iterable
from pathlib import Path

# A writer that stopped touching its temporary this long ago is gone, whoever it was: no
# project write (a shard, a parquet file, a model file) pauses between two writes for an hour.
STALE_AFTER_S = 3600.0

# the names ``temporary_for`` gives, and the older ones (``.<name>.tmp``, ``.<name>.tmp-<hex>``)
_TEMPORARY = re.compile(
    r"\.(?P<name>.+)\.tmp"
    r"(?:-(?:(?P<machine>[A-Za-z0-9_.]+)-(?P<pid>\d+)-)?[0-9a-f]{8,12}(?:\.\w+)?)?"
)


def unwritable(path: Path, error: OSError) -> str:
    """A message for an OSError while writing under ``path`` (disk full, permissions...)."""
    hint = {
        errno.ENOSPC: "the disk is full: free space there or point the dataset elsewhere",
        errno.EDQUOT: "the disk quota is exceeded: free space or point the dataset elsewhere",
        errno.EACCES: "permission denied: make it writable or point the dataset elsewhere",
        errno.EPERM: "operation not permitted: make it writable or point the dataset elsewhere",
        errno.EROFS: "the file system is read-only: point the dataset elsewhere",
    }.get(error.errno, "check the path and the disk")
    return f"could not write {path}: {error.strerror or error} ({hint}); nothing was saved there"


def _machine() -> str:
    """This process's machine and PID namespace: a PID means something only within both."""
    host = re.sub(r"[^A-Za-z0-9_.]", "_", socket.gethostname()) or "host"
    try:
        namespace = os.readlink("/proc/self/ns/pid").strip("pid:[]")
    except OSError:
        namespace = "0"
    return f"{host}.{namespace}"


MACHINE = _machine()


def temporary_for(final: Path) -> Path:
    """A hidden sibling of ``final`` to write it under before ``os.replace(tmp, final)``. It
    keeps ``final``'s suffix (writers that pick a format by the suffix still pick the right
    one) and names this machine and process (``is_stale``)."""
    final = Path(final)
    return final.with_name(
        f".{final.name}.tmp-{MACHINE}-{os.getpid()}-{uuid.uuid4().hex[:8]}{final.suffix}"
    )


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def _last_touched(path: Path) -> float:
    """The newest mtime of ``path`` and, for a folder, of anything under it."""
    times = [path.lstat().st_mtime]
    if path.is_dir() and not path.is_symlink():
        times += [p.lstat().st_mtime for p in path.rglob("*")]
    return max(times)


def is_stale(path: Path, now: float | None = None, stale_after_s: float = STALE_AFTER_S) -> bool:
    """Whether ``path`` is a temporary that no live writer will finish: named by a process of
    this machine (and PID namespace) that is no longer running, or untouched for
    ``stale_after_s`` (another machine's, or one named before temporaries named their
    writer). A temporary of a running process here is never stale, even an old one."""
    found = _TEMPORARY.fullmatch(path.name)
    if not found:
        return False
    try:
        age = (time.time() if now is None else now) - _last_touched(path)
    except FileNotFoundError:  # its writer just renamed or removed it
        return False
    if found["machine"] == MACHINE:
        return not _pid_alive(int(found["pid"]))
    return age > stale_after_s


def remove_quietly(path: Path) -> None:
    """Remove a file or a folder tree; never raises (clean-up after a failed write)."""
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    except OSError:
        pass


def remove_stale(candidates: Iterable[Path]) -> list[Path]:
    """Remove the stale temporaries (``is_stale``) among ``candidates``; returns them."""
    removed = []
    for path in candidates:
        if is_stale(path):
            remove_quietly(path)
            removed.append(path)
    return removed


def fsync_file(path: Path) -> None:
    """Flush a written file to the disk before it is renamed into place (so a crash cannot
    leave a renamed but empty file); a write error that the disk reports late shows here."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
