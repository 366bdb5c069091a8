"""The `evaluate` pipeline's report: the grid of originals and reconstructions, the HTML report
(the metrics with the baselines beside the model, the paper's Tables 1-3, loss curves,
parameters) and a PNG preview of it."""

from __future__ import annotations

import pandas as pd
import torch

from vlv_pipeline.metrics.plots import image_grid
from vlv_pipeline.params.evaluate import EvaluateParams
from vlv_pipeline.world.data import tensor_to_uint8


def plot_eval_grid(grid: dict[str, torch.Tensor], captions: pd.DataFrame, params: EvaluateParams):
    """original | reconstruction from embeddings | reconstruction from the caption.

    Returned twice: once for the versioned PNG, once in memory for the report (a saved
    matplotlib figure cannot be loaded back).
    """
    labels = {"original": "original", "from_embeddings": "from embeddings"}
    labels["from_caption"] = "from caption"
    items = {labels[k]: tensor_to_uint8(v) for k, v in grid.items() if k in labels}
    n = len(grid["original"])
    shown = captions["vlv"] if "vlv" in captions else captions["reference"]
    texts = [f"{c}" for c in shown.head(n)]
    figure = image_grid(items, captions=texts, title="evaluation: original | reconstructions")
    return figure, figure


FRECHET_NOTE = (
    "Frechet (probe): the Frechet distance (the FID formula) between the attribute probe's "
    "penultimate features (256-d) of the originals and of the reconstructions; lower is "
    "closer. It is not FID: the features come from the shapes world's probe, not Inception."
)


def write_report(
    metrics: dict,
    grid,
    stage1_log: dict,
    stage2_log: dict,
    stage2_baseline_log: dict,
    parameters: dict,
    *tables: dict,
) -> str:
    """The HTML report: tables with the baselines beside the model, the paper's Tables 1-3
    (``tables``: ``PaperTable.to_dict()`` each, in order), grid, loss curves, params."""
    import matplotlib.pyplot as plt

    from vlv_pipeline.metrics.plots import loss_curves
    from vlv_pipeline.metrics.report import build_report, figure_png

    losses = {}
    for title, histories in (
        ("stage 1 (VLV encoder against the frozen T2I decoder)", {"stage 1": stage1_log}),
        (
            "stage 2 (caption decoder)",
            {"from stage 1": stage2_log, "without stage 1": stage2_baseline_log},
        ),
    ):
        curves = {k: v.get("history", []) for k, v in histories.items() if v}
        if any(curves.values()):
            figure = loss_curves(curves, title=title)
            losses[title] = figure_png(figure)
            plt.close(figure)
    notes = [FRECHET_NOTE] if metrics.get("judge") == "probe" else []
    notes.append(
        "exact scene: a caption (or the probe's reading of a render) names exactly the "
        "original's objects with their position, shape, colour and size."
    )
    return build_report(metrics, figure_png(grid), losses, parameters, notes, list(tables))


def plot_report_preview(metrics: dict, grid):
    """The report's tables and grid as one PNG (a picture of the report)."""
    from vlv_pipeline.metrics.report import report_figure

    return report_figure(metrics, grid)
