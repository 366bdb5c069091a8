"""Stage-1 sweep: train the `stage1` nodes under named parameter overrides, judge each on val.

    python scripts/sweep_stage1.py                      # every candidate of the sweep file
    python scripts/sweep_stage1.py --only ema tw300     # a subset, in that order
    python scripts/sweep_stage1.py --table              # print the table, train nothing
    python scripts/sweep_stage1.py --seed 1 --only final1200 --split test   # conf/base now
    python scripts/sweep_stage1.py --only final --split test --steps 2000   # a curve point
    python scripts/sweep_stage1.py --curve final --plot docs/images/stage1_quality_curve.png

Candidates live in a YAML file (default ``conf/sweeps/stage1.yml``): a name, a note and
dotted overrides of ``params:stage1`` (e.g. ``training.ema_decay: 0.995``). Each one runs
the real nodes (``load_stage1_data``, ``train_stage1``, ``validate_stage1``) on the
project's catalog, so the world, ingest and cache pipelines must have run first.

Resumable twice over: a finished candidate is a row in the results file (JSONL) and is
skipped; an unfinished one resumes from its training checkpoints (the loop keys its
checkpoint folder by the training parameters). Settings are chosen on the val split
(``--split val``, the default); only the final recipe is reported on test.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SWEEP = ROOT / "conf/sweeps/stage1.yml"
DEFAULT_RESULTS = ROOT / "data/08_reporting/sweeps/stage1.jsonl"


def apply_overrides(base: dict, overrides: dict) -> dict:
    """A deep copy of ``base`` with each dotted key of ``overrides`` set (keys must exist
    up to their last part, so a typo names itself instead of being silently added)."""
    out = copy.deepcopy(base)
    for dotted, value in overrides.items():
        node, parts = out, dotted.split(".")
        for i, part in enumerate(parts[:-1]):
            if not isinstance(node.get(part), dict):
                if node.get(part) is None and part in node:
                    node[part] = {}
                else:
                    raise KeyError(
                        f"override {dotted!r}: stage1.{'.'.join(parts[: i + 1])} is not a block"
                    )
            node = node[part]
        node[parts[-1]] = value
    return out


def load_sweep(path: Path) -> dict[str, dict]:
    """name -> {"note", "overrides"} from the sweep file, validated."""
    if not path.is_file():
        raise SystemExit(f"sweep file {path} not found")
    spec = yaml.safe_load(path.read_text()) or {}
    candidates = spec.get("candidates")
    if not isinstance(candidates, dict) or not candidates:
        raise SystemExit(f"{path}: needs a `candidates:` mapping of name -> {{note, overrides}}")
    for name, body in candidates.items():
        if not isinstance(body, dict) or not isinstance(body.get("overrides", {}), dict):
            raise SystemExit(f"{path}: candidate {name!r} needs `overrides:` as a mapping")
    return candidates


def read_rows(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def append_row(path: Path, row: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:  # one line per finished candidate; a crash loses none
        handle.write(json.dumps(row) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def row_key(row: dict) -> tuple:
    return row["name"], row["seed"], row["steps"], row["split"]


def markdown_table(rows: list[dict]) -> str:
    lines = [
        "| candidate | seed | steps | split | exact scene | attributes | position | shape "
        "| colour | size | s/step | final loss | note |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        rec = r["reconstruction"]
        lines.append(
            f"| {r['name']} | {r['seed']} | {r['steps']} | {r['split']} "
            f"| {rec['exact_scene']:.1%} | {rec['attributes']:.1%} | "
            + " | ".join(f"{rec[k]:.1%}" for k in ("position", "shape", "colour", "size"))
            + f" | {r['seconds_per_step']:.3f} | {r['final_loss']:.4f} | {r.get('note', '')} |"
        )
    return "\n".join(lines)


def curve_rows(rows: list[dict], name: str, split: str = "test") -> list[dict]:
    """The rows of one candidate on one split, by steps then seed: its quality curve."""
    picked = [r for r in rows if r["name"] == name and r["split"] == split]
    return sorted(picked, key=lambda r: (r["steps"], r["seed"]))


def curve_table(rows: list[dict]) -> str:
    """Exact scenes and attributes against steps and stage-1 training minutes."""
    lines = [
        "| steps | seed | exact scene | attributes | stage-1 minutes | s/step |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        rec = r["reconstruction"]
        lines.append(
            f"| {r['steps']} | {r['seed']} | {rec['exact_scene']:.1%} | {rec['attributes']:.1%} "
            f"| {r['train_seconds'] / 60:.1f} | {r['seconds_per_step']:.3f} |"
        )
    return "\n".join(lines)


def plot_curve(rows: list[dict], path: Path, title: str) -> None:
    """Two panels: exact scenes and attributes against steps, and against minutes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not rows:
        raise SystemExit("no rows for that curve: run the candidate with --split test first")
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
    for ax, x_of, label in (
        (axes[0], lambda r: r["steps"], "stage-1 steps"),
        (axes[1], lambda r: r["train_seconds"] / 60, "stage-1 training minutes (this machine)"),
    ):
        for key, style in (("exact_scene", "o-"), ("attributes", "s--")):
            for seed in sorted({r["seed"] for r in rows}):
                mine = [r for r in rows if r["seed"] == seed]
                ax.plot(
                    [x_of(r) for r in mine],
                    [100 * r["reconstruction"][key] for r in mine],
                    style,
                    label=f"{key.replace('_', ' ')} (seed {seed})",
                )
        ax.axhline(80, color="grey", lw=0.8, ls=":")
        ax.axhline(95, color="grey", lw=0.8, ls=":")
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("% of test images / attributes")
    axes[0].legend(fontsize=8, loc="lower right")
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)  # atomic: a reader never sees half a PNG


def row_from_run(name: str, note: str, metrics: dict, log: dict) -> dict:
    """A results row from a `kedro run`'s stage1_metrics and stage1_log (same fields as a
    sweep row), so that a full run's stage 1 is a curve point without training it twice."""
    for key in ("steps", "seed", "seconds", "history"):
        if key not in log:
            raise SystemExit(f"stage1_log has no {key!r}: rerun stage 1 with this version")
    if "reconstruction" not in metrics:
        raise SystemExit("stage1_metrics has no reconstruction: set stage1.validation.probe")
    return {
        "name": name,
        "note": note,
        "overrides": {},
        "seed": log["seed"],
        "steps": log["steps"],
        "split": metrics.get("split") or "test",
        "images": metrics["images"],
        "reconstruction": metrics["reconstruction"],
        "train_seconds": log["seconds"],
        "seconds_per_step": log["seconds"] / log["steps"],
        "final_loss": log["history"][-1]["loss"],
        "history": log["history"],
        "source": "kedro run",
    }


def run_sweep(
    load_data,
    base: dict,
    candidates: dict[str, dict],
    results: Path,
    *,
    t2i,
    split: str = "val",
    seed: int | None = None,
    steps: int | None = None,
) -> list[dict]:
    """Train and judge each candidate not yet in ``results``; return the rows it added.

    ``load_data(params)`` gives the stage-1 data (called once, only if something runs);
    ``base`` is ``params:stage1`` as a plain dict; ``t2i``: ``params:t2i`` (``T2IParams``).
    """
    from vlv_pipeline.params.stage1 import Stage1Params
    from vlv_pipeline.pipelines.stage1 import nodes

    data, added = None, []
    for name, body in candidates.items():
        raw = apply_overrides(base, body.get("overrides", {}))
        raw = apply_overrides(raw, {"validation.split": split})
        if seed is not None:
            raw = apply_overrides(raw, {"training.seed": seed})
        if steps is not None:
            raw = apply_overrides(raw, {"training.steps": steps})
        params = Stage1Params(**raw)
        key = (name, params.training.seed, params.training.steps, split)
        if any(row_key(r) == key for r in read_rows(results)):
            print(f"[sweep] {name}: done already ({results}), skipped", flush=True)
            continue
        if data is None:
            data = load_data(params)
        print(f"[sweep] {name}: training {params.training.steps} steps", flush=True)
        started = time.time()
        encoder, log = nodes.train_stage1(data, params, t2i)
        metrics, _ = nodes.validate_stage1(encoder, data, params, t2i)
        if "reconstruction" not in metrics:
            raise SystemExit("the sweep judges with the probe: set stage1.validation.probe")
        row = {
            "name": name,
            "note": body.get("note", ""),
            "overrides": body.get("overrides", {}),
            "seed": params.training.seed,
            "steps": params.training.steps,
            "split": split,
            "images": metrics["images"],
            "reconstruction": metrics["reconstruction"],
            "train_seconds": log["seconds"],
            "seconds_per_step": log["seconds"] / params.training.steps,
            "final_loss": log["history"][-1]["loss"],
            "history": log["history"],
            "wall_seconds": time.time() - started,
        }
        append_row(results, row)
        added.append(row)
        rec = metrics["reconstruction"]
        print(
            f"[sweep] {name}: exact {rec['exact_scene']:.4f} attributes "
            f"{rec['attributes']:.4f} ({log['seconds']:.0f} s of training)",
            flush=True,
        )
    return added


def _latest(path: Path) -> Path:
    """The newest version of a Kedro versioned file (``path/<version>/<name>``)."""
    versions = sorted(path.glob(f"*/{path.name}")) if path.is_dir() else []
    if not versions:
        raise SystemExit(f"no saved version of {path}: run `kedro run --pipeline stage1` first")
    return versions[-1]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sweep", type=Path, default=DEFAULT_SWEEP)
    parser.add_argument("--results", type=Path, default=DEFAULT_RESULTS)
    parser.add_argument("--only", nargs="+", help="candidate names to run, in this order")
    parser.add_argument("--split", default="val", choices=("val", "test"))
    parser.add_argument("--seed", type=int, default=None, help="training seed (default: conf's)")
    parser.add_argument("--steps", type=int, default=None, help="override training.steps")
    parser.add_argument("--env", default=None, help="Kedro environment (default: base+local)")
    parser.add_argument("--table", action="store_true", help="print the table and stop")
    parser.add_argument("--curve", metavar="NAME", help="print NAME's quality curve and stop")
    parser.add_argument("--plot", type=Path, help="with --curve: also draw it to this PNG")
    parser.add_argument(
        "--import-run",
        metavar="NAME",
        help="add the latest `kedro run`'s stage1_metrics/stage1_log as a row named NAME",
    )
    args = parser.parse_args(argv)

    if args.curve:
        rows = curve_rows(read_rows(args.results), args.curve, args.split)
        print(curve_table(rows))
        if args.plot:
            plot_curve(rows, args.plot, f"stage-1 quality curve: {args.curve} ({args.split})")
            print(f"wrote {args.plot}")
        return

    candidates = load_sweep(args.sweep)
    if args.import_run:
        row = row_from_run(
            args.import_run,
            candidates.get(args.import_run, {}).get("note", ""),
            json.loads(_latest(ROOT / "data/08_reporting/stage1_metrics.json").read_text()),
            json.loads(_latest(ROOT / "data/07_model_output/stage1_log.json").read_text()),
        )
        if any(row_key(r) == row_key(row) for r in read_rows(args.results)):
            raise SystemExit(f"{args.results} has that row already: {row_key(row)}")
        append_row(args.results, row)
        print(curve_table([row]))
        return
    names = args.only or list(candidates)
    unknown = [n for n in names if n not in candidates]
    if unknown:
        raise SystemExit(f"unknown candidates {unknown}; {args.sweep} has {sorted(candidates)}")
    if args.table:
        print(markdown_table(read_rows(args.results)))
        return

    os.environ.setdefault("KEDRO_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project

    from vlv_pipeline.params.t2i import T2IParams
    from vlv_pipeline.pipelines.stage1 import nodes

    bootstrap_project(ROOT)
    os.chdir(ROOT)  # relative paths in conf are relative to the project root
    with KedroSession.create(project_path=ROOT, env=args.env) as session:
        context = session.load_context()
        catalog = context.catalog
        base = context.params["stage1"]
        if hasattr(base, "model_dump"):  # Kedro may hand over the validated model already
            base = base.model_dump(mode="json")
        t2i = context.params["t2i"]
        t2i = t2i if isinstance(t2i, T2IParams) else T2IParams(**t2i)

        def load_data(params):
            return nodes.load_stage1_data(
                catalog.load("raw_images"),
                catalog.load("image_manifest"),
                catalog.load("latent_cache"),
                params,
                t2i,
            )

        run_sweep(
            load_data,
            base,
            {n: candidates[n] for n in names},
            args.results,
            t2i=t2i,
            split=args.split,
            seed=args.seed,
            steps=args.steps,
        )
    print(markdown_table(read_rows(args.results)))


if __name__ == "__main__":
    sys.exit(main())
