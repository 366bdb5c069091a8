"""Rendering scenes to RGB images: drawn at a higher resolution, then downsampled."""

from __future__ import annotations

import math
from collections.abc import Callable

from PIL import Image, ImageDraw

from vlv_pipeline.world.scene import SceneObject

Box = tuple[float, float, float]  # centre x, centre y, radius (pixels)


def _circle(draw: ImageDraw.ImageDraw, x: float, y: float, r: float, fill) -> None:
    draw.ellipse((x - r, y - r, x + r, y + r), fill=fill)


def _square(draw: ImageDraw.ImageDraw, x: float, y: float, r: float, fill) -> None:
    h = r * 0.85  # a square of half-side r looks far heavier than a circle of radius r
    draw.rectangle((x - h, y - h, x + h, y + h), fill=fill)


def _triangle(draw: ImageDraw.ImageDraw, x: float, y: float, r: float, fill) -> None:
    # Upward equilateral triangle inscribed in the circle of radius r, nudged down so
    # its visual centre sits on the cell centre.
    y = y + r * 0.15
    points = [
        (x + r * math.cos(a), y - r * math.sin(a))
        for a in (math.pi / 2, math.pi / 2 + 2 * math.pi / 3, math.pi / 2 + 4 * math.pi / 3)
    ]
    draw.polygon(points, fill=fill)


def _diamond(draw: ImageDraw.ImageDraw, x: float, y: float, r: float, fill) -> None:
    draw.polygon([(x, y - r), (x + r, y), (x, y + r), (x - r, y)], fill=fill)


SHAPE_DRAWERS: dict[str, Callable] = {
    "circle": _circle,
    "square": _square,
    "triangle": _triangle,
    "diamond": _diamond,
}


def render_scene(
    objects: list[SceneObject],
    *,
    image_size: int,
    colours: dict[str, tuple[int, int, int]],
    sizes: dict[str, float],
    background: tuple[int, int, int],
    supersample: int = 4,
) -> Image.Image:
    """Render a scene as an ``image_size`` square RGB image."""
    big = image_size * supersample
    cell = big / 3
    canvas = Image.new("RGB", (big, big), tuple(background))
    draw = ImageDraw.Draw(canvas)
    for obj in objects:
        row, col = divmod(obj.cell, 3)
        x = (col + 0.5 + obj.dx) * cell
        y = (row + 0.5 + obj.dy) * cell
        SHAPE_DRAWERS[obj.shape](draw, x, y, sizes[obj.size] * cell, tuple(colours[obj.colour]))
    if supersample == 1:
        return canvas
    return canvas.resize((image_size, image_size), Image.Resampling.BOX)
