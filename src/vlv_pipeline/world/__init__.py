"""The shapes world: scene sampling, rendering, captions and the caption parser."""

from vlv_pipeline.world.render import SHAPE_DRAWERS, render_scene
from vlv_pipeline.world.scene import (
    POSITIONS,
    CaptionParser,
    ParseResult,
    SceneObject,
    Vocabulary,
    caption,
    sample_scene,
)
from vlv_pipeline.world.tokenizer import build_world_tokenizer

__all__ = [
    "POSITIONS",
    "SHAPE_DRAWERS",
    "CaptionParser",
    "ParseResult",
    "SceneObject",
    "Vocabulary",
    "build_world_tokenizer",
    "caption",
    "render_scene",
    "sample_scene",
]
