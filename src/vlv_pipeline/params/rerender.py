"""Parameters of Table 1, the captions re-rendered over a guidance sweep (``params:rerender``).

The model that re-renders is ``evaluate.render_t2i`` (conf/paper: SD 3.5 Medium); this block
says how it samples. One column of Table 1 per ``guidance`` value, every row on the same
images, with the same per-image noise (``evaluate``'s ``image_seed`` of ``seed`` and the
image's index) at every guidance value.
"""

from __future__ import annotations

from pydantic import Field, field_validator

from vlv_pipeline.params import StrictModel


class RerenderParams(StrictModel):
    guidance: tuple[float, ...] = Field((1.0, 2.0, 3.0, 4.0), min_length=1)
    steps: int = Field(40, ge=1, le=1000)
    # a diffusers scheduler class name, or null: the pipeline's own (SD 3.5: flow matching,
    # FlowMatchEulerDiscreteScheduler)
    scheduler: str | None = None
    seed: int = 0
    # the first N images of the evaluation set (null: all of them); the tables say which
    images: int | None = Field(None, ge=2)
    batch_size: int = Field(16, ge=1)
    # the renders' side in pixels; null: the pipeline's default (SD 3.5 Medium: 1024)
    size: int | None = Field(None, ge=8)
    # columns of eval_captions left out of the table (``chance``, ``without_stage1``, an
    # outside captioner's name): each row costs one render per image and guidance value
    exclude: tuple[str, ...] = ()

    @field_validator("guidance")
    @classmethod
    def _distinct(cls, values: tuple[float, ...]) -> tuple[float, ...]:
        if any(v < 0 for v in values):
            raise ValueError("guidance values must be >= 0")
        if len(set(values)) != len(values):
            raise ValueError(f"guidance lists a value twice: {list(values)}")
        return values

    @field_validator("exclude")
    @classmethod
    def _names(cls, values: tuple[str, ...]) -> tuple[str, ...]:
        if any(not v.strip() for v in values):
            raise ValueError("exclude names a column with an empty string")
        if len(set(values)) != len(values):
            raise ValueError(f"exclude lists a column twice: {list(values)}")
        return values
