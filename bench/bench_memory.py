"""Benchmark: peak memory of each pipeline in the rehearsal environment, at N and 10N images.

    python bench/bench_memory.py [--n 128] [--only ingest cache stage1 ...]

The rehearsal environment (conf/rehearsal: 384-px img2dataset shards, the paper's model
classes built tiny) is run in a temporary copy of the project, once with N images and once
with 10N. N = 128 by default, so that the 10N images' float32 pixels at 384 px
(1.77 MB each) would hold 2.2 GB if anything kept them all. Each pipeline runs as its own
`kedro run`, and the resident memory of its whole process tree (DataLoader workers
included) is sampled every 50 ms. `evaluate` runs over the whole test split
(`evaluate.images` far above its size) and `caption` over every shard.

Printed per pipeline: peak RSS at N and 10N, the growth in MB per 1,000 images
((peak at 10N - peak at N) / 9N), and the ratio of the peaks. The last line is
``rss ratio (10N / N), worst pipeline: X`` (target <= 1.2).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KEDRO = str(Path(sys.executable).with_name("kedro"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from procmem import tree_rss_bytes  # noqa: E402

PIPELINES = ("ingest", "cache", "stage1", "synthesize", "stage2", "evaluate", "caption")


def peak_rss(cmd: list[str], cwd: Path, env: dict) -> tuple[int, float]:
    """(peak tree RSS in bytes, seconds) of a command; raises with its output on failure."""
    began = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    peak, output = 0, []
    reader = threading.Thread(target=lambda: output.extend(proc.stdout), daemon=True)
    reader.start()
    while proc.poll() is None:
        peak = max(peak, tree_rss_bytes(proc.pid))
        time.sleep(0.05)
    reader.join()
    if proc.returncode:
        tail = b"".join(output)[-3000:].decode(errors="replace")
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{tail}")
    return peak, time.perf_counter() - began


def run_size(images: int, pipelines: list[str], workdir: Path) -> dict[str, tuple[int, float]]:
    project = workdir / f"n{images}"
    project.mkdir()
    shutil.copy(ROOT / "pyproject.toml", project)
    shutil.copytree(ROOT / "conf", project / "conf", ignore=shutil.ignore_patterns("local"))
    shutil.copytree(ROOT / "src", project / "src", ignore=shutil.ignore_patterns("__pycache__"))
    env = {
        **os.environ,
        "KEDRO_DISABLE_TELEMETRY": "true",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    }
    base = [KEDRO, "run", "--env", "rehearsal"]
    world = f"world.counts.train={images},world.counts.test=0,evaluate.images=1000000"
    peak_rss([*base, "--pipelines", "world,rehearsal", "--params", world], project, env)
    shards = project / "data/rehearsal/01_raw/shards"
    extra = {
        "evaluate": "evaluate.images=1000000",
        "caption": f"caption.source={shards},caption.kind=webdataset,caption.resolution=384",
    }
    out = {}
    for name in pipelines:
        cmd = [*base, "--pipeline", name]
        if name in extra:
            cmd += ["--params", extra[name]]
        out[name] = peak_rss(cmd, project, env)
        print(
            f"  {images:6d} images  {name:10s} peak {out[name][0] / 2**20:7.0f} MB "
            f"({out[name][1]:.0f} s)",
            flush=True,
        )
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=128)
    parser.add_argument("--only", nargs="*", default=list(PIPELINES))
    args = parser.parse_args(argv)
    n, big = args.n, 10 * args.n
    print(
        f"rehearsal environment, N = {n} and 10N = {big} images of 384 px "
        f"(10N float32 pixels would hold {big * 384 * 384 * 3 * 4 / 2**30:.2f} GB)",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp:
        small = run_size(n, args.only, Path(tmp))
        large = run_size(big, args.only, Path(tmp))
    print(f"{'pipeline':10} {'N MB':>8} {'10N MB':>8} {'MB/1000 img':>12} {'ratio':>6}")
    worst = None
    for name in args.only:
        a, b = small[name][0] / 2**20, large[name][0] / 2**20
        ratio = b / a
        print(f"{name:10} {a:8.0f} {b:8.0f} {(b - a) / (9 * n) * 1000:12.1f} {ratio:6.2f}")
        if worst is None or ratio > worst[1]:
            worst = (name, ratio)
    print(f"rss ratio (10N / N), worst pipeline: {worst[1]:.2f} ({worst[0]})")


if __name__ == "__main__":
    main()
