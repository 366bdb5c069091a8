"""Baseline sweep: train the "without stage 1" captioner under named overrides, judge on val.

    python scripts/sweep_baseline.py                          # every candidate, seeds 0 and 1
    python scripts/sweep_baseline.py --only lr3e-4 linear     # a subset, in that order
    python scripts/sweep_baseline.py --percent 10 --only ref  # another share of pairs
    python scripts/sweep_baseline.py --table                  # print the table, train nothing

The paper's comparison "without stage 1" is only as strong as the baseline's training
(issue 27, section 6). Candidates live in ``conf/sweeps/baseline.yml``: a name, a note and
dotted overrides of ``params:stage2.baseline.training`` (which starts as ``stage2.training``,
as the default run trains it). Each candidate trains the real node (``train_baseline``) on
the caption pairs study 1 draws for that share of train and seed (``params/study.py``'s
``pairs_overrides``: ``synthesize.fraction`` and ``seed``, the training seed), and is judged
by the world's parser on the first 256 val images (``validate_stage2``: exact-scene
captions). Test images are never seen here: the manifest handed to the nodes has no test
rows. The protocol: docs/STUDY.md, "Tuning the baseline".

Resumable: a finished (candidate, seed, percent) is a row in the results file (JSONL) and is
skipped; an unfinished one resumes from its training checkpoints (the loop keys its folder by
the training parameters and the pairs).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from sweep_stage1 import append_row, apply_overrides, load_sweep, read_rows  # noqa: E402

DEFAULT_SWEEP = ROOT / "conf/sweeps/baseline.yml"
DEFAULT_RESULTS = ROOT / "data/08_reporting/sweeps/baseline.jsonl"


def row_key(row: dict) -> tuple:
    return row["name"], row["seed"], row["percent"], row["split"]


def markdown_table(rows: list[dict]) -> str:
    lines = [
        "| candidate | pairs | seed | split | exact scene | shape R | colour R | final loss "
        "| s/step | note |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        m = r["metrics"]
        lines.append(
            f"| {r['name']} | {r['percent']}% ({r['pairs']}) | {r['seed']} | {r['split']} "
            f"| {m['exact_scene']:.1%} | {m.get('shape_recall', float('nan')):.1%} "
            f"| {m.get('colour_recall', float('nan')):.1%} | {r['final_loss']:.4f} "
            f"| {r['seconds_per_step']:.3f} | {r.get('note', '')} |"
        )
    return "\n".join(lines)


def summary(rows: list[dict]) -> str:
    """Per candidate and share: the mean exact scene over seeds, the worst seed, and how
    many seeds stalled (final loss above 0.1: the plateau study 1 found)."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["name"], r["percent"], r["split"]), []).append(r)
    lines = [
        "| candidate | pairs | split | seeds | mean exact scene | worst seed | stalled |",
        "|---|---|---|---|---|---|---|",
    ]
    for (name, percent, split), mine in sorted(groups.items()):
        exact = [r["metrics"]["exact_scene"] for r in mine]
        stalled = sum(r["final_loss"] > 0.1 for r in mine)
        lines.append(
            f"| {name} | {percent}% | {split} | {len(mine)} | {sum(exact) / len(exact):.1%} "
            f"| {min(exact):.1%} | {stalled} of {len(mine)} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sweep", type=Path, default=DEFAULT_SWEEP)
    parser.add_argument("--results", type=Path, default=DEFAULT_RESULTS)
    parser.add_argument("--only", nargs="+", help="candidate names to run, in this order")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--percent", type=int, default=30, help="share of train as pairs")
    parser.add_argument("--table", action="store_true", help="print the tables and stop")
    args = parser.parse_args(argv)

    candidates = load_sweep(args.sweep)
    names = args.only or list(candidates)
    unknown = [n for n in names if n not in candidates]
    if unknown:
        raise SystemExit(f"unknown candidates {unknown}; {args.sweep} has {sorted(candidates)}")
    if args.table:
        rows = read_rows(args.results)
        print(markdown_table(rows) + "\n\n" + summary(rows))
        return

    os.environ.setdefault("KEDRO_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project

    from vlv_pipeline.params.stage1 import Stage1Params
    from vlv_pipeline.params.stage2 import Stage2Params
    from vlv_pipeline.params.study import pairs_overrides
    from vlv_pipeline.params.synthesize import SynthesizeParams
    from vlv_pipeline.params.t2i import T2IParams
    from vlv_pipeline.pipelines.stage2 import nodes as stage2
    from vlv_pipeline.pipelines.synthesize import nodes as synthesize

    bootstrap_project(ROOT)
    os.chdir(ROOT)  # relative paths in conf are relative to the project root
    with KedroSession.create(project_path=ROOT) as session:
        context = session.load_context()
        catalog = context.catalog

        def plain(name: str) -> dict:
            value = context.params[name]
            return value.model_dump(mode="json") if hasattr(value, "model_dump") else value

        raw_images = catalog.load("raw_images")
        manifest = catalog.load("image_manifest")
        no_test = manifest[manifest["split"] != "test"]  # val is then the judged split
        stage1 = Stage1Params(**plain("stage1"))
        t2i = T2IParams(**plain("t2i"))  # the T2I model every stage reads
        base_stage2, base_synth = plain("stage2"), plain("synthesize")
        for seed in args.seeds:
            point = pairs_overrides(args.percent, seed)
            synth = SynthesizeParams(**{**base_synth, **point["synthesize"]})
            pairs = synthesize.select_images(manifest, synth)[["image_id", "caption"]]
            data = None
            for name in names:
                body = candidates[name]
                raw = apply_overrides(base_stage2, {"training.seed": seed})
                raw["batch_at_most_pairs"] = True
                training = apply_overrides(raw["training"], body.get("overrides", {}))
                raw["baseline"] = {**(raw.get("baseline") or {}), "training": training}
                params = Stage2Params(**raw)
                key = (name, seed, args.percent, "val")
                if any(row_key(r) == key for r in read_rows(args.results)):
                    print(f"[baseline sweep] {key}: done already, skipped", flush=True)
                    continue
                if data is None:
                    data = stage2.load_stage2_data(raw_images, no_test, pairs, params)
                print(f"[baseline sweep] {key}: training", flush=True)
                started = time.time()
                captioner, log = stage2.train_baseline(data, params, stage1, t2i)
                metrics = stage2.validate_stage2(captioner, None, data, params, stage1)["vlv"]
                metrics.pop("samples", None)
                steps = params.baseline.training.steps
                row = {
                    "name": name,
                    "note": body.get("note", ""),
                    "overrides": body.get("overrides", {}),
                    "seed": seed,
                    "percent": args.percent,
                    "pairs": len(pairs),
                    "split": "val",
                    "images": len(data.eval_ids),
                    "metrics": metrics,
                    "train_seconds": log["seconds"],
                    "seconds_per_step": log["seconds"] / steps,
                    "final_loss": log["history"][-1]["loss"],
                    "history": log["history"],
                    "wall_seconds": time.time() - started,
                }
                append_row(args.results, row)
                print(
                    f"[baseline sweep] {key}: exact {metrics['exact_scene']:.4f}, final loss "
                    f"{row['final_loss']:.4f} ({log['seconds']:.0f} s of training)",
                    flush=True,
                )


if __name__ == "__main__":
    main()
