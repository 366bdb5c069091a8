"""Nodes of the `evaluate` pipeline: the test split captioned, re-rendered and scored.

Under ``accelerate launch`` each rank captions, renders and reads its own contiguous block of
the split (``distributed.share``); the captions, the per-image readings (or error sums) and the
grid's images are gathered to every rank in rank order, so every rank returns the same
tables, metrics and grid as a single process would.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from vlv_pipeline.distributed import each_rank, gather_lists, share
from vlv_pipeline.errors import InputError, ParameterError, SetupError, UserError
from vlv_pipeline.metrics.captions import caption_scene_metrics
from vlv_pipeline.metrics.frechet import frechet_distance
from vlv_pipeline.metrics.plots import image_grid
from vlv_pipeline.metrics.scenes import scene_agreement
from vlv_pipeline.metrics.spatial import spatial_fidelity
from vlv_pipeline.metrics.text import caption_text_metrics
from vlv_pipeline.models.device import inference_device
from vlv_pipeline.models.seeds import image_generators, image_seed  # noqa: F401 - here too
from vlv_pipeline.models.teacher import render
from vlv_pipeline.models.teachers import Condition, Teacher, call_kwargs_of, load_teacher
from vlv_pipeline.params.evaluate import (
    KIND_COLUMNS,
    KIND_LABELS,
    EvalCaptionerRow,
    EvaluateParams,
)
from vlv_pipeline.training.data import ImagePixels
from vlv_pipeline.world.data import tensor_to_uint8, to_unit_range

logger = logging.getLogger(__name__)

CAPTIONERS = ("vlv", "without_stage1", "chance")
# what each reconstruction is: (row label in the report, what made it)
RECONSTRUCTIONS = {
    "from_embeddings": "stage-1 embeddings -> stage-1 T2I",
    "from_caption": "VLV caption -> T2I",
    "without_stage1": '"without stage 1" caption -> T2I',
    "ground_truth_caption": "reference caption -> T2I (upper bound)",
    "chance": "another image's caption -> T2I (chance)",
}


@dataclass
class EvalData:
    """The evaluation set's ids and reference captions (in memory) and a per-item reader of
    its images (uint8): no stage of evaluate holds the set's pixels. ``files``: each image's
    path in its source (the manifest's ``source``, or the COCO ``file_name``)."""

    image_ids: list[str]
    pixels: ImagePixels | torch.utils.data.Dataset
    references: list[str | None]
    files: list[str] | None = None

    def images(self, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """Images ``start:stop`` in [-1, 1]."""
        stop = len(self.image_ids) if stop is None else min(stop, len(self.image_ids))
        return torch.stack([to_unit_range(self.pixels[i]) for i in range(start, stop)])


def load_eval_data(raw_images, image_manifest: pd.DataFrame, params: EvaluateParams) -> EvalData:
    """The evaluation set: ``evaluate.source`` ``split`` takes the first ``images`` images (by
    image_id) of the manifest's ``split``; ``coco`` a seeded sample of ``coco.sample`` images
    of the COCO captions file (``benchmarks/coco.py``), every file checked before any is read."""
    if params.source == "coco":
        return _coco_eval_data(params)
    rows = image_manifest[image_manifest["split"] == params.split].sort_values("image_id")
    if len(rows) < 2:
        raise ParameterError(
            f"evaluate.split {params.split!r} has {len(rows)} images in the manifest; need >= 2"
        )
    rows = rows.head(params.images)
    return EvalData(
        rows["image_id"].astype(str).tolist(),
        ImagePixels.of_manifest(raw_images, rows, params.resolution),
        [None if pd.isna(c) else str(c) for c in rows["caption"]],
        rows["source"].astype(str).tolist(),
    )


def _coco_eval_data(params: EvaluateParams) -> EvalData:
    from vlv_pipeline.benchmarks.coco import (
        CocoPixels,
        coco_policy,
        image_paths,
        read_coco_captions,
        sample_ids,
    )

    coco = read_coco_captions(params.coco.annotations)
    ids = sample_ids(coco, params.coco.sample, params.coco.seed)
    files = [coco.files[i] for i in ids]
    policy = coco_policy(params.coco.max_file_bytes, params.coco.follow_links)
    paths = image_paths(params.coco.images, files, policy)
    logger.info(
        "evaluate: %d of the %d captioned COCO images of %s (seed %d)",
        len(ids),
        len(coco.captions),
        coco.path,
        params.coco.seed,
    )
    return EvalData(
        [str(i) for i in ids],
        CocoPixels(paths, params.resolution, policy),
        [coco.reference(i) for i in ids],
        files,
    )


def eval_set_ids(data: EvalData, previous: dict | None, params: EvaluateParams) -> dict:
    """The evaluation set written down (the versioned ``eval_set_ids``): how it was drawn and
    its image ids and files. The same parameters and source give the same set (the split's
    first images; COCO's seeded sample), so a rerun, and every captioner, sees these images;
    ``previous`` (the latest written) is compared, and a set that differs under the same
    settings (the source changed) is reported."""
    from vlv_pipeline.benchmarks.coco import differs_from

    if params.source == "coco":
        how = {
            "source": "coco",
            "annotations": params.coco.annotations,
            "sample": params.coco.sample,
            "seed": params.coco.seed,
        }
    else:
        how = {"source": "split", "split": params.split, "images": params.images}
    record = {**how, "image_ids": list(data.image_ids), "files": list(data.files or [])}
    why = differs_from(record, previous)
    if why:
        logger.warning("evaluate: %s", why)
    return record


def _chance_order(n: int, seed: int) -> list[int]:
    """A derangement: every image gets another image's caption."""
    g = torch.Generator().manual_seed(seed)
    return ((torch.randperm(n - 1, generator=g)[:1] + 1 + torch.arange(n)) % n).tolist()


def caption_eval_images(
    vlv_captioner,
    baseline_captioner,
    data: EvalData,
    params: EvaluateParams,
    published_captioner=None,
    captioner_credentials: dict | None = None,
    eval_credentials: dict | None = None,
) -> pd.DataFrame:
    """The evaluation images captioned by every row of ``evaluate.captioners``: one column
    each (``vlv``, ``without_stage1``, ``chance``, and the outside rows' names) beside
    ``image_id`` and ``reference``.

    Every row is made ready first (``_ready_rows``: the published captioner loaded, API keys,
    caption files read and matched, local models loaded), so a row that cannot be made stops
    the run before anything is captioned or rendered, or, marked ``optional``, is left out
    with a warning. The project's captioners caption one batch of ``sampling.batch_size``
    images at a time; ``chance`` is another image's reference caption; the ``openai`` and
    ``transformers`` rows are journaled (``benchmarks/captioners.py``). Under ``accelerate
    launch`` each rank captions its own block; every rank gets the table."""
    ready = _ready_rows(
        params, data, vlv_captioner, baseline_captioner, published_captioner,
        captioner_credentials or {}, eval_credentials or {},
    )  # fmt: skip
    table = pd.DataFrame({"image_id": data.image_ids, "reference": data.references})
    models = {row.column: made for row, made in ready if row.kind in _OWN_MODELS}
    captions = _caption_with_models(models, data, params.sampling.batch_size)
    for row, made in ready:
        if row.kind == "reference":
            continue
        if row.column in captions:
            table[row.column] = captions[row.column]
        elif row.kind == "chance":
            order = _chance_order(len(table), params.chance_seed)
            table["chance"] = [data.references[i] for i in order]
        elif row.kind == "file":
            table[row.column] = made
        else:  # openai, transformers: journaled
            texts = _journaled_row(row, made, data, params)
            if texts is not None:
                table[row.column] = texts
    return table


# the rows whose captioner is one of the project's VLVCaptioner models
_OWN_MODELS = ("trained", "baseline", "published")


def _caption_with_models(models: dict, data: EvalData, batch: int) -> dict[str, list[str]]:
    """``{column: captions}`` of the project's captioners, batch by batch over this rank's
    block of the set, gathered in rank order."""
    if not models:
        return {}
    device = inference_device()
    models = {column: model.to(device) for column, model in models.items()}
    mine = share(len(data.image_ids))

    def caption_mine() -> list[tuple[str, ...]]:
        out: dict[str, list[str]] = {column: [] for column in models}
        for start in range(mine.start, mine.stop, batch):
            pixels = data.images(start, min(start + batch, mine.stop))
            for column, model in models.items():
                out[column] += model.caption(pixels, batch_size=batch)
        return list(zip(*out.values(), strict=True))

    rows = [row for part in each_rank(caption_mine) for row in part]
    return {column: [r[k] for r in rows] for k, column in enumerate(models)}


def _ready_rows(
    params: EvaluateParams,
    data: EvalData,
    vlv_captioner,
    baseline_captioner,
    published_captioner,
    captioner_credentials: dict,
    eval_credentials: dict,
) -> list[tuple[EvalCaptionerRow, object]]:
    """``(row, what captions it)`` for every row that can be made: its model, its captioner,
    its captions (a file's), or None (reference, chance). A row that cannot be made stops
    the run with one message listing every such row and what to do, unless it is optional:
    then a warning says why it is left out. References missing (a source without captions)
    leave out the reference and chance rows, which need them."""
    problems: list[str] = []
    ready: list[tuple[EvalCaptionerRow, object]] = []
    have_refs = all(r is not None for r in data.references)
    for index, row in enumerate(params.captioners):
        where = f"evaluate.captioners[{index}] ({row.kind} {row.column!r})"
        try:
            made = _make_row(
                row, index, data, vlv_captioner, baseline_captioner, published_captioner,
                captioner_credentials, eval_credentials, have_refs,
            )  # fmt: skip
        except UserError as error:
            if row.optional:
                logger.warning("evaluate: %s is left out (optional): %s", where, error)
                continue
            problems.append(f"  - {where}: {error}")
            continue
        if made is _NO_REFERENCES:
            logger.warning(
                "evaluate: %s is left out: the evaluation set has images without a reference "
                "caption",
                where,
            )
            continue
        ready.append((row, made))
    if problems:
        raise InputError(
            f"{len(problems)} of the evaluation's captioners cannot be made (nothing was "
            "captioned or rendered; mark a row `optional: true` to go on without it):\n"
            + "\n".join(problems)
        )
    return ready


_NO_REFERENCES = object()


def _make_row(
    row: EvalCaptionerRow,
    index: int,
    data: EvalData,
    vlv_captioner,
    baseline_captioner,
    published_captioner,
    captioner_credentials: dict,
    eval_credentials: dict,
    have_refs: bool,
):
    """What captions ``row`` (see ``_ready_rows``); a ``UserError`` says why it cannot."""
    from vlv_pipeline.benchmarks import captioners as outside

    if row.kind in ("reference", "chance"):
        return None if have_refs else _NO_REFERENCES
    if row.kind == "trained":
        return vlv_captioner
    if row.kind == "baseline":
        return baseline_captioner
    if row.kind == "published":
        return _published(published_captioner)
    if row.kind == "file":
        files = data.files or data.image_ids
        return outside.match_captions(outside.read_caption_file(row.path), files, row.path)
    key = None
    if row.kind == "openai":
        key = outside.api_key(row, captioner_credentials, eval_credentials)
        if not key and not outside.loopback(row.openai.base_url):
            raise InputError(
                f"no api key for {row.openai.base_url}: add `eval_captioners: {{{row.column}: "
                "{api_key: ...}}` (or `captioner: {api_key: ...}`) to "
                "conf/local/credentials.yml"
            )
    return outside.make_captioner(row, index, key)


def _published(lazy):
    """The published captioner (``import_published``), loaded now (a ``LazyModel``)."""
    from kedro.io import DatasetError

    from vlv_pipeline.errors import MissingInputError, ModelDirectoryError

    fix = (
        "run `kedro run --pipeline import_published --params import_published.checkpoint=FILE` "
        "with the authors' checkpoint first"
    )
    if lazy is None:
        raise MissingInputError(f"no published captioner was given: {fix}")
    if not callable(lazy):
        return lazy
    try:
        return lazy()
    except (MissingInputError, ModelDirectoryError) as error:  # nothing usable saved there
        where = getattr(lazy, "where", "published_captioner")
        raise MissingInputError(f"{where} has no usable captioner ({error}): {fix}") from error
    except UserError:  # damaged, or made for another setting: its own message says what to do
        raise
    except DatasetError as error:  # no version saved, or no model directory there
        where = getattr(lazy, "where", "published_captioner")
        raise MissingInputError(f"{where} has no usable captioner ({error}): {fix}") from error


def _journaled_row(row: EvalCaptionerRow, captioner, data: EvalData, params) -> list[str] | None:
    """An ``openai`` or ``transformers`` row's captions of every image (journaled), or None
    for an optional row some images got no caption from (a warning says so)."""
    from PIL import Image

    from vlv_pipeline.benchmarks.captioners import journal_of, journaled_captions

    images = "split"
    if params.source == "coco":  # COCO's ids are numbers of one captions file, not content
        from vlv_pipeline.benchmarks.coco import read_coco_captions

        images = f"coco:{read_coco_captions(params.coco.annotations).digest}"
    journal = journal_of(row, params.journal_dir, params.resolution, images)

    def image(i: int):
        return Image.fromarray(data.pixels[i].permute(1, 2, 0).numpy())

    try:
        got, missing = journaled_captions(captioner, journal, data.image_ids, image)
    except UserError as error:
        if not row.optional:
            raise
        logger.warning("evaluate: row %r is left out (optional): %s", row.column, error)
        return None
    if missing:
        message = (
            f"evaluate: the {row.kind} row {row.column!r} has no caption for {len(missing)} of "
            f"{len(data.image_ids)} images (e.g. {missing[0]!r}; the reasons are in "
            f"{journal.path.with_name(journal.path.stem + '.failed.jsonl')}); every row must "
            "caption every image. A rerun asks for them again"
        )
        if row.optional:
            logger.warning("%s; the row is left out (optional)", message)
            return None
        from vlv_pipeline.captioners import CaptionerError

        raise CaptionerError(message)
    return [got[i] for i in data.image_ids]


# eval_captions' fixed columns -> the kind of row that writes them; a kind -> its tables' kind
_KIND_OF_COLUMN = {column: kind for kind, column in KIND_COLUMNS.items()}
_TABLE_KIND = {"trained": "model", "reference": "reference"}


def captioner_label(column: str, params: EvaluateParams | None = None) -> tuple[str, str]:
    """``(label, kind)`` of an ``eval_captions`` column in Tables 1, 2 and 3, so the three
    name each captioner alike: the label of its row of ``evaluate.captioners``
    (``EvalCaptionerRow.title``), or, for a fixed column no row names (e.g. ``reference``,
    which Tables 2 and 3 always rate), its kind's label; a COCO set's own captions, unless
    labelled, are "COCO captions". ``kind``: ``model`` for the trained captioner (first and
    bold in every table), ``reference`` for the reference captions, else ``baseline``.
    ``params`` None: the default rows."""
    row = params.row(column) if params is not None else None
    kind = row.kind if row is not None else _KIND_OF_COLUMN.get(column)
    if row is not None:
        label = row.title
    else:
        label = KIND_LABELS.get(kind, column) if kind is not None else column
    coco = params is not None and params.source == "coco"
    if column == "reference" and coco and (row is None or not row.label):
        label = "COCO captions"
    return label, _TABLE_KIND.get(kind, "baseline")


def caption_columns(captions: pd.DataFrame) -> list[str]:
    """The captioners' columns of ``eval_captions`` (every column but image_id and
    reference), in the table's order."""
    return [c for c in captions.columns if c not in ("image_id", "reference")]


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

    def __init__(self, vlv_encoder, data: EvalData, captions: pd.DataFrame, params):
        self.vlv_encoder, self.data, self.captions, self.params = (
            vlv_encoder,
            data,
            captions,
            params,
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
        t2i = load_teacher(params.stage1_t2i, params.t2i_dtype, device)
        for start, stop in batches:
            originals = data.images(start, stop)
            conditions = t2i.condition_images(self.vlv_encoder, originals, s.batch_size)
            images = render_from_embeddings(t2i, conditions, start, s)
            yield "from_embeddings", start, originals, images
        scheduler = s.scheduler
        kwargs["call_kwargs"] = call_kwargs_of(params.render_t2i)
        if params.render_t2i == params.stage1_t2i:
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
    vlv_encoder, data: EvalData, captions: pd.DataFrame, params: EvaluateParams
) -> EvalRenders:
    """The reconstructions (see ``RECONSTRUCTIONS``), rendered batch by batch when scored."""
    return EvalRenders(vlv_encoder, data, captions, params)


def _probe_scores(probe, originals, images, targets) -> tuple[dict, np.ndarray]:
    predicted = torch.cat([p for p, _ in images])
    scores = scene_agreement(predicted, targets)
    scores["frechet_probe"] = frechet_distance(
        torch.cat(originals), torch.cat([e for _, e in images])
    )
    # where the objects land (the paper's spatial claim, in 2D): each true object found in
    # its cell, only elsewhere (nearest such cell, in king moves), or not at all
    if (targets[..., 0] > 0).any():
        spatial = spatial_fidelity(predicted, targets)
        distance = spatial["mean_distance_elsewhere"]
        scores.update(
            spatial_exact_cell=spatial["exact_cell"],
            spatial_elsewhere=spatial["elsewhere"],
            spatial_not_found=spatial["not_found"],
            spatial_distance=None if distance != distance else distance,  # NaN: none elsewhere
            spatial_objects=spatial["objects"],
        )
    exact = predicted == targets
    occupied = targets[..., 0] > 0
    cell_ok = exact[..., 0] & (~occupied | (exact[..., 1] & exact[..., 2]))
    return scores, cell_ok.all(-1).numpy()


def _probe_reading(probe, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The probe's scene reading and penultimate features of a batch (resized to its side)."""
    size = probe.config.image_size
    if images.shape[-1] != size:
        images = F.interpolate(images, size=(size, size), mode="bilinear", antialias=True)
    return probe.predict(images), probe.embedding(images)


def _fid_clip_metrics(params: EvaluateParams):
    """FID (torchmetrics, Inception weights from torch-fidelity) and CLIP score (a hub CLIP),
    built once per evaluation; offline without the weights, a message says what to get."""
    try:
        from torchmetrics.image.fid import FrechetInceptionDistance
        from torchmetrics.multimodal.clip_score import CLIPScore

        fid = FrechetInceptionDistance(feature=2048, normalize=True, reset_real_features=False)
        clip = CLIPScore(model_name_or_path=params.clip_model)
    except (ImportError, ModuleNotFoundError, OSError, RuntimeError) as error:
        raise SetupError(
            "judge fid_clip needs torchmetrics with torch-fidelity (pip install "
            "'torchmetrics[image]' torch-fidelity), the Inception weights torch-fidelity "
            "downloads (weights-inception-2015-12-05-6726825d.pth into the torch hub cache) and the "
            f"CLIP model {params.clip_model!r} (a hub id or local dir). Offline, download them on "
            f"a connected machine first. Cause: {type(error).__name__}: {error}"
        ) from error
    device = inference_device()
    return fid.to(device), clip.to(device)


class _Scores:
    """One reconstruction's running scores under the judge, fed one batch at a time."""

    def __init__(self, judge: str, probe, fid_clip, has_refs: bool):
        self.judge, self.probe, self.fid_clip, self.has_refs = judge, probe, fid_clip, has_refs
        self.readings: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.squared, self.values = 0.0, 0
        if fid_clip is not None:
            fid, clip = fid_clip
            fid.reset()  # clears the fake features only (reset_real_features=False)
            clip.reset()

    def add(self, originals: torch.Tensor, images: torch.Tensor, references: list) -> None:
        if self.judge == "probe":
            self.readings.append(_probe_reading(self.probe, images))
        elif self.judge == "pixels":
            self.squared += float(((images.clamp(-1, 1) - originals) ** 2).sum())
            self.values += images.numel()
        else:  # FID against the originals; CLIP score against the reference captions
            fid, clip = self.fid_clip
            fid.update(((images + 1) / 2).to(fid.device), real=False)
            if self.has_refs:
                pixels = ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
                clip.update(pixels.to(clip.device), list(references))

    def result(self, original_features: list[torch.Tensor], targets) -> tuple[dict, np.ndarray]:
        """The scores over every rank's images: the probe's readings are gathered in rank order
        (the split's order), error sums are added; torchmetrics syncs FID and CLIP itself.
        ``original_features``: the originals' probe features, already gathered."""
        if self.judge == "probe":
            readings = gather_lists([(p.cpu(), e.cpu()) for p, e in self.readings])
            return _probe_scores(self.probe, original_features, readings, targets)
        if self.judge == "pixels":
            sums = each_rank(lambda: (self.squared, self.values))
            return pixel_scores(sum(q for q, _ in sums) / sum(v for _, v in sums)), None
        fid, clip = self.fid_clip
        out = {"fid": float(fid.compute())}
        if self.has_refs:
            out["clip_score"] = float(clip.compute())
        return out, None


def pixel_scores(mse: float) -> dict:
    """Mean squared error (images in [-1, 1]) and PSNR against the originals: a judge that
    needs no weights (the rehearsal environment's), not a measure of caption quality."""
    return {"mse": mse, "psnr": float(10 * torch.log10(torch.tensor(4.0 / max(mse, 1e-12))))}


@torch.no_grad()
def score_evaluation(
    data: EvalData,
    captions: pd.DataFrame,
    renders: EvalRenders | dict[str, torch.Tensor],
    params: EvaluateParams,
) -> tuple[dict, pd.DataFrame, dict[str, torch.Tensor]]:
    """Metrics (json), sample-level results (parquet) and the grid's images, for the model
    and every baseline. Renders arrive one batch at a time; only the scores' running state
    (probe readings, Inception statistics, error sums) and the grid's few images are kept.
    Under ``accelerate launch`` each rank reads its own renders; the readings are gathered
    (``_Scores.result``) and the grid's images too, so every rank returns the same results."""
    samples = captions.copy()
    metrics: dict = {"images": len(data.image_ids), "judge": params.judge, "captions": {}}
    have_refs = all(r is not None for r in data.references)
    vocab = probe = targets = None
    if params.judge == "probe":
        from vlv_pipeline.models.probe import AttributeProbe, caption_targets
        from vlv_pipeline.world.scene import Vocabulary

        if not params.probe:
            raise ParameterError(
                "evaluate.judge is probe but evaluate.probe names no probe directory"
            )
        probe = AttributeProbe.from_pretrained(params.probe).eval()
        cfg = probe.config
        vocab = Vocabulary(tuple(cfg.shapes), tuple(cfg.colours), tuple(cfg.sizes))
        targets = caption_targets(data.references, probe)
    for name in caption_columns(captions):
        if not have_refs or captions[name].isna().any():
            continue
        corpus, each = caption_text_metrics(captions[name].tolist(), data.references)
        if vocab is not None:
            corpus.update(caption_scene_metrics(captions[name].tolist(), data.references, vocab))
        metrics["captions"][name] = corpus
        samples[f"{name}_bleu4"] = each["bleu4"]
        samples[f"{name}_cider"] = each["cider"]
    if isinstance(renders, dict):
        renders = HeldRenders(data, renders, params.sampling.batch_size)
    names = renders.names()
    fid_clip = _fid_clip_metrics(params) if params.judge == "fid_clip" else None
    grid_size = min(params.grid_images, len(data.image_ids))
    grid_parts: list[tuple[str, int, torch.Tensor]] = []
    original_features: list[torch.Tensor] = []
    scores: dict[str, _Scores] = {}
    finished: list[str] = []

    def finish_before(name: str | None) -> None:
        """Score the reconstructions before ``name`` in ``names`` (all of them: None) not yet
        scored, in that order on every rank (scoring gathers across ranks), also those of
        which this rank rendered nothing."""
        nonlocal original_features
        for earlier in names[: len(names) if name is None else names.index(name)]:
            if earlier in finished:
                continue
            if not finished and probe is not None:
                original_features = gather_lists([f.cpu() for f in original_features])
            if earlier not in scores:
                scores[earlier] = _Scores(params.judge, probe, fid_clip, have_refs)
            result, exact = scores.pop(earlier).result(original_features, targets)
            entry = {"what": RECONSTRUCTIONS[earlier], **result}
            metrics.setdefault("reconstruction", {})[earlier] = entry
            if exact is not None:
                samples[f"{earlier}_exact"] = exact
            finished.append(earlier)

    for name, start, originals, images in renders:
        if name not in scores:
            finish_before(name)  # the reconstructions before it are complete
            scores[name] = _Scores(params.judge, probe, fid_clip, have_refs)
        if name == names[0]:  # the originals' statistics, once
            if probe is not None:
                original_features.append(_probe_reading(probe, originals)[1])
            if fid_clip is not None:
                fid_clip[0].update(((originals + 1) / 2).to(fid_clip[0].device), real=True)
        references = data.references[start : start + len(images)]
        scores[name].add(originals, images, references)
        if start < grid_size:
            if name == names[0]:
                grid_parts.append(("original", start, originals[: grid_size - start]))
            if name in ("from_embeddings", "from_caption"):
                grid_parts.append((name, start, images[: grid_size - start]))
    finish_before(None)
    grid = _grid(gather_lists(grid_parts))
    for name, entry in metrics["captions"].items():
        logger.info(
            "evaluate: %s captions %s",
            name,
            {k: round(v, 4) for k, v in entry.items() if isinstance(v, float)},
        )
    return metrics, samples, grid


def _grid(parts: list[tuple[str, int, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The grid's images from ``(row, start, images)`` pieces: each row in the split's order."""
    grid = {}
    for row in ("original", "from_embeddings", "from_caption"):
        pieces = sorted((p for p in parts if p[0] == row), key=lambda p: p[1])
        if pieces:
            grid[row] = torch.cat([images for _, _, images in pieces])
    return grid


def plot_eval_grid(grid: dict[str, torch.Tensor], captions: pd.DataFrame, params: EvaluateParams):
    """original | reconstruction from embeddings | reconstruction from the caption.

    Returned twice: once for the versioned PNG, once in memory for the report (a saved
    matplotlib figure cannot be loaded back).
    """
    labels = {"original": "original", "from_embeddings": "from embeddings"}
    labels["from_caption"] = "from caption"
    items = {labels[k]: tensor_to_uint8(v) for k, v in grid.items() if k in labels}
    n = len(grid["original"])
    shown = captions["vlv"] if "vlv" in captions else captions["reference"]
    texts = [f"{c}" for c in shown.head(n)]
    figure = image_grid(items, captions=texts, title="evaluation: original | reconstructions")
    return figure, figure


FRECHET_NOTE = (
    "Frechet (probe): the Frechet distance (the FID formula) between the attribute probe's "
    "penultimate features (256-d) of the originals and of the reconstructions; lower is "
    "closer. It is not FID: the features come from the shapes world's probe, not Inception."
)


def write_report(
    metrics: dict,
    grid,
    stage1_log: dict,
    stage2_log: dict,
    stage2_baseline_log: dict,
    parameters: dict,
    *tables: dict,
) -> str:
    """The HTML report: tables with the baselines beside the model, the paper's Tables 1-3
    (``tables``: ``PaperTable.to_dict()`` each, in order), grid, loss curves, params."""
    import matplotlib.pyplot as plt

    from vlv_pipeline.metrics.plots import loss_curves
    from vlv_pipeline.metrics.report import build_report, figure_png

    losses = {}
    for title, histories in (
        ("stage 1 (VLV encoder against the frozen T2I decoder)", {"stage 1": stage1_log}),
        (
            "stage 2 (caption decoder)",
            {"from stage 1": stage2_log, "without stage 1": stage2_baseline_log},
        ),
    ):
        curves = {k: v.get("history", []) for k, v in histories.items() if v}
        if any(curves.values()):
            figure = loss_curves(curves, title=title)
            losses[title] = figure_png(figure)
            plt.close(figure)
    notes = [FRECHET_NOTE] if metrics.get("judge") == "probe" else []
    notes.append(
        "exact scene: a caption (or the probe's reading of a render) names exactly the "
        "original's objects with their position, shape, colour and size."
    )
    return build_report(metrics, figure_png(grid), losses, parameters, notes, list(tables))


def plot_report_preview(metrics: dict, grid):
    """The report's tables and grid as one PNG (a picture of the report)."""
    from vlv_pipeline.metrics.report import report_figure

    return report_figure(metrics, grid)
