"""The `evaluate` pipeline's reconstructions: each evaluation image rendered back through a
T2I model from its stage-1 caption embeddings and from each captioner's caption
(``RECONSTRUCTIONS``), batch by batch while ``scoring.score_evaluation`` reads them.

Under ``accelerate launch`` each rank renders its own contiguous block of the split
(``distributed.share``); every image draws its noise from its own generator, so a render does
not depend on how the split is shared.
"""

from __future__ import annotations

from collections.abc import Iterator

import pandas as pd
import torch

from vlv_pipeline.distributed import share
from vlv_pipeline.models.device import inference_device
from vlv_pipeline.models.seeds import image_generators
from vlv_pipeline.models.teacher import render
from vlv_pipeline.models.teachers import Condition, Teacher, call_kwargs_of, load_teacher
from vlv_pipeline.params.evaluate import EvaluateParams
from vlv_pipeline.params.t2i import T2IParams
from vlv_pipeline.pipelines.evaluate.nodes import EvalData

# what each reconstruction is: (row label in the report, what made it)
RECONSTRUCTIONS = {
    "from_embeddings": "stage-1 embeddings -> stage-1 T2I",
    "from_caption": "VLV caption -> T2I",
    "without_stage1": '"without stage 1" caption -> T2I',
    "ground_truth_caption": "reference caption -> T2I (upper bound)",
    "chance": "another image's caption -> T2I (chance)",
}


def render_from_embeddings(t2i: Teacher, conditions: Condition, start: int, sampling):
    """The reconstructions of images ``start``, ``start + 1``, ... of the split from their
    caption embeddings' conditions (``Teacher.condition_images``) under ``sampling``
    (``evaluate.sampling``): each image draws its noise from its own generator
    (``image_generators``), so a sampler or step count is compared on the same noise."""
    generators = image_generators(sampling.seed, range(start, start + len(conditions)))
    return t2i.render(
        conditions,
        scheduler=sampling.scheduler,
        generator=generators,
        steps=sampling.steps,
        guidance=sampling.guidance,
        batch_size=sampling.batch_size,
    )


class EvalRenders:
    """The reconstructions, rendered when iterated, one batch at a time: iterating yields
    ``(name, start, originals, renders)`` for each reconstruction (see ``RECONSTRUCTIONS``)
    and each batch of ``sampling.batch_size`` images, name by name, ``start`` being the
    batch's first index in the split. Under ``accelerate launch`` a rank renders only its
    own contiguous block of the split (``distributed.share``), in batches from its start.

    Every image draws its noise from its own generator, seeded from ``sampling.seed`` and
    its index in the split (``image_seed``), the same for every reconstruction: an image's
    render does not depend on the batch size, on the other images in its batch, nor on how
    the split is shared among ranks (up to floating-point differences of batched kernels)."""

    def __init__(self, vlv_encoder, data: EvalData, captions: pd.DataFrame, params, t2i: T2IParams):
        self.vlv_encoder, self.data, self.captions, self.params, self.t2i = (
            vlv_encoder,
            data,
            captions,
            params,
            t2i,
        )

    def names(self) -> list[str]:
        """The reconstructions, in the order iterating yields them (the same on every rank)."""
        texts = self._texts()
        return ["from_embeddings", *(n for n, column in texts.items() if column is not None)]

    def _texts(self) -> dict[str, pd.Series | None]:
        captions = self.captions
        texts = {
            "from_caption": captions.get("vlv"),
            "without_stage1": captions.get("without_stage1"),
            "ground_truth_caption": captions["reference"],
            "chance": captions.get("chance"),
        }
        return {n: (c if c is not None and not c.isna().any() else None) for n, c in texts.items()}

    @torch.no_grad()
    def __iter__(self) -> Iterator[tuple[str, int, torch.Tensor, torch.Tensor]]:
        from diffusers import DiffusionPipeline

        s, params, data = self.params.sampling, self.params, self.data
        kwargs = dict(steps=s.steps, guidance=s.guidance, batch_size=s.batch_size)
        mine = share(len(data.image_ids))
        starts = range(mine.start, mine.stop, s.batch_size)
        batches = [(start, min(start + s.batch_size, mine.stop)) for start in starts]
        if not batches:
            return
        device = inference_device()
        t2i = load_teacher(self.t2i.model, params.t2i_dtype, device)
        for start, stop in batches:
            originals = data.images(start, stop)
            conditions = t2i.condition_images(self.vlv_encoder, originals, s.batch_size)
            images = render_from_embeddings(t2i, conditions, start, s)
            yield "from_embeddings", start, originals, images
        scheduler = s.scheduler
        kwargs["call_kwargs"] = call_kwargs_of(params.caption_t2i(self.t2i))
        if params.captions_on_t2i(self.t2i):
            pipeline = t2i.pipeline()
        else:  # another model (e.g. SD 3.5 Medium) samples with its own scheduler
            dtype = getattr(torch, params.t2i_dtype)
            pipeline = DiffusionPipeline.from_pretrained(params.render_t2i, dtype=dtype)
            pipeline.to(device)
            scheduler = None
        for name, column in self._texts().items():
            if column is None:
                continue
            for start, stop in batches:
                texts = column.iloc[start:stop].tolist()
                generators = image_generators(s.seed, range(start, stop))
                images = render(
                    pipeline, captions=texts, scheduler=scheduler, generator=generators, **kwargs
                )
                yield name, start, data.images(start, stop), images


class HeldRenders:
    """Reconstructions already in memory (``{name: images}`` of the whole split), iterated
    like ``EvalRenders``, this rank's block only (for tests and notebooks)."""

    def __init__(self, data: EvalData, renders: dict[str, torch.Tensor], batch_size: int):
        self.data, self.renders, self.batch_size = data, renders, batch_size

    def names(self) -> list[str]:
        return list(self.renders)

    def __iter__(self):
        for name, images in self.renders.items():
            mine = share(len(images))
            for start in range(mine.start, mine.stop, self.batch_size):
                stop = min(start + self.batch_size, mine.stop)
                yield name, start, self.data.images(start, stop), images[start:stop]


def reconstruct(
    vlv_encoder, data: EvalData, captions: pd.DataFrame, params: EvaluateParams, t2i: T2IParams
) -> EvalRenders:
    """The reconstructions (see ``RECONSTRUCTIONS``), rendered batch by batch when scored."""
    return EvalRenders(vlv_encoder, data, captions, params, t2i)
