"""The `reconstruct` pipeline's pictures, made from the saved renders: a side-by-side sheet per
reconstructed image (original | from embeddings | from caption, the caption under them) and a
contact-sheet grid of the first images."""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw, ImageFont

from vlv_pipeline.params.reconstruct import ReconstructParams
from vlv_pipeline.pipelines.reconstruct.nodes import PANELS, UserCaptions, render_name


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # a Pillow without FreeType: its one bitmap font
        return ImageFont.load_default()


def _wrapped(draw: ImageDraw.ImageDraw, text: str, font, width: int) -> list[str]:
    """``text`` in lines no wider than ``width`` pixels (a word longer than that alone)."""
    lines: list[str] = []
    for paragraph in text.splitlines() or [""]:
        line = ""
        for word in paragraph.split():
            trial = f"{line} {word}".strip()
            if line and draw.textlength(trial, font=font) > width:
                lines.append(line)
                line = word
            else:
                line = trial
        lines.append(line)
    return lines


def sheet(
    panels: list[tuple[str, Image.Image]], caption: str, title: str = "", side: int = 256
) -> Image.Image:
    """One image's side-by-side sheet: the panels (label above each, shown at least
    ``side`` pixels wide: small renders are upscaled, pixel for pixel) and the caption text
    under them."""
    margin, font, small = 8, _font(14), _font(12)
    size = max(side, max(p.width for _, p in panels))
    width = margin + len(panels) * (size + margin)
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    lines = _wrapped(measure, caption, font, width - 2 * margin)
    line_height = 18
    top = margin + (line_height if title else 0) + line_height
    height = top + size + margin + line_height * len(lines) + margin
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((margin, margin), title, fill="black", font=small)
    for k, (label, panel) in enumerate(panels):
        x = margin + k * (size + margin)
        resample = Image.Resampling.NEAREST if panel.width < size else Image.Resampling.LANCZOS
        shown = panel.resize((size, round(panel.height * size / panel.width)), resample)
        draw.text((x, top - line_height), label, fill="black", font=font)
        canvas.paste(shown, (x, top))
    for k, line in enumerate(lines):
        draw.text((margin, top + size + margin + k * line_height), line, fill="black", font=font)
    return canvas


class Sheets:
    """The sheets of the reconstructed images, made from the saved renders when iterated:
    ``(<ref>.png, sheet)`` pairs for the ``reconstruct_sheets`` folder."""

    def __init__(self, folder, table: pd.DataFrame, params: ReconstructParams, why_not=None):
        self.folder, self.table, self.params, self.why_not = folder, table, params, why_not

    def __iter__(self) -> Iterator[tuple[str, Image.Image]]:
        for row in self.table[self.table["index"].notna()].itertuples():
            panels = [
                (label, self.folder.open(getattr(row, name)))
                for name, label in PANELS.items()
                if isinstance(getattr(row, name), str)
            ]
            if isinstance(row.caption, str):
                text = f"caption: {row.caption}"
            else:
                text = f"no caption ({self.why_not or 'not captioned'})"
            title = f"{row.file}  (seed {row.seed})"
            yield (
                render_name("", row.file, row.image_id),
                sheet(panels, text, title, self.params.sheet_side),
            )


def reconstruction_sheets(
    folder, table: pd.DataFrame, captions: UserCaptions, params: ReconstructParams
) -> Sheets:
    """A side-by-side sheet per reconstructed image (``Sheets``), written one at a time."""
    return Sheets(folder, table, params, captions.why_not)


def _short(text: str, limit: int = 72) -> str:
    """A caption cut to ``limit`` characters for the grid (the sheets show it whole)."""
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "\u2026"


def plot_reconstruct_grid(folder, table: pd.DataFrame, params: ReconstructParams):
    """A contact sheet of the first ``reconstruct.grid_images`` images: original | from
    embeddings | from caption, each image's caption above it."""
    from vlv_pipeline.metrics.plots import image_grid

    rows = table[table["index"].notna()].head(params.grid_images)
    columns = {}
    for name, label in PANELS.items():
        if len(rows) and rows[name].notna().all():
            columns[label] = np.stack([np.asarray(folder.open(n)) for n in rows[name]])
    if not columns:  # nothing was reconstructed (cannot happen: screening keeps one)
        columns = {"original": np.zeros((1, 8, 8, 3), dtype=np.uint8)}
    texts = [
        _short(c) if isinstance(c, str) else f
        for c, f in zip(rows["caption"], rows["file"], strict=True)
    ]
    per_row = max(1, min(3, math.ceil(len(rows) / 2)))
    return image_grid(
        columns,
        captions=texts or None,
        title="reconstruct: original | from embeddings | from caption",
        items_per_row=per_row,
    )
