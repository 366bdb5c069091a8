"""The study's numbers: each study's rows, read from its points' metrics and logs, with every
rate beside its binomial interval (``rate``), and the paper's claims each is read against.

At 256 test images a rate near 50% carries about ±6 points at 95% (about ±3 near 90%), so
smaller differences are not results.
"""

from __future__ import annotations

import math
from statistics import NormalDist

from vlv_pipeline.errors import InputError

# The paper's claims (arXiv 2507.07104 v2), beside which each figure is read.
PAPER = {
    "data_efficiency": (
        "The paper never varies the number of stage-2 pairs. It trains stage 1 on 40M unpaired "
        "images and stage 2 on 6M captioned pairs, and argues that images alone are the cheap "
        "part; without stage 1 (its appendix C) captions collapse: FID 45.6-54.4 against 7.55."
    ),
    "queries": (
        "Table 4: reconstruction FID 5.72 at 16 queries, 5.60 at 32, 5.30 at 77; 77 is the "
        "default (the CLIP text encoder's limit)."
    ),
    "trainable": (
        "Table 4: caption FID (guidance 2) 9.71 with the MLP alone, 7.55 with the LLM, 6.64 "
        "with the LLM and the VLV encoder: the more is trained, the better. No LoRA row."
    ),
    "spatial": (
        "Section 4.4.1: the embeddings keep object pose and layout (in 3D); box errors of "
        "reconstructions shrink as stage 1 sees more images."
    ),
    "teacher": (
        "Section 6 (limitations): SD 2.1 caps the quality; the authors propose distilling SD "
        "3.5 or FLUX instead. Not measured in the paper; its README lists SDXL and SD 3.5 as "
        "to do."
    ),
    "composition": (
        "Section 4.4.2, figure 6: truncated embeddings of two images, joined, render one's "
        "object in place with the other's style or background; pictures only, no numbers."
    ),
}

SPATIAL_ROWS = ("from_embeddings", "from_caption", "ground_truth_caption", "chance")


def rate(value: float, n: int, confidence: float) -> dict:
    """A rate measured on ``n`` trials with its binomial interval (Wilson score: unlike the
    normal approximation it stays inside [0, 1] and is not empty at 0% or 100%)."""
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    p, n = float(value), max(int(n), 1)
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return {"rate": p, "n": n, "low": max(0.0, centre - half), "high": min(1.0, centre + half)}


def split_inputs(inputs: dict) -> dict[str, dict[str, dict]]:
    """``{"metrics:10:0": m, "log:10:0": l}`` -> ``{"metrics": {"10:0": m}, "log": {...}}``."""
    grouped: dict[str, dict[str, dict]] = {}
    for key, value in inputs.items():
        kind, _, point = key.partition(":")
        grouped.setdefault(kind, {})[point] = value
    return grouped


def _s_per_step(log: dict) -> float | None:
    steps = log["history"][-1]["step"] if log.get("history") else None
    return log["seconds"] / steps if steps and log.get("seconds") else None


def _key(point: str):
    return tuple(int(x) if x.isdigit() else x for x in point.split(":"))


def _by_point(metrics: dict) -> list[tuple[str, dict]]:
    """The points' metrics in the order of their numbers (``"3:0"`` before ``"10:0"``)."""
    return sorted(metrics.items(), key=lambda kv: _key(kv[0]))


def data_efficiency_rows(grouped: dict, confidence: float) -> list[dict]:
    """Study 1: per (percent of train, seed), both captioners' exact scenes and seconds."""
    rows = []
    for point, metrics in _by_point(grouped["metrics"]):
        percent, seed = (int(x) for x in point.split(":"))
        log, baseline_log = grouped["log"][point], grouped["baseline_log"][point]
        n = metrics["images"]
        rows.append(
            {
                "percent": percent,
                "seed": seed,
                "pairs": log["pairs"],
                "batch_size": log["batch_size"],  # all pairs, where they are fewer than a batch
                "vlv": rate(metrics["vlv"]["exact_scene"], n, confidence),
                "without_stage1": rate(metrics["without_stage1"]["exact_scene"], n, confidence),
                "seconds": {"vlv": log["seconds"], "without_stage1": baseline_log["seconds"]},
            }
        )
    return rows


def query_count_rows(grouped: dict, confidence: float) -> list[dict]:
    """Study 2: per query count N, the reconstructions from the embeddings and the cost."""
    rows = []
    for point, metrics in _by_point(grouped["metrics"]):
        recon, n = metrics["reconstruction"], metrics["images"]
        log = grouped["log"][point]
        rows.append(
            {
                "num_queries": int(point),
                "exact_scene": rate(recon["exact_scene"], n, confidence),
                "attributes": recon["attributes"],
                "steps": log.get("steps"),
                "s_per_step": _s_per_step(log),
                "trainable_parameters": log.get("trainable_parameters"),
            }
        )
    return rows


def what_trains_rows(grouped: dict, confidence: float) -> list[dict]:
    """Study 3: per trainable set of stage 2, its captions and its cost."""
    rows = []
    for trainable, metrics in grouped["metrics"].items():
        log, n = grouped["log"][trainable], metrics["images"]
        vlv = metrics["vlv"]
        rows.append(
            {
                "trainable": trainable,
                "exact_scene": rate(vlv["exact_scene"], n, confidence),
                "shape_recall": vlv.get("shape_recall"),
                "position_precision": vlv.get("position_precision"),
                "trainable_parameters": log.get("trainable_parameters"),
                "s_per_step": _s_per_step(log),
            }
        )
    return rows


def teacher_rows(grouped: dict, confidence: float) -> list[dict]:
    """Study 6: per teacher, stage 1's reconstructions and stage 2's captions."""
    rows = []
    for teacher in ("sd", "flow"):
        stage1, stage2 = grouped["stage1_metrics"][teacher], grouped["stage2_metrics"][teacher]
        recon = stage1["reconstruction"]
        rows.append(
            {
                "teacher": teacher,
                "reconstruction": rate(recon["exact_scene"], stage1["images"], confidence),
                "reconstruction_attributes": recon["attributes"],
                "captions": rate(stage2["vlv"]["exact_scene"], stage2["images"], confidence),
                "stage1_s_per_step": _s_per_step(grouped["stage1_log"][teacher]),
            }
        )
    return rows


def spatial_rows(eval_metrics: dict, confidence: float) -> list[dict]:
    """Study 4: per reconstruction of the evaluation, where its true objects were found."""
    recon = eval_metrics.get("reconstruction", {})
    rows = []
    for name in (*SPATIAL_ROWS[:2], "without_stage1", *SPATIAL_ROWS[2:]):
        entry = recon.get(name)
        if not entry or "spatial_exact_cell" not in entry:
            continue
        n = entry.get("spatial_objects") or eval_metrics["images"]
        rows.append(
            {
                "reconstruction": name,
                "what": entry.get("what", name),
                "exact_cell": rate(entry["spatial_exact_cell"], n, confidence),
                "elsewhere": rate(entry["spatial_elsewhere"], n, confidence),
                "not_found": rate(entry["spatial_not_found"], n, confidence),
                "distance_elsewhere": entry.get("spatial_distance"),
            }
        )
    if not rows:
        raise InputError(
            "eval_metrics has no spatial_* readings: they need evaluate.judge: probe and a "
            "current evaluation; rerun `kedro run --pipeline evaluate`"
        )
    return rows


def composition_entry(scores: dict, confidence: float) -> dict:
    """Study 5, one variant: ``metrics.spatial.composition``'s scores, ``both`` as a rate."""
    count = scores["renders"]
    return {
        "both": rate(scores["both"], count, confidence),
        "from_a": scores["from_a"],
        "from_b": scores["from_b"],
        "from_neither": scores["from_neither"],
        "renders": count,
    }
