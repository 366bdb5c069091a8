"""Parameters of the `reconstruct` pipeline (``params:reconstruct``): your own images rendered
back from their stage-1 caption embeddings, and from their captions.

    kedro run --pipeline reconstruct --params reconstruct.source=PATH

The block is the ``caption`` block's (``CaptionParams``: the source, its kind, the screening
limits, the captioner and how it generates) plus how the renders are made and judged.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from vlv_pipeline.params.evaluate import CaptionParams
from vlv_pipeline.params.needs import ModelNeed
from vlv_pipeline.params.teacher import SamplingParams


class ReconstructParams(CaptionParams):
    """Where the images come from and how they are screened: as ``caption`` (``source``,
    ``kind``, ``min_side``, ``max_aspect_ratio``, and ``params:ingest``'s safety limits).

    ``encoder``: ``stage1`` (the VLV encoder stage 1 trained, ``data/06_models/vlv_encoder``)
    or ``captioner`` (the encoder inside the captioner ``model`` names, e.g. the published
    one's, which stage 2 trained further). ``model``: the captioner whose captions are
    re-rendered (``trained``: stage 2's ``vlv_captioner``; ``published``: ``import_published``;
    ``none``: no re-render from captions); a chosen captioner not saved yet is left out with
    a warning, and the sheets show the two other panels.

    ``sampling``: the sampler, steps, guidance and seed of every render; image ``i`` (its
    position among the kept images, in the source's order) draws its noise from its own
    generator seeded with ``evaluate``'s ``image_seed(sampling.seed, i)``: the same for its
    two renders. ``judge``: as ``evaluate.judge`` (``probe``: the shapes world's attribute
    probe, a Frechet distance of its features; ``fid_clip``: Inception FID; ``pixels``: no
    distribution distance). The distance is computed only from ``fid_min_images`` kept images
    on; below, the metrics say it was not, and why. Per-image MSE and PSNR are always there.
    """

    # the captioner's, and the stage-1 encoder's, input side (null: each model's own)
    resolution: int | None = Field(None, gt=0, description="the encoders' input side")
    model: Literal["trained", "published", "none"] = "trained"
    encoder: Literal["stage1", "captioner"] = "stage1"
    # the embeddings are rendered by params:t2i (in its dtype), the captions by render_t2i
    render_t2i: str | None = Field(None, description="renders the captions (null: t2i.model)")
    sampling: SamplingParams = SamplingParams()
    size: int | None = Field(None, ge=8, description="the renders' side (null: the T2I's)")
    judge: Literal["probe", "fid_clip", "pixels"] = "probe"
    probe: str | None = None  # the shapes world's attribute probe (judge probe)
    fid_min_images: int = Field(
        256, ge=2, description="the fewest kept images a Frechet distance (FID) is computed on"
    )
    grid_images: int = Field(8, ge=1, description="images in the contact-sheet grid")
    sheet_side: int = Field(
        256, ge=16, description="a sheet's panels are at least this many pixels (upscaled)"
    )

    @model_validator(mode="after")
    def _consistent(self) -> ReconstructParams:
        if self.encoder == "captioner" and self.model == "none":
            raise ValueError("encoder captioner needs a captioner: set model trained or published")
        if self.judge == "probe" and not self.probe:
            raise ValueError("judge probe needs `probe` (the attribute probe's directory)")
        return self

    def needs(self, block: str) -> list:
        """The images (as ``caption``), the T2I models, the probe (judge probe). A fid_clip
        judge is checked by the node, once it has counted the images (FID only from
        ``fid_min_images`` on), before any model is loaded."""
        found = []
        if self.render_t2i is not None:
            found.append(ModelNeed(f"{block}.render_t2i", self.render_t2i))
        if self.judge == "probe" and self.probe is not None:
            found.append(ModelNeed(f"{block}.probe", self.probe))
        return [*super().needs(block), *found]

    def caption_params(self) -> CaptionParams:
        """The ``caption`` pipeline's block for these images and this captioner."""
        fields = set(CaptionParams.model_fields)
        values = self.model_dump(include=fields)
        if values["model"] == "none":
            values["model"] = "trained"  # never read: nothing is captioned
        return CaptionParams(**values)
