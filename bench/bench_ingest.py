"""Benchmark: ingest (screening every file) vs a plain Pillow open/convert/resize loop.

    python bench/bench_ingest.py [--n 2000] [--resolution 128]

Writes N mixed images (64-256 px; JPEG, PNG, RGBA PNG, grey PNG) to a temporary folder,
then times in the same process:

- ours: the ingest node functions over a FolderSource (read, sha256, de-duplicate, open,
  verify, full decode, EXIF orientation, RGB conversion, policy checks, manifest);
- reference: a bare loop that opens each file, converts to RGB and resizes it;
- iter_images: how fast downstream stages get normalised images back from the manifest.

Prints images/s for each, the ratio ours / reference, and the process's peak RSS.
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import resource
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from vlv_pipeline.imaging import FolderSource, iter_images  # noqa: E402
from vlv_pipeline.imaging.screen_table import screen_images  # noqa: E402
from vlv_pipeline.params.ingest import IngestParams  # noqa: E402
from vlv_pipeline.pipelines.ingest.nodes import build_manifest, build_rejects  # noqa: E402


def make_images(root: Path, n: int, seed: int) -> None:
    rng = random.Random(seed)
    for i in range(n):
        w, h = rng.randint(64, 256), rng.randint(64, 256)
        kind = rng.choice(["jpeg", "jpeg", "png", "rgba", "grey"])
        mode = {"rgba": "RGBA", "grey": "L"}.get(kind, "RGB")
        colour = tuple(rng.randrange(256) for _ in range(len(mode)))
        img = Image.linear_gradient("L").resize((w, h)).convert(mode)
        draw = ImageDraw.Draw(img)
        for _ in range(3):
            x, y = rng.randrange(w), rng.randrange(h)
            draw.ellipse((x, y, x + rng.randint(8, 48), y + rng.randint(8, 48)), fill=colour)
        split = rng.choice(["train", "train", "train", "val", "test"])
        ext = "jpg" if kind == "jpeg" else "png"
        path = root / split / f"{i:06d}.{ext}"
        path.parent.mkdir(exist_ok=True)
        img.save(path, quality=90) if ext == "jpg" else img.save(path)


def reference(root: Path, resolution: int) -> int:
    count = 0
    for dirpath, _, files in sorted(os.walk(root)):
        for name in sorted(files):
            with Image.open(os.path.join(dirpath, name)) as img:
                img.convert("RGB").resize((resolution, resolution))
            count += 1
    return count


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000, help="number of images")
    parser.add_argument("--resolution", type=int, default=128, help="resize side")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        make_images(root, args.n, args.seed)
        print(f"generated {args.n} images in {time.perf_counter() - t0:.1f}s", flush=True)

        t0 = time.perf_counter()
        done = reference(root, args.resolution)
        t_ref = time.perf_counter() - t0

        source = FolderSource(root)
        t0 = time.perf_counter()
        params = IngestParams(resolution=args.resolution)
        screened = screen_images(source, params)  # the ingest pipeline's nodes, in order
        manifest, rejects = build_manifest(screened, params), build_rejects(screened)
        t_ours = time.perf_counter() - t0
        rss_ingest = peak_rss_mib()

        t0 = time.perf_counter()
        got = sum(1 for _ in iter_images(source, manifest, args.resolution))
        t_iter = time.perf_counter() - t0

    assert done == args.n and len(manifest) + len(rejects) == args.n and got == len(manifest)
    ref_rate, ours_rate, iter_rate = done / t_ref, args.n / t_ours, got / t_iter
    print(f"reference (open+RGB+resize): {ref_rate:8.1f} images/s")
    print(f"ours (ingest, full checks) : {ours_rate:8.1f} images/s")
    print(f"ratio ours / reference     : {ours_rate / ref_rate:8.2f}")
    print(f"iter_images @{args.resolution:<4d}         : {iter_rate:8.1f} images/s")
    print(f"peak RSS after ingest      : {rss_ingest:8.1f} MiB (process: {peak_rss_mib():.1f})")


if __name__ == "__main__":
    main()
