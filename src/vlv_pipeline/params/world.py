"""Parameters of the shapes world (``params:world``)."""

from __future__ import annotations

from pydantic import Field, field_validator, model_validator

from vlv_pipeline.params import StrictModel

RGB = tuple[int, int, int]
# The shapes the world's renderer can draw (world/render.py keeps one drawer for each; a test
# holds the two together).
RENDERABLE_SHAPES = ("circle", "square", "triangle", "diamond")


class SplitCounts(StrictModel):
    """How many images each split gets."""

    train: int = Field(4000, ge=0)
    val: int = Field(256, ge=0)
    test: int = Field(256, ge=0)


class WorldParams(StrictModel):
    """The procedural world: vocabulary, geometry and counts.

    ``sizes`` maps a size word to the object's radius as a fraction of a grid cell.
    """

    seed: int = 0
    image_size: int = Field(32, ge=16, le=1024)
    max_objects: int = Field(2, ge=1, le=9)
    shapes: list[str] = ["circle", "square", "triangle"]
    colours: dict[str, RGB] = {
        "red": (220, 40, 40),
        "green": (40, 200, 60),
        "blue": (60, 100, 240),
        "yellow": (235, 215, 40),
    }
    sizes: dict[str, float] = {"small": 0.30, "large": 0.44}
    background: RGB = (16, 16, 24)
    jitter: float = Field(0.05, ge=0.0, le=0.2)
    supersample: int = Field(4, ge=1, le=8)
    counts: SplitCounts = SplitCounts()

    @field_validator("shapes")
    @classmethod
    def _known_shapes(cls, shapes: list[str]) -> list[str]:
        unknown = [s for s in shapes if s not in RENDERABLE_SHAPES]
        if unknown:
            raise ValueError(
                f"unknown shapes {unknown}; renderable shapes: {sorted(RENDERABLE_SHAPES)}"
            )
        if len(set(shapes)) != len(shapes) or not shapes:
            raise ValueError("shapes must be a non-empty list without repeats")
        return shapes

    @field_validator("colours")
    @classmethod
    def _valid_colours(cls, colours: dict[str, RGB]) -> dict[str, RGB]:
        if not colours:
            raise ValueError("colours must name at least one colour")
        for name, rgb in colours.items():
            if any(not 0 <= c <= 255 for c in rgb):
                raise ValueError(f"colour {name!r}: RGB values must be within 0..255, got {rgb}")
        return colours

    @field_validator("sizes")
    @classmethod
    def _valid_sizes(cls, sizes: dict[str, float]) -> dict[str, float]:
        if not sizes:
            raise ValueError("sizes must name at least one size")
        for name, radius in sizes.items():
            if not 0.1 <= radius <= 0.5:
                raise ValueError(
                    f"size {name!r}: radius {radius} is outside 0.1..0.5 of a grid cell "
                    "(below ~0.25 shapes stop being legible at 32 px)"
                )
        return sizes

    @model_validator(mode="after")
    def _words_are_distinct(self) -> WorldParams:
        words = [*self.shapes, *self.colours, *self.sizes]
        if len(set(words)) != len(words):
            raise ValueError("shape, colour and size words must all be different")
        for word in words:
            if not word.isalpha() or not word.islower():
                raise ValueError(f"vocabulary word {word!r} must be lower-case letters only")
        largest = max(self.sizes.values())
        if largest + self.jitter > 0.5:
            raise ValueError(
                f"jitter {self.jitter} + largest radius {largest} exceeds half a cell: "
                "objects would leave their grid cell"
            )
        return self
