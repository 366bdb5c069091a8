"""Stage-2 sweep: train the VLV captioner under named overrides on a finished run's encoder.

    python scripts/sweep_stage2.py --project /path/to/run          # every candidate, seeds 0, 1
    python scripts/sweep_stage2.py --project RUN --only ref s2000  # a subset, in that order
    python scripts/sweep_stage2.py --table                         # print the tables only

Stage 2's own seed moves the VLV captions by several points on one encoder (docs/STUDY.md),
so a stage-1 recipe is only as good as the stage 2 that reads it. Candidates live in
``conf/sweeps/stage2.yml``: a name, a note and dotted overrides of ``params:stage2``
(``training.steps``, ``trainable``, ...). ``--project`` names a project directory where the default run
has finished (``make run``): its stage-1 encoder, caption pairs and embedding cache are read
from its catalog, so encoders of different stage-1 seeds are separate projects (the
``encoder`` column records which). Each candidate trains the real node (``train_stage2``)
and is judged by the world's parser on the first 256 val images (``validate_stage2``).
Test images are never seen: the manifest handed to the nodes has no test rows.

Resumable: a finished (candidate, seed, encoder) is a row of the results file (JSONL).
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

DEFAULT_SWEEP = ROOT / "conf/sweeps/stage2.yml"
DEFAULT_RESULTS = ROOT / "data/08_reporting/sweeps/stage2.jsonl"


def row_key(row: dict) -> tuple:
    return row["name"], row["seed"], row["encoder"], row["split"]


def markdown_table(rows: list[dict]) -> str:
    lines = [
        "| candidate | encoder | seed | split | exact scene | shape R | colour R | final loss "
        "| s/step | note |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        m = r["metrics"]
        lines.append(
            f"| {r['name']} | {r['encoder']} | {r['seed']} | {r['split']} "
            f"| {m['exact_scene']:.1%} | {m.get('shape_recall', float('nan')):.1%} "
            f"| {m.get('colour_recall', float('nan')):.1%} | {r['final_loss']:.4f} "
            f"| {r['seconds_per_step']:.3f} | {r.get('note', '')} |"
        )
    return "\n".join(lines)


def summary(rows: list[dict]) -> str:
    """Per candidate: the mean exact scene over every (encoder, seed), and the worst one."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["name"], r["split"]), []).append(r)
    lines = [
        "| candidate | split | runs | mean exact scene | worst run | mean s/step |",
        "|---|---|---|---|---|---|",
    ]
    for (name, split), mine in sorted(groups.items()):
        exact = [r["metrics"]["exact_scene"] for r in mine]
        speed = sum(r["seconds_per_step"] for r in mine) / len(mine)
        lines.append(
            f"| {name} | {split} | {len(mine)} | {sum(exact) / len(exact):.1%} "
            f"| {min(exact):.1%} | {speed:.3f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--project", type=Path, default=ROOT, help="a finished run's project")
    parser.add_argument("--encoder", help="the encoder's name in the table (default: the dir)")
    parser.add_argument("--sweep", type=Path, default=DEFAULT_SWEEP)
    parser.add_argument("--results", type=Path, default=DEFAULT_RESULTS)
    parser.add_argument("--only", nargs="+", help="candidate names to run, in this order")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--table", action="store_true", help="print the tables and stop")
    args = parser.parse_args(argv)

    candidates = load_sweep(args.sweep)
    for name, body in candidates.items():
        if not isinstance(body.get("synthesize", {}), dict):
            raise SystemExit(f"{args.sweep}: candidate {name!r} needs `synthesize:` as a mapping")
    names = args.only or list(candidates)
    unknown = [n for n in names if n not in candidates]
    if unknown:
        raise SystemExit(f"unknown candidates {unknown}; {args.sweep} has {sorted(candidates)}")
    results = args.results.resolve()
    if args.table:
        rows = read_rows(results)
        print(markdown_table(rows) + "\n\n" + summary(rows))
        return
    project = args.project.resolve()
    if not (project / "pyproject.toml").is_file():
        raise SystemExit(f"--project {project}: no pyproject.toml; name a project directory")
    encoder_name = args.encoder or project.name

    os.environ.setdefault("KEDRO_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project

    from vlv_pipeline.params.stage1 import Stage1Params
    from vlv_pipeline.params.stage2 import Stage2Params
    from vlv_pipeline.params.synthesize import SynthesizeParams
    from vlv_pipeline.params.t2i import T2IParams
    from vlv_pipeline.pipelines.stage2 import nodes as stage2
    from vlv_pipeline.pipelines.synthesize import nodes as synthesize

    bootstrap_project(project)
    os.chdir(project)  # relative paths in conf are relative to the project root
    with KedroSession.create(project_path=project) as session:
        context = session.load_context()
        catalog = context.catalog

        def plain(name: str) -> dict:
            value = context.params[name]
            return value.model_dump(mode="json") if hasattr(value, "model_dump") else value

        stage1 = Stage1Params(**plain("stage1"))
        t2i = T2IParams(**plain("t2i"))  # the T2I model every stage reads
        base = plain("stage2")
        manifest = catalog.load("image_manifest")
        no_test = manifest[manifest["split"] != "test"]  # val is then the judged split
        run_pairs = catalog.load("caption_pairs")
        encoder = catalog.load("vlv_encoder")
        embedding_cache = catalog.load("embedding_cache")
        datas: dict[str, object] = {}  # per pair setting: the run's own, or a candidate's

        def pairs_of(overrides: dict):
            """The run's pairs, or those the synthesize nodes draw under ``overrides``."""
            if not overrides:
                return run_pairs
            raw = apply_overrides(plain("synthesize"), overrides)
            if raw["captioner"]["backend"] != "manifest":
                raise SystemExit("synthesize overrides need the manifest captioner (no calls)")
            raw["journal_dir"] = str(project / "data/03_primary/sweep_stage2_journal")
            try:
                params = SynthesizeParams(**raw)
            except ValueError as error:  # pydantic's ValidationError names the key
                raise SystemExit(f"synthesize overrides {overrides}: {error}") from None
            selection = synthesize.select_images(manifest, params)
            return synthesize.synthesize_captions(catalog.load("raw_images"), selection, params, {})

        for seed in args.seeds:
            for name in names:
                body = candidates[name]
                key = (name, seed, encoder_name, "val")
                if any(row_key(r) == key for r in read_rows(results)):
                    print(f"[stage-2 sweep] {key}: done already, skipped", flush=True)
                    continue
                raw = apply_overrides(base, {"training.seed": seed, **body.get("overrides", {})})
                # its own checkpoints: the run's finished ones would be resumed, not trained
                raw["checkpoint_dir"] = str(project / "data/06_models/checkpoints/sweep_stage2")
                params = Stage2Params(**raw)
                synth = body.get("synthesize", {})
                pairs_key = repr(sorted(synth.items()))
                if pairs_key not in datas:
                    pairs = pairs_of(synth)
                    datas[pairs_key] = stage2.load_stage2_data(
                        catalog.load("raw_images"), no_test, pairs, params
                    )
                data = datas[pairs_key]
                print(f"[stage-2 sweep] {key}: training", flush=True)
                started = time.time()
                captioner, log = stage2.train_stage2(data, encoder, embedding_cache, params, t2i)
                metrics = stage2.validate_stage2(captioner, None, data, params, stage1)["vlv"]
                metrics.pop("samples", None)
                row = {
                    "name": name,
                    "note": body.get("note", ""),
                    "overrides": body.get("overrides", {}),
                    "synthesize": synth,
                    "seed": seed,
                    "encoder": encoder_name,
                    "pairs": len(data.pair_ids),
                    "split": "val",
                    "images": len(data.eval_ids),
                    "metrics": metrics,
                    "train_seconds": log["seconds"],
                    "seconds_per_step": log["seconds"] / params.training.steps,
                    "final_loss": log["history"][-1]["loss"],
                    "history": log["history"],
                    "wall_seconds": time.time() - started,
                }
                append_row(results, row)
                print(
                    f"[stage-2 sweep] {key}: exact {metrics['exact_scene']:.4f}, final loss "
                    f"{row['final_loss']:.4f} ({log['seconds']:.0f} s of training)",
                    flush=True,
                )


if __name__ == "__main__":
    main()
