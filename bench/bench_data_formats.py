"""Benchmark: sharded storage candidates on the training loop's access pattern.

    pip install datasets wids litdata webdataset   # the candidates (not project dependencies)
    python bench/bench_data_formats.py [--n 4000] [--shard 500] [--workers 2]

Two roles, the way a 40M-image run needs them:

1. **A cache of per-image float tensors** (VAE posterior mean and std at 384 px: 2 x
   (4, 48, 48) float32 = 72 KiB per image), written shard by shard, read at random by a
   seeded, rank-sharded sampler. Candidates:
   - ``safetensors``: today's format (shard files + a JSON index of ids), read lazily with
     ``safe_open(...).get_slice`` (the reference: what the project would keep if it wrote
     its own reader);
   - ``datasets``: Hugging Face ``datasets``, one Arrow file per shard
     (``ArrowWriter``), memory-mapped and concatenated (``Dataset.from_file``);
   - ``litdata``: ``litdata.optimize`` chunks, read by index from ``StreamingDataset``;
   - ``wids``: webdataset tar shards of ``.npy`` members, read by index with
     ``wids.ShardListDataset`` (mmap, an index built when a shard is opened).
2. **img2dataset's tar shards read in place** ({key}.jpg/.txt/.json): ``wids`` (by index,
   no copy) against the project's streaming ``WebDatasetSource`` (one pass, in order).

For each: write time, bytes on disk, random-access throughput through a DataLoader (the
seeded permutation of one rank of two, ``--workers`` workers, batch 32; median of 3), the
time to the first batch when resuming at mid-epoch, and the peak RSS of the process tree
while reading (DataLoader workers included). Ratios are against ``safetensors`` (role 1)
and the streaming source (role 2), measured in the same run.
"""

from __future__ import annotations

import argparse
import functools
import io
import json
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from procmem import tree_rss_bytes  # noqa: E402


# -- measuring ---------------------------------------------------------------------------
class PeakRSS:
    """Samples the process tree's RSS every 20 ms while the block runs."""

    def __enter__(self):
        self.peak, self._stop = tree_rss_bytes(), threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, tree_rss_bytes())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


class RankPermutation(Sampler[int]):
    """The loop's access pattern: one seeded permutation per epoch, rank r takes every
    world-th index of it, starting at ``start`` (a mid-epoch resume)."""

    def __init__(self, n: int, seed: int, rank: int, world: int, start: int = 0):
        self.n, self.seed, self.rank, self.world, self.start = n, seed, rank, world, start

    def __iter__(self):
        order = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed))
        return iter(order[self.rank :: self.world][self.start :].tolist())

    def __len__(self):
        return len(range(self.rank, self.n, self.world)) - self.start


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


# -- the data ------------------------------------------------------------------------------
def make_latents(n: int, shape: tuple[int, ...], seed: int = 0):
    """Deterministic fake posteriors, generated shard-wise (never all at once)."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        mean = rng.standard_normal(shape, dtype=np.float32)
        yield f"{i:09d}", mean, np.abs(mean) * 0.1 + 0.01


def shards_of(items, size: int):
    shard = []
    for item in items:
        shard.append(item)
        if len(shard) == size:
            yield shard
            shard = []
    if shard:
        yield shard


# -- role 1: tensor caches -------------------------------------------------------------------
class SafetensorsCache(Dataset):
    NAME = "safetensors"

    @staticmethod
    def write(root: Path, items, shard_size: int):
        from safetensors.numpy import save_file

        index = []
        for k, shard in enumerate(shards_of(items, shard_size)):
            name = f"shard-{k:05d}.safetensors"
            save_file(
                {
                    "mean": np.stack([m for _, m, _ in shard]),
                    "std": np.stack([s for _, _, s in shard]),
                },
                str(root / name),
            )
            index.append({"file": name, "count": len(shard)})
        (root / "index.json").write_text(json.dumps(index))

    def __init__(self, root: Path):
        self.root = root
        index = json.loads((root / "index.json").read_text())
        self.files = [e["file"] for e in index]
        self.starts = np.cumsum([0] + [e["count"] for e in index])
        self._open = {}

    def __len__(self):
        return int(self.starts[-1])

    def __getitem__(self, i):
        from safetensors import safe_open

        k = int(np.searchsorted(self.starts, i, side="right") - 1)
        handle = self._open.get(k)
        if handle is None:  # one handle per shard and worker (opened lazily: fork-safe)
            handle = self._open[k] = safe_open(str(self.root / self.files[k]), "pt")
        row = i - int(self.starts[k])
        return handle.get_slice("mean")[row], handle.get_slice("std")[row]


class ArrowCache(Dataset):
    NAME = "datasets"

    @staticmethod
    def features(shape):
        from datasets import Array3D, Features, Value

        return Features(
            {
                "id": Value("string"),
                "mean": Array3D(shape, "float32"),
                "std": Array3D(shape, "float32"),
            }
        )

    @classmethod
    def write(cls, root: Path, items, shard_size: int, shape):
        from datasets.arrow_writer import ArrowWriter

        for k, shard in enumerate(shards_of(items, shard_size)):
            with ArrowWriter(
                features=cls.features(shape), path=str(root / f"shard-{k:05d}.arrow")
            ) as writer:
                writer.write_batch(
                    {
                        "id": [i for i, _, _ in shard],
                        "mean": [m for _, m, _ in shard],
                        "std": [s for _, _, s in shard],
                    }
                )
                writer.finalize()

    def __init__(self, root: Path):
        from datasets import Dataset as HFDataset
        from datasets import concatenate_datasets

        parts = [HFDataset.from_file(str(p)) for p in sorted(root.glob("shard-*.arrow"))]
        self.ds = concatenate_datasets(parts).select_columns(["mean", "std"]).with_format("torch")

    def __len__(self):
        return len(self.ds)

    def __getitem__(self, i):
        row = self.ds[i]
        return row["mean"], row["std"]

    def __getitems__(self, indices):  # the DataLoader fetches a batch in one Arrow take
        rows = self.ds[indices]
        return list(zip(rows["mean"], rows["std"], strict=True))


def _lit_item(i: int, shape) -> dict:
    rng = np.random.default_rng(i)
    mean = rng.standard_normal(shape, dtype=np.float32)
    return {"id": f"{i:09d}", "mean": mean, "std": np.abs(mean) * 0.1 + 0.01}


class LitCache(Dataset):
    NAME = "litdata"

    @staticmethod
    def write(root: Path, n: int, shape, shard_size: int):
        import litdata

        litdata.optimize(
            fn=functools.partial(_lit_item, shape=shape),
            inputs=list(range(n)),
            output_dir=str(root),
            chunk_size=shard_size,
            num_workers=1,
            verbose=False,
        )

    def __init__(self, root: Path):
        import litdata

        self.ds = litdata.StreamingDataset(str(root))

    def __len__(self):
        return len(self.ds)

    def __getitem__(self, i):
        row = self.ds[i]
        return torch.from_numpy(row["mean"]), torch.from_numpy(row["std"])


def _npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


class WidsCache(Dataset):
    NAME = "wids"

    @staticmethod
    def write(root: Path, items, shard_size: int):
        shards = []
        for k, shard in enumerate(shards_of(items, shard_size)):
            path = root / f"shard-{k:05d}.tar"
            with tarfile.open(path, "w") as tar:
                for key, mean, std in shard:
                    _add_member(tar, f"{key}.mean.npy", _npy(mean))
                    _add_member(tar, f"{key}.std.npy", _npy(std))
            shards.append({"url": str(path), "nsamples": len(shard)})
        (root / "shards.json").write_text(json.dumps(shards))

    def __init__(self, root: Path):
        import wids  # noqa: F401  (imported here: forked workers inherit it)

        self.shards = json.loads((root / "shards.json").read_text())
        self.ds = None

    def _dataset(self):
        if self.ds is None:  # opened in the worker
            import wids

            self.ds = wids.ShardListDataset(
                self.shards, localname=lambda url: url, transformations=[], lru_size=64
            )
        return self.ds

    def __len__(self):
        return sum(s["nsamples"] for s in self.shards)

    def __getitem__(self, i):
        sample = self._dataset()[i]
        return (
            torch.from_numpy(np.load(sample[".mean.npy"])),
            torch.from_numpy(np.load(sample[".std.npy"])),
        )


# -- role 2: images in img2dataset tar shards -----------------------------------------------
def write_img2dataset_shards(root: Path, n: int, size: int, shard_size: int) -> list[dict]:
    """JPEGs with .txt and .json members, named as img2dataset names them."""
    from PIL import Image

    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (size // 8, size // 8, 3), dtype=np.uint8)
    shards = []
    for k, keys in enumerate(shards_of(range(n), shard_size)):
        path = root / f"{k:05d}.tar"
        with tarfile.open(path, "w") as tar:
            for i in keys:
                key = f"{k:05d}{i % shard_size:04d}"
                tile = np.roll(base, i, axis=0).repeat(8, 0).repeat(8, 1)
                buf = io.BytesIO()
                Image.fromarray(tile).save(buf, "JPEG", quality=90)
                _add_member(tar, f"{key}.jpg", buf.getvalue())
                _add_member(tar, f"{key}.txt", f"image {i}".encode())
                _add_member(tar, f"{key}.json", json.dumps({"key": key}).encode())
        shards.append({"url": str(path), "nsamples": len(keys)})
    return shards


class WidsImages(Dataset):
    """Random access into the tars in place; decoded to uint8 (C, H, W) per item."""

    def __init__(self, shards):
        import wids  # noqa: F401  (imported here: forked workers inherit it)

        self.shards, self.ds = shards, None

    def __len__(self):
        return sum(s["nsamples"] for s in self.shards)

    def __getitem__(self, i):
        from PIL import Image

        if self.ds is None:
            import wids

            self.ds = wids.ShardListDataset(
                self.shards, localname=lambda url: url, transformations=[], lru_size=64
            )
        sample = self.ds[i]
        image = Image.open(sample[".jpg"]).convert("RGB")
        return torch.from_numpy(np.array(image)).permute(2, 0, 1).contiguous()


class InPlaceTarImages(Dataset):
    """The project's reader (imaging.random_access.TarReader): one scan of each shard's
    headers into (shard, offset, size) arrays, then a seek + read per item."""

    def __init__(self, root: Path, shards):
        from vlv_pipeline.imaging.random_access import byte_reader
        from vlv_pipeline.imaging.webdataset_source import WebDatasetSource

        refs = []
        for k, shard in enumerate(shards):
            refs += [f"{k:05d}.tar/{k:05d}{i:04d}.jpg" for i in range(shard["nsamples"])]
        began = time.perf_counter()
        self.reader = byte_reader(WebDatasetSource(root), refs)
        self.index_s = time.perf_counter() - began

    def __len__(self):
        return len(self.reader)

    def __getitem__(self, i):
        from PIL import Image

        image = Image.open(io.BytesIO(self.reader.read(i))).convert("RGB")
        return torch.from_numpy(np.array(image)).permute(2, 0, 1).contiguous()


def stream_images(root: Path):
    """The project's streaming source: one pass over every shard, decoding each JPEG."""
    from PIL import Image

    from vlv_pipeline.imaging.webdataset_source import WebDatasetSource

    count = 0
    for record in WebDatasetSource(root).iter_records():
        image = Image.open(io.BytesIO(record.data)).convert("RGB")
        torch.from_numpy(np.array(image)).permute(2, 0, 1)
        count += 1
    return count


# -- the runs ---------------------------------------------------------------------------------
def read_rate(dataset: Dataset, workers: int, batch: int, seed: int, start: int = 0):
    """(items/s after the first batch, seconds to the first batch, peak tree RSS); the
    first batch includes starting the workers, so it is reported apart."""
    sampler = RankPermutation(len(dataset), seed, rank=0, world=2, start=start)
    loader = DataLoader(dataset, batch_size=batch, sampler=sampler, num_workers=workers)
    with PeakRSS() as rss:
        began = time.perf_counter()
        first, items = None, 0
        for x in loader:
            if first is None:
                first = time.perf_counter() - began
                began = time.perf_counter()
                continue
            items += len(x[0]) if isinstance(x, list | tuple) else len(x)
        seconds = time.perf_counter() - began
    return items / seconds, first, rss.peak


CACHES = {
    "safetensors": SafetensorsCache,
    "datasets": ArrowCache,
    "litdata": LitCache,
    "wids": WidsCache,
}


def run_cache(name: str, args, tmp: Path) -> dict:
    """Write and read one cache candidate (called in a fresh process per candidate, so that
    one library's imports, threads or start method cannot slow the next one)."""
    shape = (4, args.image_size // 8, args.image_size // 8)
    cls, root = CACHES[name], tmp / name
    root.mkdir()
    began = time.perf_counter()
    if cls is LitCache:
        cls.write(root, args.n, shape, args.shard)
    elif cls is ArrowCache:
        cls.write(root, make_latents(args.n, shape), args.shard, shape)
    else:
        cls.write(root, make_latents(args.n, shape), args.shard)
    wrote = time.perf_counter() - began
    dataset = cls(root)
    if len(dataset) != args.n:
        raise RuntimeError(f"{name} holds {len(dataset)} items, wrote {args.n}")
    expected = next(make_latents(args.n, shape))[1]  # item 0 reads back exactly
    if not np.array_equal(np.asarray(dataset[0][0]), expected):
        raise RuntimeError(f"{name}: item 0 does not read back as written")
    runs = [read_rate(dataset, args.workers, args.batch, seed=r) for r in range(args.repeats)]
    _, resume_first, _ = read_rate(dataset, args.workers, args.batch, seed=0, start=args.n // 4)
    return {
        "name": name,
        "write_s": wrote,
        "disk_bytes": dir_bytes(root),
        "items_per_s": statistics.median(r[0] for r in runs),
        "first_s": statistics.median(r[1] for r in runs),
        "resume_first_s": resume_first,
        "peak_rss": max(r[2] for r in runs),
    }


def run_images(args, tmp: Path) -> dict:
    root = tmp / "img2dataset"
    root.mkdir()
    shards = write_img2dataset_shards(root, args.n, args.image_size, args.shard)
    streams = []
    for _ in range(args.repeats):
        began = time.perf_counter()
        count = stream_images(root)
        streams.append(count / (time.perf_counter() - began))
    row = {"disk_bytes": dir_bytes(root), "stream_per_s": statistics.median(streams)}
    for name, make in (
        ("wids", lambda: WidsImages(shards)),
        ("in_place", lambda: InPlaceTarImages(root, shards)),
    ):
        runs = [read_rate(make(), args.workers, args.batch, seed=r) for r in range(args.repeats)]
        _, resume_first, _ = read_rate(make(), args.workers, args.batch, 0, args.n // 4)
        row[name] = {
            "items_per_s": statistics.median(r[0] for r in runs),
            "first_s": statistics.median(r[1] for r in runs),
            "resume_first_s": resume_first,
            "peak_rss": max(r[2] for r in runs),
        }
    began = time.perf_counter()
    InPlaceTarImages(root, shards)
    row["in_place"]["index_s"] = time.perf_counter() - began
    return row


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=4000)
    parser.add_argument("--shard", type=int, default=500)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--image-size", type=int, default=384)
    parser.add_argument("--only", nargs="*", default=[*CACHES, "images"])
    parser.add_argument("--child", help=argparse.SUPPRESS)  # one candidate, JSON out
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    if args.child:
        with tempfile.TemporaryDirectory(prefix="bench-formats-") as tmp:
            try:
                row = (
                    run_images
                    if args.child == "images"
                    else functools.partial(run_cache, args.child)
                )(args=args, tmp=Path(tmp))
            except Exception as error:  # a candidate that fails is a row too
                row = {"name": args.child, "error": repr(error)[:120]}
        print("ROW " + json.dumps(row))
        return

    rows = {}
    for name in args.only:
        cmd = [
            sys.executable,
            __file__,
            "--child",
            name,
            *(argv if argv is not None else sys.argv[1:]),
        ]
        out = subprocess.run(cmd, capture_output=True, text=True)
        line = next((x for x in out.stdout.splitlines() if x.startswith("ROW ")), None)
        rows[name] = json.loads(line[4:]) if line else {"error": out.stderr.strip()[-200:]}

    shape = (4, args.image_size // 8, args.image_size // 8)
    print(
        f"role 1: {args.n} items of 2 x {shape} float32 "
        f"({2 * 4 * int(np.prod(shape)) / 1024:.0f} KiB/item), shards of {args.shard}, "
        f"rank 0 of 2, batch {args.batch}, {args.workers} workers, median of {args.repeats}; "
        "each candidate in a fresh process"
    )
    ref = rows.get("safetensors", {}).get("items_per_s")
    print(
        f"{'format':12} {'write s':>8} {'disk MB':>8} {'items/s':>9} {'vs ref':>7} "
        f"{'first s':>8} {'resume s':>9} {'peak RSS MB':>12}"
    )
    for name, r in rows.items():
        if name == "images":
            continue
        if "error" in r:
            print(f"{name:12} failed: {r['error']}")
            continue
        print(
            f"{name:12} {r['write_s']:8.2f} {r['disk_bytes'] / 1e6:8.1f} {r['items_per_s']:9.0f} "
            f"{r['items_per_s'] / ref if ref else float('nan'):6.2f}x {r['first_s']:8.3f} "
            f"{r['resume_first_s']:9.3f} {r['peak_rss'] / 1e6:12.0f}"
        )
    r = rows.get("images")
    if r is None:
        return
    if "error" in r:
        print(f"\nrole 2 failed: {r['error']}")
        return
    print(
        f"\nrole 2: {args.n} {args.image_size}-px JPEGs in img2dataset tar shards "
        f"({r['disk_bytes'] / 1e6:.0f} MB), read in place\n"
        f"streaming WebDatasetSource, one pass in order, 1 process: {r['stream_per_s']:.0f} img/s"
    )
    for name, label in (("wids", "wids by index"), ("in_place", "project TarReader")):
        x = r[name]
        print(
            f"{label}, seeded permutation, {args.workers} workers: {x['items_per_s']:.0f} img/s "
            f"({x['items_per_s'] / r['stream_per_s']:.2f}x), first batch {x['first_s']:.3f} s, "
            f"at mid-epoch {x['resume_first_s']:.3f} s, peak RSS {x['peak_rss'] / 1e6:.0f} MB"
            + (f", index {x['index_s']:.3f} s" if "index_s" in x else "")
        )


if __name__ == "__main__":
    main()
