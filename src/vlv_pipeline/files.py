"""Writing files: one message for a write that failed, used by every writer in the project
(model directories, caches, training checkpoints, the catalog's file datasets), and the
temporaries an atomic write goes through.

An atomic write (``atomic_target``) puts its bytes, a file or a folder, under a hidden
temporary name in the destination's own folder (``temporary_for``), flushes them to the disk
(``fsync_tree``: every file, and every folder's entries), then renames them into place
(``replace_tree``: ``os.replace``, all or nothing on one file system) and flushes the folder
that holds the new name. The temporary's name says who wrote it::

    .<name>.tmp-<machine>-<pid>-<random><suffix>

so a later run can tell a temporary that belongs to no live writer (``is_stale``) and remove it
(``remove_stale``), without touching one that another process is writing right now. Clean-up
never raises: what it cannot remove (another user's file) it leaves.

A folder that replaces an existing one takes two renames: the previous folder is moved aside
under a backup name, ``.<name>.old-<machine>-<pid>-<random>`` (never a temporary's, so no
clean-up of temporaries removes it), the new one is renamed in, then the backup is removed.
A process killed between the two renames leaves no folder at ``<name>``, only the backup: the
next save or load of it puts the backup back (``restore_backup``).
"""

from __future__ import annotations

import errno
import glob
import logging
import os
import re
import shutil
import socket
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

logger = logging.getLogger(__name__)

# A writer that stopped touching its temporary this long ago is gone, whoever it was: no
# project write (a shard, a parquet file, a model file) pauses between two writes for an hour.
STALE_AFTER_S = 3600.0

# A backup of another machine's writer, moved aside this long ago, is abandoned: its two
# renames follow each other at once (a backup's age is its rename's: its ctime).
BACKUP_ABANDONED_AFTER_S = 60.0

# the names ``temporary_for`` gives, and the older ones (``.<name>.tmp``, ``.<name>.tmp-<hex>``,
# a training checkpoint's ``.tmp-checkpoint-<step>``)
_TEMPORARY = re.compile(
    r"\.(?P<name>.+)\.tmp"
    r"(?:-(?:(?P<machine>[A-Za-z0-9_.]+)-(?P<pid>\d+)-)?[0-9a-f]{8,12}(?:\.\w+)?)?"
    r"|\.tmp-checkpoint-\d+"
)
# the names ``backup_for`` gives
_BACKUP = re.compile(r"\.(?P<name>.+)\.old-(?P<machine>[A-Za-z0-9_.]+)-(?P<pid>\d+)-[0-9a-f]{8}")


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


def backup_for(final: Path) -> Path:
    """The hidden sibling that an existing folder ``final`` is moved to while a new one is
    renamed in (``replace_tree``); like a temporary, it names its writer, but it is not one:
    no clean-up of temporaries removes it (``restore_backup`` does)."""
    final = Path(final)
    return final.with_name(f".{final.name}.old-{MACHINE}-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):  # gone, or no PID at all
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
    if found["machine"] == MACHINE:
        return _there(path) and not _pid_alive(int(found["pid"]))
    try:
        age = (time.time() if now is None else now) - _last_touched(path)
    except OSError:  # its writer just renamed or removed it, or it is not ours to read
        return False
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


def _there(path: Path) -> bool:
    """Whether anything (a link too) is at ``path``; one that cannot be looked at counts."""
    try:
        return path.exists() or path.is_symlink()
    except OSError:
        return True


def remove_stale(candidates: Iterable[Path]) -> list[Path]:
    """Remove the stale temporaries (``is_stale``) among ``candidates``; returns those removed.
    Never raises: one it cannot remove (another user's) stays, and is not returned."""
    removed = []
    try:
        for path in candidates:
            try:
                if is_stale(path):
                    remove_quietly(path)
                    if not _there(path):
                        removed.append(path)
            except OSError:  # not ours to look at: left as it is
                continue
    except OSError:  # a folder that cannot be listed: nothing of it to remove
        pass
    return removed


def fsync_file(path: Path) -> None:
    """Flush a written file to the disk before it is renamed into place (so a crash cannot
    leave a renamed but empty file); a write error that the disk reports late shows here."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def fsync_folder(path: Path) -> None:
    """Flush a folder's entries (the names created or renamed in it) to the disk. Best effort:
    some file systems cannot fsync a folder, and it never raises (the files are already
    flushed, and a rename already done cannot be undone here)."""
    try:
        descriptor = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def fsync_tree(path: Path) -> None:
    """Flush ``path`` to the disk: a file, or a folder with every file and folder under it
    (links are not followed). Raises what a file's flush raises (a late write error)."""
    path = Path(path)
    if path.is_symlink() or not path.is_dir():
        fsync_file(path)
        return
    for root, folders, names in os.walk(path):
        for name in names:
            file = Path(root, name)
            if not file.is_symlink():
                fsync_file(file)
        for name in folders:
            if not Path(root, name).is_symlink():
                fsync_folder(Path(root, name))
    fsync_folder(path)


# --------------------------------------------------------------------------- replacing


def replace_tree(tmp: Path, final: Path) -> None:
    """Put the finished ``tmp`` (a file or a folder) at ``final``, then flush the folder(s)
    holding the names. One ``os.replace`` for a file, or a folder where nothing is; a folder
    replacing what is there is swapped: the previous moved aside (``backup_for``), the new
    one renamed in, the backup removed. If the second rename fails, the previous is put back;
    if the process dies between the two, ``restore_backup`` puts it back later."""
    tmp, final = Path(tmp), Path(final)
    if tmp.is_dir() and not tmp.is_symlink() and _there(final):
        old = backup_for(final)
        os.replace(final, old)
        try:
            os.replace(tmp, final)
        except BaseException:
            os.replace(old, final)  # put the previous back
            raise
        fsync_folder(final.parent)
        remove_quietly(old)
        restore_backup(final)  # and the backups earlier swaps of it left behind
    else:
        os.replace(tmp, final)
        fsync_folder(final.parent)
    if tmp.parent != final.parent:
        fsync_folder(tmp.parent)


def _abandoned(backup: Path) -> bool:
    """Whether no live writer will finish the swap that moved ``backup`` aside: its process,
    on this machine, is gone; another machine's, moved aside ``BACKUP_ABANDONED_AFTER_S`` ago."""
    found = _BACKUP.fullmatch(backup.name)
    if found is None:
        return False
    if found["machine"] == MACHINE:
        return not _pid_alive(int(found["pid"]))
    try:
        return time.time() - backup.lstat().st_ctime > BACKUP_ABANDONED_AFTER_S
    except OSError:
        return False


def restore_backup(final: Path) -> Path | None:
    """After a save killed between its two renames (``replace_tree``): put the previous
    folder, left as a backup, back at ``final`` when nothing is there; remove the backups no
    writer will come back for once ``final`` is there. Returns the backup put back, if any.
    Never raises."""
    final = Path(final)
    try:
        found = final.parent.glob(f".{glob.escape(final.name)}.old-*")
        backups = [b for b in found if _BACKUP.fullmatch(b.name) and _abandoned(b)]
        if not backups:
            return None
        restored = None
        if not _there(final):
            restored = max(backups, key=lambda b: b.lstat().st_ctime)
            os.replace(restored, final)
            backups.remove(restored)
            logger.warning(
                "%s was missing: a save that was replacing it stopped between its two renames; "
                "put the previous one back from %s",
                final,
                restored.name,
            )
        for backup in backups:
            remove_quietly(backup)
        return restored
    except OSError:  # not ours to move: the load or save that follows says what is wrong
        return None


def restore_backups(folder: Path) -> list[Path]:
    """``restore_backup`` for every name under ``folder`` that has a backup left."""
    try:
        names = {
            found["name"]
            for backup in Path(folder).glob(".*.old-*")
            if (found := _BACKUP.fullmatch(backup.name))
        }
    except OSError:
        return []
    restored = [restore_backup(Path(folder, name)) for name in sorted(names)]
    return [r for r in restored if r is not None]


def _failure(error: type[Exception], final: Path, cause: OSError) -> Exception:
    message = unwritable(final, cause)
    if issubclass(error, OSError):
        return error(cause.errno, message)
    return error(message)


@contextmanager
def atomic_target(
    final: Path,
    *,
    beside: Path | None = None,
    sweep: bool = True,
    error: type[Exception] | None = None,
) -> Iterator[Path]:
    """Write ``final`` atomically: yields a temporary path (``temporary_for``) that the body
    writes, a file or a folder; then it is flushed (``fsync_tree``) and renamed into place
    (``replace_tree``). If anything fails the temporary is removed and ``final`` is as it was;
    an ``OSError`` (a full disk, permissions) becomes ``error`` (default ``errors.SaveError``)
    with ``unwritable``'s message. Before writing, when nothing is at ``final``, a backup a
    killed swap left is put back (``restore_backup``) and, with ``sweep``, the stale
    temporaries of ``final`` are removed.

    ``beside``: the folder the temporary goes in (default ``final``'s); on the same file
    system. A versioned dataset writes beside its versions, not in the new version's folder."""
    from vlv_pipeline.errors import SaveError

    final = Path(final)
    folder = final.parent if beside is None else Path(beside)
    if not _there(final):  # only a folder's swap leaves a backup, and only with no folder
        restore_backup(final)
    if sweep:
        remove_stale(folder.glob(f".{glob.escape(final.name)}.tmp*"))
    tmp = temporary_for(folder / final.name)
    try:
        yield tmp
        if _there(tmp):
            fsync_tree(tmp)
        replace_tree(tmp, final)
    except OSError as cause:  # disk full, permissions, quota: say where, keep nothing
        raise _failure(error or SaveError, final, cause) from cause
    finally:
        if _there(tmp):
            remove_quietly(tmp)
