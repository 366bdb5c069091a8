"""The study's figures: one per study from its rows (rates in % with their intervals as error
bars), study 5's renders as a grid, and the preview of them all (a node)."""

from __future__ import annotations

import math

from vlv_pipeline.metrics.plots import image_grid
from vlv_pipeline.world.data import tensor_to_uint8

TEACHER_LABELS = {"sd": "SD-style (UNet, x0)", "flow": "SD 3-style (MMDiT, flow)"}
COMPOSITION_LABELS = {
    "a_half_b_half": "[A half ; B half]",
    "a_half_padded": "[A half ; padding]",
    "a_full": "A, all embeddings",
}


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _axes():
    """A study's figure and its one panel."""
    return _plt().subplots(figsize=(6.4, 4.2))


def _percent(rates: list[dict]) -> list[float]:
    return [100 * r["rate"] for r in rates]


def _yerr(rates: list[dict]) -> list[list[float]]:
    """Matplotlib's asymmetric error bars, in percent."""
    return [
        [100 * (r["rate"] - r["low"]) for r in rates],
        [100 * (r["high"] - r["rate"]) for r in rates],
    ]


def _rates_errorbar(ax, x, rates: list[dict], **style) -> None:
    """``rates`` in % at ``x``, their intervals as error bars."""
    ax.errorbar(x, _percent(rates), yerr=_yerr(rates), capsize=3, **style)


def _bar_values(ax, xs, values) -> None:
    """Each bar's value written above it."""
    for x, v in zip(xs, values, strict=True):
        ax.text(x, v + 3, f"{v:.1f}", ha="center", fontsize=8)


def _finish(fig, ax, title: str, ylabel: str, ylim, grid: str | None = "both", **legend):
    """The y axis, the grid (``None``: none), the legend (its keywords; none without) and the
    title of a study's figure."""
    ax.set_ylabel(ylabel)
    ax.set_ylim(*ylim)
    if grid:
        ax.grid(alpha=0.3, axis=grid)
    if legend:
        ax.legend(**legend)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig


def data_efficiency_figure(rows: list[dict]):
    """Study 1: exact-scene captions against the pairs (log scale), one line per captioner
    and seed."""
    fig, ax = _axes()
    for seed in sorted({r["seed"] for r in rows}):
        mine = [r for r in rows if r["seed"] == seed]
        for name, style, label in (
            ("vlv", "-o", "VLV (stage 1, then stage 2)"),
            ("without_stage1", "--s", "without stage 1"),
        ):
            _rates_errorbar(
                ax,
                [r["pairs"] for r in mine],
                [r[name] for r in mine],
                fmt=style,
                color="C0" if name == "vlv" else "C3",
                alpha=1.0 if seed == 0 else 0.55,
                label=f"{label}, seed {seed}",
            )
    ax.set_xscale("log")
    ax.set_xlabel("caption pairs (log scale)")
    title = "1. data efficiency: captions against paired data"
    return _finish(fig, ax, title, "exact-scene captions (%)", (-2, 102), fontsize=7)


def query_count_figure(rows: list[dict]):
    """Study 2: reconstructions (exact scenes, attributes) against N, seconds per step noted."""
    fig, ax = _axes()
    x = [r["num_queries"] for r in rows]
    _rates_errorbar(ax, x, [r["exact_scene"] for r in rows], fmt="-o", label="exact scenes")
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
    title, ylabel = "2. query count, at equal steps", "reconstructions from embeddings (%)"
    return _finish(fig, ax, title, ylabel, (-2, 102), fontsize=8)


def what_trains_figure(rows: list[dict]):
    """Study 3: exact-scene captions per trainable set, as bars."""
    fig, ax = _axes()
    labels = [r["trainable"].replace("projector", "psi").replace("+", " + ") for r in rows]
    rates = [r["exact_scene"] for r in rows]
    ax.bar(
        range(len(rows)),
        _percent(rates),
        yerr=_yerr(rates),
        capsize=4,
        color=["C7", "C0", "C2", "C1"][: len(rows)],
    )
    _bar_values(ax, range(len(rows)), _percent(rates))
    ax.set_xticks(range(len(rows)), labels, fontsize=8)
    title = "3. what trains in stage 2"
    return _finish(fig, ax, title, "exact-scene captions (%)", (0, 110), grid="y")


def teacher_figure(rows: list[dict]):
    """Study 6: per teacher, reconstructions and captions side by side."""
    fig, ax = _axes()
    width = 0.38
    for j, (key, label) in enumerate(
        (("reconstruction", "reconstructions"), ("captions", "captions"))
    ):
        rates = [r[key] for r in rows]
        xs = [i + (j - 0.5) * width for i in range(len(rows))]
        ax.bar(xs, _percent(rates), width, yerr=_yerr(rates), capsize=4, label=label)
        _bar_values(ax, xs, _percent(rates))
    ax.set_xticks(range(len(rows)), [TEACHER_LABELS[r["teacher"]] for r in rows], fontsize=8)
    title = "6. the teacher stage 1 distils"
    return _finish(
        fig, ax, title, "exact scenes (%)", (0, 110), grid="y", fontsize=8, loc="lower right"
    )


SPATIAL_NAMES = {
    "from_embeddings": "embeddings",
    "from_caption": "VLV caption",
    "without_stage1": "w/o stage 1\ncaption",
    "ground_truth_caption": "reference\n(upper bound)",
    "chance": "other image\n(chance)",
}


def spatial_figure(rows: list[dict]):
    """Study 4: per reconstruction, its true objects in their own cell, only elsewhere (with
    the mean distance) or not found, stacked."""
    fig, ax = _axes()
    bottom = [0.0] * len(rows)
    for key, colour, label in (
        ("exact_cell", "C2", "in its own cell"),
        ("elsewhere", "C1", "only elsewhere"),
        ("not_found", "C7", "not found"),
    ):
        values = _percent([r[key] for r in rows])
        ax.bar(range(len(rows)), values, bottom=bottom, color=colour, label=label)
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    _rates_errorbar(
        ax, range(len(rows)), [r["exact_cell"] for r in rows], fmt="none", ecolor="black"
    )
    for i, r in enumerate(rows):
        if r["distance_elsewhere"]:
            ax.text(i, 101, f"d={r['distance_elsewhere']:.2f}", ha="center", fontsize=7)
    ax.set_xticks(range(len(rows)), [SPATIAL_NAMES.get(r["reconstruction"], "?") for r in rows])
    ax.tick_params(axis="x", labelsize=7)
    title = "4. spatial fidelity: where each true object is re-rendered"
    return _finish(
        fig, ax, title, "true objects (%)", (0, 108), grid=None, fontsize=7, loc="lower left"
    )


def composition_figure(results: dict):
    """Study 5: per variant, renders with both images' objects (with its interval), with A's,
    with B's, and objects from neither."""
    fig, ax = _axes()
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
    title = "5. composition: halves of two images' embeddings"
    return _finish(fig, ax, title, "%", (0, 105), grid="y", fontsize=7)


def composition_grid(images, a, b, renders, n: int = 6):
    """Study 5's first ``n`` pairs: A, B, then each variant's render."""
    n = min(n, len(a))
    columns = {"A": tensor_to_uint8(images[a[:n]]), "B": tensor_to_uint8(images[b[:n]])}
    for name, label in COMPOSITION_LABELS.items():
        columns[label] = tensor_to_uint8(renders[name][:n])
    return image_grid(columns, title="study 5: composition renders", items_per_row=2)


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
