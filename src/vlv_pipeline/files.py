"""Writing files: one message for a write that failed, used by every writer in the project
(model directories, caches, training checkpoints)."""

from __future__ import annotations

from pathlib import Path


def unwritable(path: Path, error: OSError) -> str:
    """A message for an OSError while writing under ``path`` (disk full, permissions...)."""
    import errno

    hint = {
        errno.ENOSPC: "the disk is full: free space there or point the dataset elsewhere",
        errno.EDQUOT: "the disk quota is exceeded: free space or point the dataset elsewhere",
        errno.EACCES: "permission denied: make it writable or point the dataset elsewhere",
        errno.EPERM: "operation not permitted: make it writable or point the dataset elsewhere",
        errno.EROFS: "the file system is read-only: point the dataset elsewhere",
    }.get(error.errno, "check the path and the disk")
    return f"could not write {path}: {error.strerror or error} ({hint}); nothing was saved there"
