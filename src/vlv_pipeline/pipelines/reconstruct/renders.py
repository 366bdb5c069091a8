"""The `reconstruct` pipeline's renders: each kept image rendered back through the frozen T2I
model from its stage-1 caption embeddings and, where it was captioned, from its caption,
made while the ``reconstructions`` folder is written (``Reconstructions``)."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pandas as pd
import torch
from PIL import Image

from vlv_pipeline.datasets.model_directory import LazyModel
from vlv_pipeline.errors import ParameterError
from vlv_pipeline.imaging.checks import resize_and_crop
from vlv_pipeline.imaging.sources import ImageSource, iter_images
from vlv_pipeline.models.device import inference_device
from vlv_pipeline.models.published import official_crop
from vlv_pipeline.models.seeds import image_seed
from vlv_pipeline.models.teachers import call_kwargs_of
from vlv_pipeline.params.reconstruct import ReconstructParams
from vlv_pipeline.params.t2i import T2IParams
from vlv_pipeline.pipelines.reconstruct.nodes import (
    ChosenCaptioner,
    UserCaptions,
    kept_rows,
    render_name,
)
from vlv_pipeline.world.data import pil_to_tensor, tensor_to_uint8

logger = logging.getLogger(__name__)


def encoder_side(encoder, params: ReconstructParams) -> int:
    """The side the encoder reads: ``reconstruct.resolution``, else its own."""
    if params.resolution:
        return params.resolution
    side = getattr(getattr(encoder, "config", None), "image_size", None)
    if side is None:
        raise ParameterError("set reconstruct.resolution: the encoder does not say its input size")
    return int(side)


def render_side(t2i, params: ReconstructParams) -> int:
    """The renders' side: ``reconstruct.size``, else the T2I model's own (its UNet's sample
    size times the VAE's downscaling)."""
    if params.size:
        return params.size
    return t2i.native_resolution


class Reconstructions:
    """The renders of the kept images, made when iterated: ``(name, image)`` pairs for the
    ``reconstructions`` folder (``render_name``), one batch of ``sampling.batch_size`` at a
    time. Image ``i`` (its index among the kept images) draws its noise from a generator
    seeded with ``image_seed(sampling.seed, i)``, the same for its two renders: its render
    does not depend on the batch size, nor on the other images."""

    def __init__(
        self, encoder, images: ImageSource, kept: pd.DataFrame, captions, params, t2i: T2IParams
    ):
        self.encoder, self.images, self.kept = encoder, images, kept
        self.captions: UserCaptions = captions
        self.params: ReconstructParams = params
        self.t2i = t2i  # renders the embeddings (and the captions unless render_t2i)

    def __iter__(self) -> Iterator[tuple[str, Image.Image]]:
        from vlv_pipeline.models.teachers import load_teacher

        params, s = self.params, self.params.sampling
        if self.kept.empty:
            return
        device = inference_device()
        t2i = load_teacher(self.t2i.model, self.t2i.dtype, device)
        side = render_side(t2i, params)
        seen_side = encoder_side(self.encoder, params)
        # the published captioner's encoder reads the official inference's crop
        published = params.encoder == "captioner" and params.model == "published"
        crop = official_crop if published else resize_and_crop
        texts = self.captions.texts()
        captioned = all(isinstance(texts.get(i), str) for i in self.kept["image_id"])
        where = {row.image_id: (row.index, str(row.source)) for row in self.kept.itertuples()}
        # (pipeline, its sampler, its call arguments), made at the first caption
        caption_pipeline: list = []
        batch: list[tuple[int, str, Image.Image, torch.Tensor]] = []

        def flush() -> Iterator[tuple[str, Image.Image]]:
            indices = [index for index, _, _, _ in batch]
            pixels = torch.stack([p for _, _, _, p in batch])
            conditions = t2i.condition_images(self.encoder, pixels, s.batch_size)
            renders = t2i.render(conditions, **self._sampling(s.scheduler, indices, side))
            out = {"from_embeddings": tensor_to_uint8(renders)}
            if captioned:
                from vlv_pipeline.models.teacher import render

                if not caption_pipeline:
                    caption_pipeline.extend(self._caption_pipeline(t2i, device))
                pipeline, scheduler, call_kwargs = caption_pipeline
                words = [texts[image_id] for _, image_id, _, _ in batch]
                images = render(
                    pipeline,
                    captions=words,
                    call_kwargs=call_kwargs,
                    **self._sampling(scheduler, indices, side),
                )
                out["from_caption"] = tensor_to_uint8(images)
            for k, (_, image_id, original, _) in enumerate(batch):
                ref = where[image_id][1]
                yield render_name("original", ref, image_id), original
                for name, arrays in out.items():
                    yield render_name(name, ref, image_id), Image.fromarray(arrays[k])
            batch.clear()

        with torch.no_grad():
            for image_id, image in iter_images(self.images, self.kept, None):
                index = where[image_id][0]
                pixels = pil_to_tensor(crop(image, seen_side))
                batch.append((index, image_id, crop(image, side), pixels))
                if len(batch) == s.batch_size:
                    yield from flush()
            if batch:
                yield from flush()

    def _sampling(self, scheduler, indices: list[int], side: int) -> dict:
        s = self.params.sampling
        return {
            "scheduler": scheduler,
            "steps": s.steps,
            "guidance": s.guidance,
            "batch_size": s.batch_size,
            "generator": [torch.Generator().manual_seed(image_seed(s.seed, i)) for i in indices],
            "size": side,
        }

    def _caption_pipeline(self, t2i, device):
        """The pipeline that renders captions, the sampler it uses and its model family's call
        arguments (``call_kwargs_of``, read once a run): the stage-1 T2I model's with
        ``sampling.scheduler``, or ``render_t2i`` with its own sampler."""
        params = self.params
        call_kwargs = call_kwargs_of(params.render_t2i or self.t2i.model)
        if not params.render_t2i or params.render_t2i == self.t2i.model:
            return t2i.pipeline(), params.sampling.scheduler, call_kwargs
        from diffusers import DiffusionPipeline

        dtype = getattr(torch, self.t2i.dtype)
        pipeline = DiffusionPipeline.from_pretrained(params.render_t2i, dtype=dtype)
        return pipeline.to(device), None, call_kwargs


def render_reconstructions(
    encoder,
    captioner: ChosenCaptioner,
    images: ImageSource,
    screened: pd.DataFrame,
    captions: UserCaptions,
    params: ReconstructParams,
    t2i: T2IParams,
) -> Reconstructions:
    """The renders of every kept image (``Reconstructions``), made while the
    ``reconstructions`` folder is written. ``encoder``: the stage-1 VLV encoder (a lazy
    model, loaded here), or with ``reconstruct.encoder: captioner`` the chosen captioner's."""
    kept = kept_rows(screened)
    if params.encoder == "captioner":
        model = captioner.model.encoder
    else:
        model = encoder() if isinstance(encoder, LazyModel) else encoder
    logger.info(
        "reconstruct: rendering %d image(s) from their embeddings%s (%d steps, guidance %g, "
        "seed %d)",
        len(kept),
        "" if captions.why_not else " and from their captions",
        params.sampling.steps,
        params.sampling.guidance,
        params.sampling.seed,
    )
    return Reconstructions(model, images, kept, captions, params, t2i)
