"""The shapes world as a table of labelled scenes, and its images rendered on demand.

Used by the `world` pipeline (which writes them) and the `teacher` pipeline (which draws
its own training scenes).
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd
from PIL import Image

from vlv_pipeline.errors import ParameterError
from vlv_pipeline.params.world import WorldParams
from vlv_pipeline.world.render import render_scene
from vlv_pipeline.world.scene import SceneObject, Vocabulary, caption, sample_scene

logger = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
_MAX_REDRAWS = 1000


def generate_labels(params: WorldParams) -> pd.DataFrame:
    """Sample every scene of every split; deterministic per (seed, split, index).

    Every image is distinct across all splits: at 32 px a small jitter often rounds to the
    same pixels, so a scene whose render repeats an earlier one is redrawn (from the same
    per-index generator). Otherwise deduplication in `ingest` would shrink the splits and
    a test image could repeat a train image.

    Returns one row per image: ``file`` (relative to the images folder), ``split``,
    ``caption``, ``n_objects`` and ``objects`` (a list of structs with cell, position,
    size, colour, shape and the jitter dx, dy in cell units).
    """
    vocab = Vocabulary.from_params(params)
    rows = []
    seen: set[bytes] = set()
    for split_id, split in enumerate(SPLITS):
        for index in range(getattr(params.counts, split)):
            rng = np.random.default_rng([params.seed, split_id, index])
            for _ in range(_MAX_REDRAWS):
                objects = sample_scene(rng, vocab, params.max_objects, params.jitter)
                digest = hashlib.blake2b(
                    _render_objects(objects, params).tobytes(), digest_size=16
                ).digest()
                if digest not in seen:
                    seen.add(digest)
                    break
            else:
                raise ParameterError(
                    f"world: could not find a new distinct image for {split}/{index:06d} after "
                    f"{_MAX_REDRAWS} draws; lower world.counts or widen the vocabulary"
                )
            rows.append(
                {
                    "file": f"{split}/{index:06d}.png",
                    "split": split,
                    "caption": caption(objects),
                    "n_objects": len(objects),
                    "objects": [
                        {
                            "cell": o.cell,
                            "position": o.position,
                            "size": o.size,
                            "colour": o.colour,
                            "shape": o.shape,
                            "dx": o.dx,
                            "dy": o.dy,
                        }
                        for o in objects
                    ],
                }
            )
    labels = pd.DataFrame(rows)
    logger.info(
        "Shapes world: %s images (%s)",
        len(labels),
        ", ".join(f"{s} {getattr(params.counts, s)}" for s in SPLITS),
    )
    return labels


def objects_from_row(objects) -> list[SceneObject]:
    """The scene of a labels row (its ``objects`` cell, as read back from parquet)."""
    return [
        SceneObject(
            cell=int(o["cell"]),
            size=str(o["size"]),
            colour=str(o["colour"]),
            shape=str(o["shape"]),
            dx=float(o["dx"]),
            dy=float(o["dy"]),
        )
        for o in objects
    ]


def _render(objects, params: WorldParams) -> Image.Image:
    return _render_objects(objects_from_row(objects), params)


def _render_objects(objects: list[SceneObject], params: WorldParams) -> Image.Image:
    return render_scene(
        objects,
        image_size=params.image_size,
        colours=params.colours,
        sizes=params.sizes,
        background=params.background,
        supersample=params.supersample,
    )


@dataclass(frozen=True)
class LazyImage:
    """An image rendered when called; ``caption`` travels with it (shards store it)."""

    objects: object
    params: WorldParams
    caption: str

    def __call__(self) -> Image.Image:
        return _render(self.objects, self.params)


def render_images(labels: pd.DataFrame, params: WorldParams) -> dict[str, LazyImage]:
    """One lazily rendered image per labels row, keyed by its relative file path.

    The values are callables, so the dataset writes images one at a time and memory
    stays bounded however many images the world has.
    """
    return {
        row.file: LazyImage(row.objects, params, row.caption)
        for row in labels[["file", "objects", "caption"]].itertuples(index=False)
    }
