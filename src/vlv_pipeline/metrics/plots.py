"""Figures users look at: loss curves and captioned image grids."""

from __future__ import annotations

import textwrap

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def loss_curves(histories: dict[str, list[dict]], title: str = "training loss"):
    """One panel per run: loss against optimiser step (log scale)."""
    runs = {name: h for name, h in histories.items() if h}
    fig, axes = plt.subplots(
        1, max(1, len(runs)), figsize=(4.5 * max(1, len(runs)), 3.2), squeeze=False
    )
    for ax, (name, history) in zip(axes[0], runs.items(), strict=False):
        steps = [e["step"] for e in history]
        ax.plot(steps, [e["loss"] for e in history], lw=1.2)
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_title(name)
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def image_grid(
    columns: dict[str, np.ndarray],
    captions: list[str] | None = None,
    title: str = "",
    items_per_row: int = 3,
):
    """Side-by-side comparisons: each item shows one panel per entry of ``columns``.

    ``columns`` maps a name (e.g. "original", "from embeddings") to (B, H, W, 3) uint8
    images; item i's panels sit next to each other, labelled with the names, and its
    caption (if given) is written above them. Items fill rows of ``items_per_row``.
    """
    names = list(columns)
    n = len(next(iter(columns.values())))
    per_row = max(1, min(items_per_row, n))
    rows = (n + per_row - 1) // per_row
    fig, axes = plt.subplots(
        rows, per_row * len(names), figsize=(1.9 * per_row * len(names), 2.3 * rows), squeeze=False
    )
    for ax in axes.flat:
        ax.axis("off")
    for i in range(n):
        r, slot = divmod(i, per_row)
        for c, name in enumerate(names):
            ax = axes[r][slot * len(names) + c]
            ax.axis("on")
            ax.imshow(columns[name][i], interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_xlabel(name, fontsize=7)
            if c == 0 and captions is not None:
                ax.set_title(textwrap.fill(captions[i], 36), fontsize=6, loc="left")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def captioned_grid(images: np.ndarray, captions: list[str], ncols: int = 6, title: str = ""):
    """A grid of images with each one's caption above it."""
    n = len(images)
    nrows = (n + ncols - 1) // ncols
    fig, axes = plt.subplots(nrows, ncols, figsize=(2.3 * ncols, 2.5 * nrows), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < n:
            ax.imshow(images[i], interpolation="nearest")
            ax.set_title(textwrap.fill(captions[i], 30), fontsize=6)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig
