"""The evaluation report: one self-contained HTML page (figures embedded as PNG)."""

from __future__ import annotations

import base64
import html
import io
import json
from datetime import UTC, datetime

CAPTION_COLUMNS = [
    ("exact_scene", "exact scene"),
    ("shape_recall", "shape R"),
    ("colour_recall", "colour R"),
    ("size_recall", "size R"),
    ("position_precision", "position P"),
    ("bleu4", "BLEU-4"),
    ("rouge_l", "ROUGE-L"),
    ("cider", "CIDEr"),
]
RECONSTRUCTION_COLUMNS = [
    ("exact_scene", "exact scene"),
    ("attributes", "attributes"),
    ("frechet_probe", "Frechet (probe)"),
    ("fid", "FID"),
    ("clip_score", "CLIP score"),
    ("psnr", "PSNR (dB)"),
    ("mse", "pixel MSE"),
]
CAPTIONER_LABELS = {
    "vlv": "VLV captioner",
    "without_stage1": "without stage 1 (same LLM + psi, no stage 1)",
    "chance": "chance (another image's reference caption)",
}

STYLE = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 10px}
th{background:#f3f3f3}td.num{text-align:right;font-variant-numeric:tabular-nums}
tr.model td{font-weight:bold}tr.paper td{color:#777}tr.reference td{font-style:italic}
img{max-width:100%}pre{background:#f7f7f7;padding:1em;overflow:auto}
"""


def figure_png(figure) -> str:
    """A matplotlib figure as a base64 PNG data URL."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _cell(value) -> str:
    if isinstance(value, float):
        return f'<td class="num">{value:.3f}</td>'
    return f"<td>{html.escape(str(value))}</td>"


def _table(rows: dict[str, dict], columns, labels: dict[str, str], model_row: str) -> str:
    present = [(k, name) for k, name in columns if any(k in r for r in rows.values())]
    head = "<tr><th></th>" + "".join(f"<th>{html.escape(n)}</th>" for _, n in present) + "</tr>"
    body = []
    for key, row in rows.items():
        cls = ' class="model"' if key == model_row else ""
        cells = "".join(_cell(row.get(k, "")) for k, _ in present)
        body.append(f"<tr{cls}><td>{html.escape(labels.get(key, key))}</td>{cells}</tr>")
    return f"<table>{head}{''.join(body)}</table>"


def build_report(
    metrics: dict,
    grid_png: str,
    loss_pngs: dict[str, str],
    parameters: dict,
    notes: list[str],
    tables: list[dict] | None = None,
) -> str:
    """The page. ``tables``: the paper's Tables 1-3 as ``PaperTable.to_dict()`` (in order),
    shown after the reconstructions in the paper's layout, the paper's numbers marked."""
    from vlv_pipeline.metrics.tables import PaperTable, table_html

    recon_labels = {k: v.get("what", k) for k, v in metrics.get("reconstruction", {}).items()}
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>VLV evaluation report</title>",
        f"<style>{STYLE}</style></head><body>",
        "<h1>VLV auto-encoder: evaluation report</h1>",
        f"<p>{metrics.get('images')} images of the evaluation split; judge: "
        f"{html.escape(str(metrics.get('judge')))}; written "
        f"{datetime.now(UTC).isoformat(timespec='seconds')}.</p>",
        "<h2>Captions</h2>",
        _table(metrics.get("captions", {}), CAPTION_COLUMNS, CAPTIONER_LABELS, "vlv"),
        "<h2>Reconstructions</h2>",
        _table(
            metrics.get("reconstruction", {}), RECONSTRUCTION_COLUMNS, recon_labels, "from_caption"
        ),
        "<ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in notes) + "</ul>",
    ]
    if tables:
        parts.append("<h2>The paper's tables, measured in this run</h2>")
        parts += [table_html(PaperTable.from_dict(t)) for t in tables]
    parts += [
        "<h2>Originals and reconstructions</h2>",
        f"<img src='{grid_png}' alt='original | from embeddings | from caption'>",
        "<h2>Training</h2>",
    ]
    for name, png in loss_pngs.items():
        parts.append(f"<h3>{html.escape(name)}</h3><img src='{png}' alt='{html.escape(name)}'>")
    parts += [
        "<h2>Parameters of this run</h2>",
        f"<pre>{html.escape(json.dumps(parameters, indent=2, sort_keys=True, default=str))}</pre>",
        "</body></html>",
    ]
    return "\n".join(parts)


def _rows(entries: dict, columns, label) -> tuple[list[str], list[list[str]], list[str]]:
    present = [(k, n) for k, n in columns if any(k in e for e in entries.values())]
    cells = [
        [f"{e[k]:.3f}" if isinstance(e.get(k), float) else "" for k, _ in present]
        for e in entries.values()
    ]
    return [n for _, n in present], cells, [label(k, e) for k, e in entries.items()]


def report_figure(metrics: dict, grid_figure):
    """A one-page picture of the report: both tables above the image grid (a PNG for READMEs
    and kedro-viz; the HTML report has everything)."""
    import matplotlib.pyplot as plt
    from PIL import Image

    buffer = io.BytesIO()
    grid_figure.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    grid = Image.open(io.BytesIO(buffer.getvalue()))
    captions = metrics.get("captions", {})
    recon = metrics.get("reconstruction", {})
    ratio = grid.height / grid.width
    fig = plt.figure(figsize=(11, 3.2 + 11 * ratio))
    top = 1 - 3.0 / fig.get_figheight()
    head = 1 - 0.45 / fig.get_figheight()  # room for the title
    for i, (title, entries, columns, label) in enumerate(
        (
            ("captions", captions, CAPTION_COLUMNS, lambda k, e: CAPTIONER_LABELS.get(k, k)),
            ("reconstructions", recon, RECONSTRUCTION_COLUMNS, lambda k, e: e.get("what", k)),
        )
    ):
        ax = fig.add_axes([0.0, top + (head - top) * (0.5 - 0.5 * i), 1, (head - top) * 0.42])
        ax.axis("off")
        if not entries:
            continue
        col_labels, cells, row_labels = _rows(entries, columns, label)
        table = ax.table(
            cellText=cells,
            rowLabels=row_labels,
            colLabels=col_labels,
            loc="center right",
            colWidths=[0.09] * len(col_labels),
        )
        table.auto_set_font_size(False)
        table.set_fontsize(7.5)
        ax.set_title(title, fontsize=10, loc="left")
    ax = fig.add_axes([0.0, 0.0, 1, top - 0.02])
    ax.imshow(grid)
    ax.axis("off")
    fig.suptitle(
        f"VLV evaluation report ({metrics.get('images')} images, judge: {metrics.get('judge')})",
        fontsize=11,
    )
    return fig
