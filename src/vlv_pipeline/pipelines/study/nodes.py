"""Nodes of the `study` pipeline: each study's numbers and figure, composition renders, report.

Every rate comes with its binomial interval (``rate``): at 256 test images a rate near 50%
carries about ±6 points at 95% (about ±3 near 90%), so smaller differences are not results.
"""

from __future__ import annotations

import html
import logging
import math
from datetime import UTC, datetime
from statistics import NormalDist

import torch

from vlv_pipeline.errors import InputError, ParameterError
from vlv_pipeline.metrics.plots import image_grid
from vlv_pipeline.metrics.spatial import composition, disjoint_pairs
from vlv_pipeline.models.device import inference_device
from vlv_pipeline.models.teachers import Condition, Teacher, load_teacher
from vlv_pipeline.params.evaluate import EvaluateParams
from vlv_pipeline.params.study import StudyParams
from vlv_pipeline.world.data import tensor_to_uint8

logger = logging.getLogger(__name__)

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


def rate(value: float, n: int, confidence: float) -> dict:
    """A rate measured on ``n`` trials with its binomial interval (Wilson score: unlike the
    normal approximation it stays inside [0, 1] and is not empty at 0% or 100%)."""
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    p, n = float(value), max(int(n), 1)
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return {"rate": p, "n": n, "low": max(0.0, centre - half), "high": min(1.0, centre + half)}


def _yerr(rates: list[dict]) -> list[list[float]]:
    """Matplotlib's asymmetric error bars, in percent."""
    return [
        [100 * (r["rate"] - r["low"]) for r in rates],
        [100 * (r["high"] - r["rate"]) for r in rates],
    ]


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _split_inputs(inputs: dict) -> dict[str, dict[str, dict]]:
    """``{"metrics:10:0": m, "log:10:0": l}`` -> ``{"metrics": {"10:0": m}, "log": {...}}``."""
    grouped: dict[str, dict[str, dict]] = {}
    for key, value in inputs.items():
        kind, _, point = key.partition(":")
        grouped.setdefault(kind, {})[point] = value
    return grouped


def _s_per_step(log: dict) -> float | None:
    steps = log["history"][-1]["step"] if log.get("history") else None
    return log["seconds"] / steps if steps and log.get("seconds") else None


def data_efficiency(params: StudyParams, **inputs) -> tuple[dict, object]:
    """Study 1: exact-scene captions against the number of pairs, VLV against "without
    stage 1" on the same pairs and steps, one line per seed."""
    grouped = _split_inputs(inputs)
    rows = []
    for point, metrics in sorted(grouped["metrics"].items(), key=lambda kv: _key(kv[0])):
        percent, seed = (int(x) for x in point.split(":"))
        log, baseline_log = grouped["log"][point], grouped["baseline_log"][point]
        n = metrics["images"]
        rows.append(
            {
                "percent": percent,
                "seed": seed,
                "pairs": log["pairs"],
                "batch_size": log["batch_size"],  # all pairs, where they are fewer than a batch
                "vlv": rate(metrics["vlv"]["exact_scene"], n, params.confidence),
                "without_stage1": rate(
                    metrics["without_stage1"]["exact_scene"], n, params.confidence
                ),
                "seconds": {"vlv": log["seconds"], "without_stage1": baseline_log["seconds"]},
            }
        )
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for seed in sorted({r["seed"] for r in rows}):
        mine = [r for r in rows if r["seed"] == seed]
        x = [r["pairs"] for r in mine]
        for name, style, label in (
            ("vlv", "-o", "VLV (stage 1, then stage 2)"),
            ("without_stage1", "--s", "without stage 1"),
        ):
            ax.errorbar(
                x,
                [100 * r[name]["rate"] for r in mine],
                yerr=_yerr([r[name] for r in mine]),
                fmt=style,
                capsize=3,
                color="C0" if name == "vlv" else "C3",
                alpha=1.0 if seed == 0 else 0.55,
                label=f"{label}, seed {seed}",
            )
    ax.set_xscale("log")
    ax.set_xlabel("caption pairs (log scale)")
    ax.set_ylabel("exact-scene captions (%)")
    ax.set_ylim(-2, 102)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title("1. data efficiency: captions against paired data", fontsize=10)
    fig.tight_layout()
    return {"rows": rows, "paper": PAPER["data_efficiency"]}, fig


def _key(point: str):
    return tuple(int(x) if x.isdigit() else x for x in point.split(":"))


def query_count(params: StudyParams, **inputs) -> tuple[dict, object]:
    """Study 2: reconstructions from the embeddings (exact scenes, attributes) against N."""
    grouped = _split_inputs(inputs)
    rows = []
    for point, metrics in sorted(grouped["metrics"].items(), key=lambda kv: _key(kv[0])):
        recon, n = metrics["reconstruction"], metrics["images"]
        log = grouped["log"][point]
        rows.append(
            {
                "num_queries": int(point),
                "exact_scene": rate(recon["exact_scene"], n, params.confidence),
                "attributes": recon["attributes"],
                "steps": log.get("steps"),
                "s_per_step": _s_per_step(log),
                "trainable_parameters": log.get("trainable_parameters"),
            }
        )
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    x = [r["num_queries"] for r in rows]
    ax.errorbar(
        x,
        [100 * r["exact_scene"]["rate"] for r in rows],
        yerr=_yerr([r["exact_scene"] for r in rows]),
        fmt="-o",
        capsize=3,
        label="exact scenes",
    )
    ax.plot(x, [100 * r["attributes"] for r in rows], "-^", label="attributes")
    for r in rows:
        if r["s_per_step"]:
            ax.annotate(
                f"{r['s_per_step']:.2f} s/step",
                (r["num_queries"], 100 * r["exact_scene"]["rate"]),
                textcoords="offset points",
                xytext=(0, -14),
                ha="center",
                fontsize=7,
            )
    ax.set_xscale("log")
    ax.minorticks_off()
    ax.set_xticks(x, [str(v) for v in x])
    ax.set_xlabel("queries N (caption embeddings per image)")
    ax.set_ylabel("reconstructions from embeddings (%)")
    ax.set_ylim(-2, 102)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("2. query count, at equal steps", fontsize=10)
    fig.tight_layout()
    return {"rows": rows, "paper": PAPER["queries"]}, fig


def what_trains(params: StudyParams, **inputs) -> tuple[dict, object]:
    """Study 3: what trains in stage 2, as a table and a bar chart of exact-scene captions."""
    grouped = _split_inputs(inputs)
    rows = []
    for trainable, metrics in grouped["metrics"].items():
        log, n = grouped["log"][trainable], metrics["images"]
        vlv = metrics["vlv"]
        rows.append(
            {
                "trainable": trainable,
                "exact_scene": rate(vlv["exact_scene"], n, params.confidence),
                "shape_recall": vlv.get("shape_recall"),
                "position_precision": vlv.get("position_precision"),
                "trainable_parameters": log.get("trainable_parameters"),
                "s_per_step": _s_per_step(log),
            }
        )
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    labels = [r["trainable"].replace("projector", "psi").replace("+", " + ") for r in rows]
    values = [100 * r["exact_scene"]["rate"] for r in rows]
    ax.bar(
        range(len(rows)),
        values,
        yerr=_yerr([r["exact_scene"] for r in rows]),
        capsize=4,
        color=["C7", "C0", "C2", "C1"][: len(rows)],
    )
    for i, v in enumerate(values):
        ax.text(i, v + 3, f"{v:.1f}", ha="center", fontsize=8)
    ax.set_xticks(range(len(rows)), labels, fontsize=8)
    ax.set_ylabel("exact-scene captions (%)")
    ax.set_ylim(0, 110)
    ax.grid(alpha=0.3, axis="y")
    ax.set_title("3. what trains in stage 2", fontsize=10)
    fig.tight_layout()
    return {"rows": rows, "paper": PAPER["trainable"]}, fig


def teacher_comparison(params: StudyParams, **inputs) -> tuple[dict, object]:
    """Study 6: the default recipe distilled from each shapes-world teacher: reconstructions
    from the stage-1 embeddings and stage 2's captions (exact scenes), side by side."""
    grouped = _split_inputs(inputs)
    rows = []
    for teacher in ("sd", "flow"):
        stage1, stage2 = grouped["stage1_metrics"][teacher], grouped["stage2_metrics"][teacher]
        recon = stage1["reconstruction"]
        rows.append(
            {
                "teacher": teacher,
                "reconstruction": rate(recon["exact_scene"], stage1["images"], params.confidence),
                "reconstruction_attributes": recon["attributes"],
                "captions": rate(stage2["vlv"]["exact_scene"], stage2["images"], params.confidence),
                "stage1_s_per_step": _s_per_step(grouped["stage1_log"][teacher]),
            }
        )
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    width = 0.38
    for j, (key, label) in enumerate(
        (("reconstruction", "reconstructions"), ("captions", "captions"))
    ):
        values = [100 * r[key]["rate"] for r in rows]
        xs = [i + (j - 0.5) * width for i in range(len(rows))]
        ax.bar(xs, values, width, yerr=_yerr([r[key] for r in rows]), capsize=4, label=label)
        for x, v in zip(xs, values, strict=True):
            ax.text(x, v + 3, f"{v:.1f}", ha="center", fontsize=8)
    ax.set_xticks(range(len(rows)), [TEACHER_LABELS[r["teacher"]] for r in rows], fontsize=8)
    ax.set_ylabel("exact scenes (%)")
    ax.set_ylim(0, 110)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title("6. the teacher stage 1 distils", fontsize=10)
    fig.tight_layout()
    return {"rows": rows, "paper": PAPER["teacher"]}, fig


SPATIAL_ROWS = ("from_embeddings", "from_caption", "ground_truth_caption", "chance")


def spatial_fidelity_study(eval_metrics: dict, params: StudyParams) -> tuple[dict, object]:
    """Study 4, from the default run's evaluation: each true object found in its own cell,
    only elsewhere (mean Chebyshev distance) or not at all, per reconstruction."""
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
                "exact_cell": rate(entry["spatial_exact_cell"], n, params.confidence),
                "elsewhere": rate(entry["spatial_elsewhere"], n, params.confidence),
                "not_found": rate(entry["spatial_not_found"], n, params.confidence),
                "distance_elsewhere": entry.get("spatial_distance"),
            }
        )
    if not rows:
        raise InputError(
            "eval_metrics has no spatial_* readings: they need evaluate.judge: probe and a "
            "current evaluation; rerun `kedro run --pipeline evaluate`"
        )
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    bottom = [0.0] * len(rows)
    for key, colour, label in (
        ("exact_cell", "C2", "in its own cell"),
        ("elsewhere", "C1", "only elsewhere"),
        ("not_found", "C7", "not found"),
    ):
        values = [100 * r[key]["rate"] for r in rows]
        ax.bar(range(len(rows)), values, bottom=bottom, color=colour, label=label)
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    ax.errorbar(
        range(len(rows)),
        [100 * r["exact_cell"]["rate"] for r in rows],
        yerr=_yerr([r["exact_cell"] for r in rows]),
        fmt="none",
        ecolor="black",
        capsize=3,
    )
    for i, r in enumerate(rows):
        if r["distance_elsewhere"]:
            ax.text(i, 101, f"d={r['distance_elsewhere']:.2f}", ha="center", fontsize=7)
    names = {
        "from_embeddings": "embeddings",
        "from_caption": "VLV caption",
        "without_stage1": "w/o stage 1\ncaption",
        "ground_truth_caption": "reference\n(upper bound)",
        "chance": "other image\n(chance)",
    }
    ax.set_xticks(range(len(rows)), [names.get(r["reconstruction"], "?") for r in rows])
    ax.tick_params(axis="x", labelsize=7)
    ax.set_ylabel("true objects (%)")
    ax.set_ylim(0, 108)
    ax.legend(fontsize=7, loc="lower left")
    ax.set_title("4. spatial fidelity: where each true object is re-rendered", fontsize=10)
    fig.tight_layout()
    return {"rows": rows, "images": eval_metrics["images"], "paper": PAPER["spatial"]}, fig


def padding_embeddings(t2i: Teacher, length: int) -> torch.Tensor:
    """``length`` copies of the teacher's input embedding of its tokenizer's pad token (every
    fed text encoder's, side by side): what the T2I model itself fills a short prompt with
    (study 5's "padded as the model pads")."""
    pad = t2i.tokenizer.pad_token_id
    if pad is None:
        pad = t2i.tokenizer.eos_token_id
    return t2i.token_embeddings[pad].detach().expand(length, -1)


@torch.no_grad()
def composition_study(
    vlv_encoder, eval_data, evaluate: EvaluateParams, params: StudyParams
) -> tuple[dict, object, object, object]:
    """Study 5: [A's first half ; B's first half] of the caption embeddings, rendered, for
    pairs of test images whose objects occupy different cells; controls: A's first half
    padded as the T2I pads a short prompt, and A's full embeddings."""
    from vlv_pipeline.models.probe import AttributeProbe, caption_targets

    if not evaluate.probe:
        raise ParameterError("study 5 reads renders with the probe: set evaluate.probe")
    probe = AttributeProbe.from_pretrained(evaluate.probe).eval()
    device = inference_device()
    t2i = load_teacher(evaluate.stage1_t2i, evaluate.t2i_dtype, device)
    s = evaluate.sampling
    images = eval_data.images()
    scenes = caption_targets(eval_data.references, probe)
    pairs = disjoint_pairs(scenes, params.composition_pairs, params.composition_seed)
    if not pairs:
        raise InputError("no two test images have their objects in different cells")
    encoder = vlv_encoder.eval().to(device)
    step = s.batch_size
    embeddings = torch.cat(
        [encoder(images[i : i + step].to(device)) for i in range(0, len(images), step)]
    )
    a = torch.tensor([i for i, _ in pairs])
    b = torch.tensor([j for _, j in pairs])
    n = embeddings.shape[1]
    half = n // 2
    padding = padding_embeddings(t2i, n - half).to(embeddings.device, embeddings.dtype)
    variants = {
        "a_half_b_half": torch.cat([embeddings[a, :half], embeddings[b, : n - half]], 1),
        "a_half_padded": torch.cat(
            [embeddings[a, :half], padding.unsqueeze(0).expand(len(pairs), -1, -1)], 1
        ),
        "a_full": embeddings[a],
    }
    results, renders = {}, {}
    for name, inputs in variants.items():
        conditions = Condition.cat(
            [t2i.condition(inputs[i : i + step]) for i in range(0, len(inputs), step)]
        )
        renders[name] = t2i.render(
            conditions,
            steps=s.steps,
            guidance=s.guidance,
            seed=s.seed,
            scheduler=s.scheduler,
            batch_size=s.batch_size,
        )
        renders[name] = renders[name].cpu()
        scores = composition(probe.predict(renders[name]), scenes[a], scenes[b])
        count = scores["renders"]
        results[name] = {
            "both": rate(scores["both"], count, params.confidence),
            "from_a": scores["from_a"],
            "from_b": scores["from_b"],
            "from_neither": scores["from_neither"],
            "renders": count,
        }
        logger.info(
            "study 5 (%s): both %.3f, A's objects %.3f, B's %.3f, neither %.3f",
            name,
            scores["both"],
            scores["from_a"],
            scores["from_b"],
            scores["from_neither"],
        )
    result = {
        "pairs": len(pairs),
        "num_queries": n,
        "half": half,
        "padding": "the text encoder's input embedding of the T2I tokenizer's pad token",
        "variants": results,
        "paper": PAPER["composition"],
    }
    grid = _composition_grid(images, a, b, renders)
    return result, _composition_figure(results), grid, grid  # saved, and for the preview


COMPOSITION_LABELS = {
    "a_half_b_half": "[A half ; B half]",
    "a_half_padded": "[A half ; padding]",
    "a_full": "A, all embeddings",
}


def _composition_figure(results: dict):
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    keys = (("both", "A's and B's objects (renders)"), ("from_a", "A's objects"))
    keys += (("from_b", "B's objects"), ("from_neither", "objects from neither"))
    width = 0.2
    for k, (key, label) in enumerate(keys):
        values = [
            100 * (v[key]["rate"] if isinstance(v[key], dict) else v[key]) for v in results.values()
        ]
        errors = (
            _yerr([v[key] for v in results.values()])
            if key == "both"
            else [[0] * len(values), [0] * len(values)]
        )
        ax.bar(
            [i + (k - 1.5) * width for i in range(len(results))],
            values,
            width,
            yerr=errors,
            capsize=2,
            label=label,
        )
    ax.set_xticks(range(len(results)), [COMPOSITION_LABELS[k] for k in results], fontsize=8)
    ax.set_ylabel("%")
    ax.set_ylim(0, 105)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=7)
    ax.set_title("5. composition: halves of two images' embeddings", fontsize=10)
    fig.tight_layout()
    return fig


def _composition_grid(images, a, b, renders, n: int = 6):
    n = min(n, len(a))
    columns = {"A": tensor_to_uint8(images[a[:n]]), "B": tensor_to_uint8(images[b[:n]])}
    for name, label in COMPOSITION_LABELS.items():
        columns[label] = tensor_to_uint8(renders[name][:n])
    return image_grid(columns, title="study 5: composition renders", items_per_row=2)


STUDY_TITLES = {
    "data_efficiency": "1. Data efficiency",
    "queries": "2. Query count",
    "trainable": "3. What trains in stage 2",
    "spatial": "4. Spatial fidelity",
    "composition": "5. Composition",
    "teacher": "6. The teacher: SD-style against flow matching",
}
TEACHER_LABELS = {"sd": "SD-style (UNet, x0)", "flow": "SD 3-style (MMDiT, flow)"}


def _pct(r) -> str:
    if isinstance(r, dict):
        return f"{100 * r['rate']:.1f} ({100 * r['low']:.1f}-{100 * r['high']:.1f})"
    return "" if r is None else f"{100 * r:.1f}"


def _num(v, fmt="{:.3f}") -> str:
    return "" if v is None else fmt.format(v)


def study_tables(results: dict[str, dict]) -> dict[str, tuple[list[str], list[list[str]]]]:
    """Each study's numbers as (header, rows) of strings (rates in % with their error bars)."""
    tables = {}
    rows = results["data_efficiency"]["rows"]
    tables["data_efficiency"] = (
        ["pairs", "% of train", "seed", "batch", "VLV exact (%)", "without stage 1 exact (%)"],
        [
            [str(r["pairs"]), str(r["percent"]), str(r["seed"]), str(r["batch_size"])]
            + [_pct(r["vlv"]), _pct(r["without_stage1"])]
            for r in rows
        ],
    )
    tables["queries"] = (
        ["N", "exact scenes (%)", "attributes (%)", "s/step", "trainable params"],
        [
            [str(r["num_queries"]), _pct(r["exact_scene"]), _pct(r["attributes"])]
            + [_num(r["s_per_step"]), _num(r["trainable_parameters"], "{:,}")]
            for r in results["queries"]["rows"]
        ],
    )
    tables["trainable"] = (
        ["trainable", "exact scene (%)", "shape R (%)", "position P (%)", "params", "s/step"],
        [
            [r["trainable"], _pct(r["exact_scene"]), _pct(r["shape_recall"])]
            + [_pct(r["position_precision"]), _num(r["trainable_parameters"], "{:,}")]
            + [_num(r["s_per_step"])]
            for r in results["trainable"]["rows"]
        ],
    )
    tables["spatial"] = (
        ["reconstruction", "own cell (%)", "only elsewhere (%)", "distance", "not found (%)"],
        [
            [r["what"], _pct(r["exact_cell"]), _pct(r["elsewhere"])]
            + [_num(r["distance_elsewhere"], "{:.2f}"), _pct(r["not_found"])]
            for r in results["spatial"]["rows"]
        ],
    )
    tables["teacher"] = (
        ["teacher", "reconstructions exact (%)", "attributes (%)", "captions exact (%)", "s/step"],
        [
            [TEACHER_LABELS[r["teacher"]], _pct(r["reconstruction"])]
            + [_pct(r["reconstruction_attributes"]), _pct(r["captions"])]
            + [_num(r["stage1_s_per_step"])]
            for r in results["teacher"]["rows"]
        ],
    )
    tables["composition"] = (
        ["render", "A and B (%)", "A's objects (%)", "B's objects (%)", "neither (%)"],
        [
            [COMPOSITION_LABELS[k], _pct(v["both"]), _pct(v["from_a"])]
            + [_pct(v["from_b"]), _pct(v["from_neither"])]
            for k, v in results["composition"]["variants"].items()
        ],
    )
    return tables


def write_study_report(
    data_efficiency: dict,
    queries: dict,
    trainable: dict,
    spatial: dict,
    composition_result: dict,
    teacher: dict,
    data_efficiency_figure,
    queries_figure,
    trainable_figure,
    spatial_figure,
    composition_figure,
    composition_grid,
    teacher_figure,
    params: StudyParams,
) -> str:
    """One self-contained HTML page: per study its figure, its table and the paper's claim."""
    from vlv_pipeline.metrics.report import STYLE, figure_png

    results = {
        "data_efficiency": data_efficiency,
        "queries": queries,
        "trainable": trainable,
        "spatial": spatial,
        "composition": composition_result,
        "teacher": teacher,
    }
    figures = dict(
        zip(
            results,
            (
                data_efficiency_figure,
                queries_figure,
                trainable_figure,
                spatial_figure,
                composition_figure,
                teacher_figure,
            ),
            strict=True,
        )
    )
    tables = study_tables(results)
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>VLV study report</title>",
        f"<style>{STYLE}</style></head><body>",
        "<h1>VLV auto-encoder: the paper's comparisons in the shapes world</h1>",
        f"<p>Size: {params.size}. Rates in %, with their {100 * params.confidence:.0f}% "
        f"binomial intervals (Wilson score) in brackets and as error bars. Written {datetime.now(UTC).isoformat(timespec='seconds')}."
        "</p>",
    ]
    if params.size != "full":
        parts.append("<p><b>A token-size run (study.size: small): these are not results.</b></p>")
    for key, title in STUDY_TITLES.items():
        header, rows = tables[key]
        head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
        body = "".join(
            "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows
        )
        parts += [
            f"<h2>{html.escape(title)}</h2>",
            f"<p><i>The paper:</i> {html.escape(results[key]['paper'])}</p>",
            f"<img src='{figure_png(figures[key])}' alt='{html.escape(title)}'>",
            f"<table><tr>{head}</tr>{body}</table>",
        ]
    parts += [
        "<h3>Study 5's renders: A, B, then each embedding</h3>",
        f"<img src='{figure_png(composition_grid)}' alt='composition renders'>",
        "</body></html>",
    ]
    return "\n".join(parts)


def plot_study_preview(*figures):
    """The studies' figures and study 5's renders on one PNG (for the README and kedro-viz)."""
    import io

    from PIL import Image

    plt = _plt()
    pictures = []
    for figure in figures:
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=80)
        pictures.append(Image.open(io.BytesIO(buffer.getvalue())))
    rows = math.ceil(len(pictures) / 3)
    fig, axes = plt.subplots(rows, 3, figsize=(15, 3.5 * rows))
    for ax in axes.flat:
        ax.axis("off")
    for ax, picture in zip(axes.flat, pictures, strict=False):
        ax.imshow(picture)
    fig.suptitle("VLV study: the paper's comparisons in the shapes world", fontsize=12)
    fig.tight_layout()
    return fig
