"""Shared by the rating tests: a small evaluation set of the shapes world in memory (the
attributes the rating nodes read: image ids, per-item uint8 pixels, references) and its
captions table, as `load_eval_data` and `caption_eval_images` give them."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from vlv_pipeline.params.world import WorldParams
from vlv_pipeline.world.render import render_scene
from vlv_pipeline.world.scene import Vocabulary, caption, sample_scene

WORLD = WorldParams(image_size=16, supersample=1)


@dataclass
class FakeEvalData:
    image_ids: list[str]
    pixels: list[torch.Tensor]
    references: list[str | None]


def eval_set(n: int = 12, seed: int = 0) -> tuple[FakeEvalData, pd.DataFrame]:
    """``n`` scenes, their images and captions: ``vlv`` exact, ``without_stage1`` with the
    first object's colour changed, ``chance`` the next image's reference."""
    rng = np.random.default_rng(seed)
    vocab = Vocabulary.from_params(WORLD)
    scenes = [sample_scene(rng, vocab, WORLD.max_objects, 0.0) for _ in range(n)]
    references = [caption(s) for s in scenes]
    pixels = [
        torch.from_numpy(
            np.array(
                render_scene(
                    s,
                    image_size=WORLD.image_size,
                    colours=WORLD.colours,
                    sizes=WORLD.sizes,
                    background=WORLD.background,
                    supersample=1,
                )
            )
        ).permute(2, 0, 1)
        for s in scenes
    ]
    ids = [f"{i:04d}" + "ab" * 30 for i in range(n)]

    def recolour(text: str) -> str:
        for colour in ("red", "green", "blue", "yellow"):
            if f" {colour} " in text:
                other = "green" if colour != "green" else "red"
                return text.replace(f" {colour} ", f" {other} ", 1)
        return text

    captions = pd.DataFrame(
        {
            "image_id": ids,
            "reference": references,
            "vlv": references,
            "without_stage1": [recolour(r) for r in references],
            "chance": references[1:] + references[:1],
        }
    )
    return FakeEvalData(ids, pixels, references), captions
