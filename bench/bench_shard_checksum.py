"""Benchmark: what checking the cache shards' checksums costs, against reading the rows.

    python bench/bench_shard_checksum.py [--gb 1.0] [--shard-images 1024] [--batch 64]

A latent cache of about ``--gb`` GB is written to a temporary folder through the project's
own writer (``LatentCache.add``: paper-shaped posteriors, 4x48x48 mean and std in float32,
74 KB per image, ``--shard-images`` per shard, a CRC-32 recorded per shard). Then, in one
process:

- ``verify``: ``LatentCache.verify()`` with nothing verified yet in the process (the first
  read of a run: every shard's size and CRC-32, then its Arrow open);
- ``read``: every row once through ``LatentCache.rows`` in a shuffled order, ``--batch``
  rows at a time (what one epoch of stage 1 reads), shards already verified;
- the hash alone over the same files: CRC-32 (used), SHA-256 and BLAKE2b, for comparison.

Each timing is taken with the files in the page cache (``warm``: just written or read) and,
where the kernel honours ``posix_fadvise(DONTNEED)``, after evicting them (``cold``: read
from the disk). The ratio is verify / read (the share of an epoch's read time that the check
adds once per process).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from vlv_pipeline.datasets import shard_store  # noqa: E402
from vlv_pipeline.datasets.shard_store import LatentCache  # noqa: E402

SHAPE = (4, 48, 48)  # SD 2.1 base at 384 px


def evict(files: list[Path]) -> bool:
    """Drop the files' pages from the page cache; False where the kernel keeps them."""
    if not hasattr(os, "posix_fadvise"):
        return False
    for path in files:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fdatasync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
    return True


def hash_files(files: list[Path], algorithm: str) -> float:
    start = time.perf_counter()
    for path in files:
        if algorithm == "crc32":
            shard_store._file_checksum(path)
            continue
        digest = hashlib.new(algorithm)
        buffer = bytearray(shard_store.CHECKSUM_CHUNK)
        view = memoryview(buffer)
        with open(path, "rb", buffering=0) as file:
            while size := file.readinto(buffer):
                digest.update(view[:size])
        digest.hexdigest()
    return time.perf_counter() - start


def build(folder: Path, gb: float, per_shard: int) -> LatentCache:
    per_image = 2 * int(np.prod(SHAPE)) * 4
    images = int(gb * 1e9 / per_image)
    cache = LatentCache(folder)
    cache.reset({"weights_sha256": "bench", "resolution": 384})
    g = torch.Generator().manual_seed(0)
    for start in range(0, images, per_shard):
        n = min(per_shard, images - start)
        ids = [f"{i:08d}" for i in range(start, start + n)]
        cache.add(ids, torch.randn(n, *SHAPE, generator=g), torch.rand(n, *SHAPE, generator=g))
    return LatentCache(folder)


def verify_time() -> float:
    shard_store._VERIFIED.clear()  # as in a new process
    start = time.perf_counter()
    cache = LatentCache(CACHE)
    cache.verify()
    return time.perf_counter() - start


def read_time(batch: int) -> float:
    cache = LatentCache(CACHE)
    ids = sorted(cache.image_ids())  # opens (and verifies) every shard, outside the timing
    rows = cache.rows(ids)
    order = np.random.default_rng(0).permutation(len(rows))
    start = time.perf_counter()
    for k in range(0, len(order), batch):
        rows.__getitems__([int(i) for i in order[k : k + batch]])
    return time.perf_counter() - start


def main() -> None:
    global CACHE
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--gb", type=float, default=1.0)
    parser.add_argument("--shard-images", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="bench_checksum_") as tmp:
        CACHE = Path(tmp) / "cache"
        start = time.perf_counter()
        cache = build(CACHE, args.gb, args.shard_images)
        write_s = time.perf_counter() - start
        files = [CACHE / s["file"] for s in cache.shards]
        size = sum(p.stat().st_size for p in files)
        print(
            f"cache: {len(cache)} images, {len(files)} shards, {size / 1e9:.3f} GB "
            f"(written in {write_s:.1f} s, CRC-32 included)"
        )
        results = {}
        for state in ("warm", "cold"):
            if state == "cold" and not evict(files):
                print("cold: posix_fadvise is not available here; skipped")
                break
            results[state, "verify"] = verify_time()
            if state == "cold":
                evict(files)
            results[state, "read"] = read_time(args.batch)
        verify_time()  # warm again
        for algorithm in ("crc32", "sha256", "blake2b"):
            results["warm", algorithm] = hash_files(files, algorithm)

        print(f"\n{'':28s}{'seconds':>9s}{'GB/s':>8s}")
        for (state, what), seconds in results.items():
            print(f"{state + ' ' + what:28s}{seconds:9.2f}{size / 1e9 / seconds:8.2f}")
        print()
        for state in ("warm", "cold"):
            if (state, "verify") in results:
                ratio = results[state, "verify"] / results[state, "read"]
                print(
                    f"{state}: verify {results[state, 'verify']:.2f} s / read every row "
                    f"{results[state, 'read']:.2f} s = {ratio:.2f}x"
                )


CACHE: Path

if __name__ == "__main__":
    main()
