"""Sampler sweep: the stage-1 reconstructions rendered by other samplers and step counts, on val.

    python scripts/sweep_sampler.py                        # every candidate, render seed 0
    python scripts/sweep_sampler.py --seeds 0 1            # and a second render seed
    python scripts/sweep_sampler.py --only dpm8 unipc8     # a subset (the reference runs too)
    python scripts/sweep_sampler.py --table                # print the tables, render nothing

Validation (stage 1's ``validate_stage1``) and evaluation (``evaluate``'s ``from_embeddings``
row) render 256 images at 25 DDIM steps (issue 28). Candidates live in
``conf/sweeps/sampler.yml``: a name, a note and overrides of ``evaluate.sampling`` (the
scheduler, one of ``SamplingParams``' samplers, and the steps); its ``reference`` is 25-step
DDIM. The protocol, the same for every candidate:

- the encoder: the catalog's ``vlv_encoder``, the latest default run's trained stage-1
  encoder (its version is part of each row; another encoder is another set of rows);
- the images: the first ``--images`` (256) val images by image_id (``load_eval_data`` with
  ``evaluate.split`` val; test is never seen), embedded once (``Teacher.condition_images``);
- the renders: the evaluation's own ``render_from_embeddings``, each image drawing its noise
  from its own generator (``image_generators``, seeded by the render seed and its index), so
  every candidate starts from the same noise and the comparison is paired;
- the judge: ``score_evaluation`` with the shipped attribute probe (``evaluate.probe``):
  the exact-scene rate, shown with its 95% Wilson interval, and per image, so the table also
  counts the images a candidate gets right that the reference gets wrong and the reverse
  (with McNemar's exact p-value);
- the time: seconds per render batch (``evaluate.sampling.batch_size`` images; the render
  only, not the embedding or the probe), after one untimed warm-up render. The reference is
  rendered again in every run that renders anything, so each row's ratio to it was measured
  in the same process, on the same machine and load.

Resumable: a finished (candidate, seed, images, encoder) is a row in the results file (JSONL)
and is skipped. A missing encoder stops the script with what to run.
"""

from __future__ import annotations

import argparse
import hashlib
import math
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from sweep_stage1 import append_row, apply_overrides, read_rows  # noqa: E402

DEFAULT_SWEEP = ROOT / "conf/sweeps/sampler.yml"
DEFAULT_RESULTS = ROOT / "data/08_reporting/sweeps/sampler.jsonl"
SPLIT = "val"  # decided on val; test is never rendered here
CONFIDENCE = 0.95
WARMUP_IMAGES, WARMUP_STEPS = 2, 2  # one untimed render first: one-time costs


def missing_encoder_message(env: str | None) -> str:
    flag = f" --env {env}" if env else ""
    return (
        f"no trained stage-1 encoder: the catalog's vlv_encoder{' (env ' + env + ')' if env else ''}"
        " has no saved version. The sampler sweep renders the latest default run's "
        f"reconstructions: run `make run` first (the whole default run), or `kedro run{flag} "
        "--pipeline stage1` once the world, ingest and cache pipelines have run."
    )


# ------------------------------------------------------------------------------ candidates


def sampling_of(base: dict, body: dict, seed: int | None = None) -> dict:
    """``evaluate.sampling`` (``base``, a plain dict) under a candidate's overrides and the
    render seed, checked as ``SamplingParams`` (its samplers, its ranges, no unknown keys)."""
    from vlv_pipeline.params.teacher import SamplingParams

    sampling = apply_overrides(base, body.get("overrides", {}))
    if seed is not None:
        sampling["seed"] = seed
    return SamplingParams(**sampling).model_dump()


def load_candidates(path: Path, base: dict | None = None) -> tuple[str, dict[str, dict]]:
    """The sweep file's reference name and candidates (name -> {note, overrides}), each
    checked against ``base`` sampling (default: SamplingParams' own defaults)."""
    if not path.is_file():
        raise SystemExit(f"sweep file {path} not found")
    spec = yaml.safe_load(path.read_text()) or {}
    candidates = spec.get("candidates")
    if not isinstance(candidates, dict) or not candidates:
        raise SystemExit(f"{path}: needs a `candidates:` mapping of name -> {{note, overrides}}")
    reference = spec.get("reference")
    if reference not in candidates:
        raise SystemExit(f"{path}: `reference:` must name one of {sorted(candidates)}")
    for name, body in candidates.items():
        if not isinstance(body, dict) or not isinstance(body.get("overrides", {}), dict):
            raise SystemExit(f"{path}: candidate {name!r} needs `overrides:` as a mapping")
        try:
            sampling_of(base or {}, body)
        except (KeyError, ValueError) as error:  # pydantic's ValidationError is a ValueError
            raise SystemExit(f"{path}: candidate {name!r}: {error}") from error
    return reference, candidates


def chosen(names: list[str] | None, reference: str, candidates: dict) -> list[str]:
    """The candidates to run, in order: ``names`` (default: all), the reference first."""
    names = names or list(candidates)
    unknown = [n for n in names if n not in candidates]
    if unknown:
        raise SystemExit(f"unknown candidates {unknown}; the sweep file has {sorted(candidates)}")
    return [reference, *(n for n in names if n != reference)]


# ------------------------------------------------------------------------------ rows


def row_key(row: dict) -> tuple:
    return row["name"], row["seed"], row["split"], row["images"], row["encoder"]


def ids_digest(image_ids: list[str]) -> str:
    """A short fingerprint of the judged images (the same images for every candidate)."""
    return hashlib.sha256("\n".join(image_ids).encode()).hexdigest()[:16]


def wilson(rate: float, n: int) -> dict:
    """The project's Wilson interval (the study's ``rate``)."""
    from vlv_pipeline.pipelines.study.stats import rate as wilson_rate

    return wilson_rate(rate, n, CONFIDENCE)


def mcnemar_p(gained: int, lost: int) -> float:
    """McNemar's exact two-sided p-value for paired outcomes: ``gained`` images right only
    with the candidate, ``lost`` right only with the reference (binomial, p = 1/2)."""
    n = gained + lost
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(gained, lost) + 1)) / 2**n
    return min(1.0, 2 * tail)


def paired(row: dict, ref: dict | None) -> tuple[int, int] | None:
    """(gained, lost) against the reference row on the same images and noise, or None."""
    if ref is None or ref.get("images_digest") != row.get("images_digest"):
        return None
    gained = sum(a and not b for a, b in zip(row["exact"], ref["exact"], strict=True))
    lost = sum(b and not a for a, b in zip(row["exact"], ref["exact"], strict=True))
    return gained, lost


def _reference_rows(rows: list[dict]) -> dict[tuple, dict]:
    return {
        (r["seed"], r["split"], r["images"], r["encoder"]): r for r in rows if r.get("is_reference")
    }


def markdown_table(rows: list[dict]) -> str:
    """One line per row: exact scene [95% Wilson], gained/lost vs the reference (same seed,
    images and encoder) with McNemar's p, seconds per render batch and the time ratio."""
    refs = _reference_rows(rows)
    lines = [
        "| candidate | sampler | steps | seed | exact scene [95% CI] | vs reference: +gained "
        "/ -lost (McNemar p) | s / batch | time vs reference | note |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        rec = r["reconstruction"]
        ci = wilson(rec["exact_scene"], r["images"])
        ref = refs.get((r["seed"], r["split"], r["images"], r["encoder"]))
        pair = paired(r, ref)
        versus = (
            "-"
            if pair is None
            else "reference"
            if r.get("is_reference")
            else f"+{pair[0]} / -{pair[1]} (p {mcnemar_p(*pair):.2f})"
        )
        lines.append(
            f"| {r['name']} | {r['scheduler']} | {r['steps']} | {r['seed']} "
            f"| {rec['exact_scene']:.1%} [{ci['low']:.1%}, {ci['high']:.1%}] | {versus} "
            f"| {r['seconds_per_batch']:.2f} | {r['time_ratio']:.2f}x | {r.get('note', '')} |"
        )
    return "\n".join(lines)


def summary(rows: list[dict]) -> str:
    """Per candidate over its seeds: the mean and worst exact scene, the images gained and
    lost against the reference (all seeds), and the mean time ratio."""
    refs = _reference_rows(rows)
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["name"], r["split"], r["images"], r["encoder"]), []).append(r)
    lines = [
        "| candidate | sampler | steps | seeds | mean exact scene | worst seed | +gained / -lost "
        "(McNemar p) | time vs reference |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for (name, *_), mine in groups.items():
        exact = [r["reconstruction"]["exact_scene"] for r in mine]
        pairs = [
            paired(r, refs.get((r["seed"], r["split"], r["images"], r["encoder"]))) for r in mine
        ]
        if mine[0].get("is_reference"):
            versus = "reference"
        elif any(p is None for p in pairs):
            versus = "-"
        else:
            gained, lost = sum(p[0] for p in pairs), sum(p[1] for p in pairs)
            versus = f"+{gained} / -{lost} (p {mcnemar_p(gained, lost):.2f})"
        ratio = sum(r["time_ratio"] for r in mine) / len(mine)
        lines.append(
            f"| {name} | {mine[0]['scheduler']} | {mine[0]['steps']} | {len(mine)} "
            f"| {sum(exact) / len(exact):.1%} | {min(exact):.1%} | {versus} | {ratio:.2f}x |"
        )
    return "\n".join(lines)


# ------------------------------------------------------------------------------ the sweep


def protocol_params(evaluate: dict, images: int):
    """``params:evaluate`` (a plain dict) made the sweep's protocol: the first ``images`` val
    images of the manifest, judged by the probe."""
    from vlv_pipeline.params.evaluate import EvaluateParams

    params = EvaluateParams(**{**evaluate, "source": "split", "split": SPLIT, "images": images})
    if params.judge != "probe" or not params.probe:
        raise SystemExit(
            "the sampler sweep judges exact scenes with the attribute probe: set "
            f"evaluate.judge to probe and evaluate.probe to its directory (judge: {params.judge})"
        )
    return params


def _render(t2i, conditions: list, sampling) -> tuple[list, list[float]]:
    """Every batch rendered by the evaluation's ``render_from_embeddings``, each one timed."""
    from vlv_pipeline.pipelines.evaluate.renders import render_from_embeddings

    renders, seconds, start = [], [], 0
    for batch in conditions:
        began = time.perf_counter()
        renders.append(render_from_embeddings(t2i, batch, start, sampling))
        seconds.append(time.perf_counter() - began)
        start += len(batch)
    return renders, seconds


def run_sweep(
    encoder,
    data,
    params,
    candidates: dict[str, dict],
    reference: str,
    results: Path,
    *,
    seeds: list[int],
    encoder_id: str,
    t2i,
    log=print,
) -> list[dict]:
    """Render and judge each (candidate, seed) not yet in ``results``; return the rows added.

    ``data``: the evaluation set (``load_eval_data`` under ``protocol_params``); ``params``:
    those ``EvaluateParams``; ``t2i``: ``params:t2i`` (``T2IParams``), whose model renders the
    embeddings; ``candidates``: name -> {note, overrides} with ``reference``
    among them (rendered first in any run that renders anything: the time ratios are against
    its time in the same run)."""
    import pandas as pd
    import torch

    from vlv_pipeline.models.device import inference_device
    from vlv_pipeline.models.teachers import load_teacher
    from vlv_pipeline.params.evaluate import RenderParams
    from vlv_pipeline.pipelines.evaluate.renders import render_from_embeddings
    from vlv_pipeline.pipelines.evaluate.scoring import score_evaluation

    base = params.sampling.model_dump()
    n = len(data.image_ids)
    digest = ids_digest(list(data.image_ids))
    order = [reference, *(c for c in candidates if c != reference)]
    done = {row_key(r): r for r in read_rows(results)}
    todo = {
        seed: [c for c in order if (c, seed, SPLIT, n, encoder_id) not in done] for seed in seeds
    }
    for seed, names in todo.items():
        for name in (c for c in order if c not in names):
            log(f"[sampler sweep] {name} seed {seed}: done already ({results}), skipped")
    if not any(todo.values()):
        return []

    device = inference_device()
    teacher = load_teacher(t2i.model, params.t2i_dtype, device)
    size = params.sampling.batch_size
    began = time.perf_counter()
    conditions = [
        teacher.condition_images(encoder, data.images(start, start + size), size)
        for start in range(0, n, size)
    ]
    embed_seconds = (time.perf_counter() - began) / len(conditions)
    captions = pd.DataFrame({"image_id": list(data.image_ids), "reference": data.references})
    warmup = RenderParams(**{**base, "steps": WARMUP_STEPS, "batch_size": WARMUP_IMAGES})
    render_from_embeddings(teacher, conditions[0][:WARMUP_IMAGES], 0, warmup)  # untimed
    run_id = datetime.now(UTC).isoformat(timespec="seconds")
    added: list[dict] = []
    reference_seconds: float | None = None
    for seed in seeds:
        names = todo[seed]
        if not names:
            continue
        if reference not in names:
            names = [reference, *names]  # timed again (and checked) in this run
        for name in names:
            body = candidates[name]
            sampling = RenderParams(**sampling_of(base, body, seed))
            renders, seconds = _render(teacher, conditions, sampling)
            per_batch = sum(seconds) / len(seconds)
            if name == reference and reference_seconds is None:
                reference_seconds = per_batch
            judged = params.model_copy(update={"sampling": sampling})
            with torch.no_grad():
                metrics, samples, _ = score_evaluation(
                    data, captions, {"from_embeddings": torch.cat(renders)}, judged
                )
            rec = dict(metrics["reconstruction"]["from_embeddings"])
            rec.pop("what", None)
            exact = [bool(x) for x in samples["from_embeddings_exact"]]
            key = (name, seed, SPLIT, n, encoder_id)
            if key in done:  # the reference, rendered again for its time only
                before = done[key]["reconstruction"]["exact_scene"]
                if abs(before - rec["exact_scene"]) > 0.5 / n:
                    log(
                        f"[sampler sweep] warning: {name} seed {seed} now reads "
                        f"{rec['exact_scene']:.4f} exact, {before:.4f} when it was recorded"
                    )
                log(f"[sampler sweep] {name} seed {seed}: timed again, {per_batch:.2f} s/batch")
                continue
            row = {
                "name": name,
                "note": body.get("note", ""),
                "overrides": body.get("overrides", {}),
                "is_reference": name == reference,
                "scheduler": sampling.scheduler,
                "steps": sampling.steps,
                "sampling": sampling.model_dump(),
                "seed": seed,
                "split": SPLIT,
                "images": n,
                "images_digest": digest,
                "encoder": encoder_id,
                "reconstruction": rec,
                "exact": exact,
                "batch_size": sampling.batch_size,
                "batch_seconds": seconds,
                "seconds_per_batch": per_batch,
                "reference_seconds_per_batch": reference_seconds,
                "time_ratio": per_batch / reference_seconds,
                "embed_seconds_per_batch": embed_seconds,
                "device": str(device),
                "torch_threads": torch.get_num_threads(),
                "run": run_id,
            }
            append_row(results, row)
            added.append(row)
            done[key] = row
            ci = wilson(rec["exact_scene"], n)
            log(
                f"[sampler sweep] {name} seed {seed}: exact {rec['exact_scene']:.4f} "
                f"[{ci['low']:.3f}, {ci['high']:.3f}], {per_batch:.2f} s/batch "
                f"({row['time_ratio']:.2f}x the reference)"
            )
    return added


def _encoder_version(catalog) -> str:
    dataset = catalog["vlv_encoder"]
    resolve = getattr(dataset, "resolve_load_version", None)
    return (resolve() if resolve else None) or "unversioned"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sweep", type=Path, default=DEFAULT_SWEEP)
    parser.add_argument("--results", type=Path, default=DEFAULT_RESULTS)
    parser.add_argument("--only", nargs="+", help="candidate names to run (the reference too)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="render seeds")
    parser.add_argument("--images", type=int, default=256, help="the first N val images")
    parser.add_argument("--env", default=None, help="Kedro environment (default: base+local)")
    parser.add_argument("--project", type=Path, default=ROOT, help=argparse.SUPPRESS)
    parser.add_argument("--table", action="store_true", help="print the tables and stop")
    args = parser.parse_args(argv)

    reference, candidates = load_candidates(args.sweep)
    names = chosen(args.only, reference, candidates)
    if args.table:
        rows = read_rows(args.results)
        print(markdown_table(rows) + "\n\n" + summary(rows))
        return

    os.environ.setdefault("KEDRO_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project

    from vlv_pipeline.params.t2i import T2IParams
    from vlv_pipeline.pipelines.evaluate import nodes as evaluate

    root = args.project.resolve()
    results = args.results.resolve()
    sweep = args.sweep.resolve()  # before the chdir below, as --results
    bootstrap_project(root)
    os.chdir(root)  # relative paths in conf are relative to the project root
    with KedroSession.create(project_path=root, env=args.env) as session:
        context = session.load_context()
        catalog = context.catalog
        if not catalog.exists("vlv_encoder"):
            raise SystemExit(missing_encoder_message(args.env))
        evaluate_params = context.params["evaluate"]
        if hasattr(evaluate_params, "model_dump"):
            evaluate_params = evaluate_params.model_dump(mode="json")
        params = protocol_params(evaluate_params, args.images)
        t2i = context.params["t2i"]
        t2i = t2i if hasattr(t2i, "model") else T2IParams(**t2i)
        reference, candidates = load_candidates(sweep, params.sampling.model_dump())
        encoder = catalog.load("vlv_encoder")
        encoder_id = _encoder_version(catalog)
        data = evaluate.load_eval_data(
            catalog.load("raw_images"), catalog.load("image_manifest"), params
        )
        if len(data.image_ids) < args.images:
            print(
                f"[sampler sweep] warning: val has {len(data.image_ids)} images, not {args.images}",
                flush=True,
            )
        print(
            f"[sampler sweep] encoder {encoder_id}, {len(data.image_ids)} val images, "
            f"render seeds {args.seeds}, candidates {names}",
            flush=True,
        )
        run_sweep(
            encoder,
            data,
            params,
            {n: candidates[n] for n in names},
            reference,
            results,
            seeds=args.seeds,
            encoder_id=encoder_id,
            t2i=t2i,
            log=lambda line: print(line, flush=True),
        )
    rows = read_rows(results)
    print(markdown_table(rows) + "\n\n" + summary(rows))


if __name__ == "__main__":
    main()
