"""Parameters of the `evaluate` and `caption` pipelines."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from vlv_pipeline.params import StrictModel


class RenderParams(StrictModel):
    scheduler: str | None = "DDIMScheduler"  # null: the pipeline's own (e.g. SD 3.5's)
    steps: int = Field(25, ge=1, le=1000)
    guidance: float = Field(1.0, ge=0)
    seed: int = 0
    batch_size: int = Field(128, ge=1)


class EvaluateParams(StrictModel):
    """Reconstruction from embeddings uses ``stage1_t2i`` (the embeddings live in its text
    space); reconstruction from captions uses ``render_t2i`` (paper: SD 3.5 Medium)."""

    stage1_t2i: str
    render_t2i: str
    t2i_dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    split: str = "test"
    images: int = Field(256, ge=2)
    resolution: int | None = Field(None, gt=0, description="encoder input side, as in stage 1")
    sampling: RenderParams = RenderParams()
    # probe: the shapes world's attribute probe; fid_clip: the paper's FID and CLIP score
    # (weights needed); pixels: pixel error against the originals (offline, any images)
    judge: Literal["probe", "fid_clip", "pixels"] = "probe"
    probe: str | None = None  # the shapes world's attribute probe
    clip_model: str = "openai/clip-vit-large-patch14"
    grid_images: int = Field(8, ge=1)
    chance_seed: int = 0


class CaptionParams(StrictModel):
    """`kedro run --pipeline caption --params caption.source=PATH`."""

    source: str | None = Field(None, description="a folder of images (or a parquet/webdataset)")
    kind: Literal["folder", "parquet", "webdataset"] = "folder"
    resolution: int | None = Field(None, gt=0, description="the captioner's input side")
    batch_size: int = Field(64, ge=1)
    max_new_tokens: int | None = Field(None, ge=1)
    num_beams: int | None = Field(None, ge=1)
    # trained: this project's vlv_captioner (stage 2); published: the authors' captioner
    # (`kedro run --pipeline import_published` first)
    model: Literal["trained", "published"] = "trained"
    # auto: bfloat16 on a GPU that supports it (as the official inference), float32 elsewhere
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    # cast the LLM's prefix to bfloat16 before generating, as the official generate() does
    # even in fp32 (the published captions were made so). null: on for model published,
    # else as the captioner records (off for stage 2's)
    bf16_prefix: bool | None = None
    # the official inference's clean-up: cut after the last full stop, drop repeated
    # sentences. Off by default: it hides a model that never learned to stop
    postprocess: bool = False
