"""Shared by the memory benchmarks: resident memory of a whole process tree."""

from __future__ import annotations

import os


def tree_rss_bytes(pid: int | None = None) -> int:
    """Resident memory of a process and all its descendants, DataLoader workers included
    (Linux /proc)."""
    pid = pid or os.getpid()
    total, stack = 0, [pid]
    while stack:
        p = stack.pop()
        try:
            with open(f"/proc/{p}/statm") as f:
                total += int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    stack += [int(c) for c in f.read().split()]
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total
