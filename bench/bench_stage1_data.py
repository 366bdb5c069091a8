"""Benchmark: stage 1's per-item data path against the old whole-split-in-memory path.

    python bench/bench_stage1_data.py [--images 4500] [--size 32] [--batch 64] [--epochs 32]

A shapes world of ``--images`` images (the default world's size and resolution) is
rendered into a temporary folder, ingested, and its latents cached under the shipped
teacher's VAE, as ``make run`` does. Then batches are drawn through the training loop's
DataLoader (seeded shuffle, ``--batch``, ``drop_last``) for ``--epochs`` epochs, no model:

- ``reference``: the old path: every image decoded up front into float32 tensors, every
  latent stacked, a ``TensorDataset`` (the decode time is reported apart);
- ``streamed``: ``load_stage1_data``'s splits: uint8 pixels decoded per item, latents read
  per row, a 256 MB ``BoundedCache``; with 0 and 2 DataLoader workers.

Both with pixels (an encoder that reads images) and without (the default encoder reads the
cached latents). Reports images/s in the first epoch (decoding) and in the later ones
(from the bounded cache), and the total time of all epochs, the reference's up-front decode
included; the ratio is the reference's total over ours (> 1: ours is faster). Median of 3.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import torch
from torch.utils.data import DataLoader, TensorDataset

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from vlv_pipeline.datasets.image_source import ImageSourceDataset  # noqa: E402
from vlv_pipeline.datasets.shard_store import LatentCache  # noqa: E402
from vlv_pipeline.imaging.screen_table import screen_images  # noqa: E402
from vlv_pipeline.imaging.sources import iter_images  # noqa: E402
from vlv_pipeline.params.cache import CacheParams  # noqa: E402
from vlv_pipeline.params.ingest import IngestParams  # noqa: E402
from vlv_pipeline.params.stage1 import Stage1Params  # noqa: E402
from vlv_pipeline.params.t2i import T2IParams  # noqa: E402
from vlv_pipeline.params.world import WorldParams  # noqa: E402
from vlv_pipeline.pipelines.cache.nodes import encode_latents  # noqa: E402
from vlv_pipeline.pipelines.ingest.nodes import build_manifest  # noqa: E402
from vlv_pipeline.pipelines.stage1.nodes import (  # noqa: E402
    load_stage1_data,
    split_references,
)
from vlv_pipeline.world.data import pil_to_tensor  # noqa: E402
from vlv_pipeline.world.generate import generate_labels, render_images  # noqa: E402

TEACHER = ROOT / "src/vlv_pipeline/assets/teacher"


def make_world(root: Path, images: int, size: int):
    world = WorldParams(image_size=size, counts={"train": images, "val": 0, "test": 0})
    labels = generate_labels(world)
    labels.to_parquet(root / "labels.parquet")
    dataset = ImageSourceDataset(
        kind="folder",
        path=str(root / "images"),
        captions=str(root / "labels.parquet"),
        writable=True,
    )
    dataset.save(render_images(labels, world))
    source = dataset.load()
    ingest = IngestParams(min_side=8)
    manifest = build_manifest(screen_images(source, ingest), ingest)
    cache = encode_latents(
        source,
        manifest,
        LatentCache(root / "latents"),
        CacheParams(batch_size=256),  # the T2I model's own VAE
        T2IParams(model=str(TEACHER)),
    )
    return source, manifest, cache


def rate(dataset, batch: int, epochs: int, workers: int) -> tuple[float, float, float]:
    """(images/s in epoch 1, images/s in the later epochs, seconds for all epochs)."""
    loader = DataLoader(
        dataset,
        batch_size=batch,
        shuffle=True,
        drop_last=True,
        num_workers=workers,
        persistent_workers=workers > 0,
        generator=torch.Generator().manual_seed(0),
    )
    began = time.perf_counter()
    marks, seen = [], 0
    for _ in range(epochs):
        for items in loader:
            seen += len(items[1])
        marks.append((time.perf_counter(), seen))
    first = marks[0][1] / (marks[0][0] - began)
    later = (marks[-1][1] - marks[0][1]) / (marks[-1][0] - marks[0][0])
    return first, later, marks[-1][0] - began


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=4500)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="bench-stage1-data-") as tmp:
        source, manifest, cache = make_world(Path(tmp), args.images, args.size)
        params = Stage1Params(
            encoder={"backbone": "small", "num_queries": 4},
            training={"steps": 1, "batch_size": args.batch, "learning_rate": 1e-3},
        )
        began = time.perf_counter()
        ids = sorted(manifest["image_id"])
        decoded = {i: pil_to_tensor(image) for i, image in iter_images(source, manifest)}
        pixels = torch.stack([decoded[i] for i in ids])
        mean, std = cache.load(ids)
        load_s = time.perf_counter() - began
        split = load_stage1_data(source, manifest, cache, params, T2IParams(model=str(TEACHER)))[
            "train"
        ]
        tracemalloc.start()
        held = split_references(source, manifest, LatentCache(cache.path), None)
        per_image, peak_per_image = (b / len(manifest) for b in tracemalloc.get_traced_memory())
        tracemalloc.stop()
        del held
        manifest_bytes = manifest.memory_usage(deep=True).sum() / len(manifest)
        print(
            f"{args.images} images of {args.size} px, batch {args.batch}, {args.epochs} epochs "
            f"(a default stage-1 run reads about 2000 x 64 / 4000 = 32), median of "
            f"{args.repeats}. The reference decodes the split up front: {load_s:.1f} s, "
            f"{pixels.numel() * 4 / 2**20:.0f} MB of float32 pixels, counted in its total"
        )
        print(
            f"per-image metadata in memory: the manifest {manifest_bytes:.0f} B, stage 1's "
            f"split references (ids, captions, readers' indexes) {per_image:.0f} B held, "
            f"{peak_per_image:.0f} B at the peak of building them"
        )
        print(f"{'path':28} {'epoch 1 img/s':>14} {'later img/s':>12} {'total s':>8} {'vs ref':>7}")
        for with_pixels in (True, False):
            reference = TensorDataset(
                pixels if with_pixels else torch.empty(len(ids), 0), mean, std
            )
            runs = {"reference (in memory)": (lambda r=reference: r, 0, load_s)}
            for workers in (0, 2):
                # a fresh dataset each run: its bounded cache starts empty, as in a new run
                streamed = functools.partial(
                    split.training_set, with_pixels=with_pixels, cache_bytes=256 * 2**20
                )
                runs[f"streamed, {workers} workers"] = (streamed, workers, 0.0)
            ref = None
            print(f"-- {'with pixels' if with_pixels else 'latents only (the default encoder)'}")
            for name, (dataset, workers, upfront) in runs.items():
                results = [
                    rate(dataset(), args.batch, args.epochs, workers) for _ in range(args.repeats)
                ]
                first, later, total = (statistics.median(r[k] for r in results) for k in range(3))
                total += upfront
                ref = ref or total
                print(f"{name:28} {first:14.0f} {later:12.0f} {total:8.2f} {ref / total:6.2f}x")


if __name__ == "__main__":
    main()
