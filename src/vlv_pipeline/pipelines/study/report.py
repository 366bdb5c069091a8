"""The study report (a node): each study's numbers as a table of strings, and one
self-contained HTML page with, per study, its figure, its table and the paper's claim."""

from __future__ import annotations

import html
from datetime import UTC, datetime

from vlv_pipeline.params.study import StudyParams
from vlv_pipeline.pipelines.study.plots import COMPOSITION_LABELS, TEACHER_LABELS
from vlv_pipeline.pipelines.study.stats import split_inputs

# the studies in the report's order; each node writes study_<key>_result and study_<key>_figure
STUDY_TITLES = {
    "data_efficiency": "1. Data efficiency",
    "queries": "2. Query count",
    "trainable": "3. What trains in stage 2",
    "spatial": "4. Spatial fidelity",
    "composition": "5. Composition",
    "teacher": "6. The teacher: SD-style against flow matching",
}


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


def write_study_report(params: StudyParams, composition_grid, **studies) -> str:
    """One self-contained HTML page: per study its figure, its table and the paper's claim.
    ``studies``: ``result:<key>`` and ``figure:<key>`` for each key of ``STUDY_TITLES``."""
    from vlv_pipeline.metrics.report import STYLE, figure_png

    grouped = split_inputs(studies)
    results, figures = grouped["result"], grouped["figure"]
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
