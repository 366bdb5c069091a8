"""Study 1 at more seeds: one pair fraction, seeds beyond the study's two, outside its report.

    python scripts/study_extra_seeds.py --percent 30 --seeds 2 3

Each seed is a point like the study's own (``params/study.py``: ``pairs_<p>pct_seed<s>``),
run with the same namespaced nodes (synthesize's selection and embeddings, stage 2, its
"without stage 1" baseline, validation) on the project's catalog, after `make run`. Metrics
and logs land beside the study's points, versioned, under ``data/08_reporting/study/``; the
study report does not read them. Prints exact-scene captions and the final training loss of
both captioners per seed. Used to ask how often the baseline stalls (docs/STUDY.md).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--percent", type=int, default=30)
    parser.add_argument("--seeds", type=int, nargs="+", default=[2, 3])
    args = parser.parse_args()
    os.environ.setdefault("KEDRO_DISABLE_TELEMETRY", "true")

    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project

    from vlv_pipeline.params import study

    if args.percent not in study.PAIR_PERCENTS:
        parser.error(f"--percent must be one of the study's {study.PAIR_PERCENTS}")
    # before the pipelines are built and conf loads: both take their points from here
    study.SEEDS = tuple(dict.fromkeys([*study.SEEDS, *args.seeds]))
    for percent in study.PAIR_PERCENTS:
        for seed in args.seeds:
            study.POINTS[study.pairs_point(percent, seed)] = study.pairs_overrides(percent, seed)
    names = [study.pairs_point(args.percent, seed) for seed in args.seeds]
    bootstrap_project(ROOT)
    for name in names:  # one session per run, as `kedro run` has
        with KedroSession.create(project_path=ROOT) as session:
            session.run(pipeline_names=["study"], namespaces=[f"study.{name}"])
            catalog = session.load_context().catalog
            metrics = catalog.load(f"study.{name}.stage2_metrics")
            loss = {
                key: catalog.load(f"study.{name}.{key}_log")["history"][-1]["loss"]
                for key in ("stage2", "stage2_baseline")
            }
        print(
            f"{name}: exact-scene captions VLV {metrics['vlv']['exact_scene']:.3f} "
            f"(final loss {loss['stage2']:.3f}), without stage 1 "
            f"{metrics['without_stage1']['exact_scene']:.3f} "
            f"(final loss {loss['stage2_baseline']:.3f})",
            flush=True,
        )


if __name__ == "__main__":
    main()
