"""Benchmark: the stage-1 step's cost against the number of queries N (the study's study 2).

    python bench/bench_query_count.py [--steps 10] [--batch 64] [--counts 4 16 77] [--rounds 2]

conf/base's stage-1 encoder (``stage1.encoder``, its latent stem on the teacher VAE's tower)
built by the project's own ``build_encoder`` at each N, the shipped teacher frozen, batch 64
on cached posteriors as stage 1 trains. Prints s/step per N and its ratio to N = 16 (the
default, the reference), all measured in this one run: the study's training logs time whole
runs on a machine that may be shared, and machines of one kind differ by up to 1.6x, so the
ratios here are what to compare. The counts are timed in turn, ``--rounds`` times over, and
each keeps its fastest round: the first timing of a process runs slow (about 1.25x here), which
would otherwise fall on whichever N comes first.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from steps import time_steps  # noqa: E402

from vlv_pipeline.models.encoders import build_encoder  # noqa: E402
from vlv_pipeline.models.stage1 import Stage1Objective  # noqa: E402
from vlv_pipeline.models.teachers import load_teacher  # noqa: E402
from vlv_pipeline.params.stage1 import EncoderParams  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--counts", type=int, nargs="+", default=[4, 16, 77])
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    conf = yaml.safe_load((ROOT / "conf/base/parameters_stage1.yml").read_text())["stage1"]
    t2i = load_teacher(str(ROOT / "src/vlv_pipeline/assets/teacher"))
    size = t2i.vae.config.sample_size
    torch.manual_seed(0)
    pixels = torch.rand(4, args.batch, 3, size, size) * 2 - 1
    with torch.no_grad():
        dists = [t2i.vae.encode(p).latent_dist for p in pixels]
    batches = [(p, d.mean, d.std) for p, d in zip(pixels, dists, strict=True)]
    objectives = {}
    for n in args.counts:
        spec = EncoderParams.model_validate({**conf["encoder"], "num_queries": n})
        torch.manual_seed(0)
        encoder = build_encoder(spec, t2i.width, t2i.vae, t2i.token_embeddings)
        objective = Stage1Objective(
            encoder,
            t2i,
            tuple(conf["timestep_range"]),
            conf["noise_draws"],
            conf["diversity_weight"],
            features_from_cache=True,
        )
        objectives[n] = objective
    rounds = {n: [] for n in objectives}
    for _ in range(args.rounds):
        for n, objective in objectives.items():
            rounds[n].append(time_steps(objective, batches, args.steps))
    seconds = {n: min(times) for n, times in rounds.items()}
    reference = seconds.get(16, next(iter(seconds.values())))
    print(
        f"stage-1 step, batch {args.batch}, {size} px, {args.steps} steps, best of "
        f"{args.rounds} rounds, {torch.get_num_threads()} threads"
    )
    for n, s in seconds.items():
        print(
            f"  N = {n:3d}: {s:.3f} s/step  {args.batch / s:6.1f} img/s  {s / reference:.2f}x of N = 16"
        )


if __name__ == "__main__":
    main()
