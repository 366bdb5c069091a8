"""Nodes of the `reconstruct` pipeline: your own images rendered back through the frozen T2I
model, as the official code's ``Image_inference.sh`` does.

    kedro run --pipeline reconstruct --params reconstruct.source=PATH

Every image the screening keeps (the ``caption`` pipeline's reading and screening: a folder,
one image file, a parquet file or webdataset shards, ``params:ingest``'s safety limits) is
rendered from its stage-1 caption embeddings through the frozen T2I model, and, where a
captioner is there, from its caption; each gets a side-by-side sheet (original | from
embeddings | from caption, the caption under them). Every bad input keeps its verdict and the
run goes on.

Outputs (versioned, never overwritten): the renders (``reconstructions``: ``original/``,
``from_embeddings/``, ``from_caption/``, each ``<ref>.png``), one row per input
(``reconstruct_table``: verdict, caption, seed, files, per-image MSE/PSNR), the metrics
(``reconstruct_metrics``), the sheets (``reconstruct_sheets``: ``<ref>.png``) and a
contact-sheet grid of the first images (``reconstruct_grid``).

The renders are made while the ``reconstructions`` folder is written (``Reconstructions`` is
iterated by its dataset's save), one batch at a time: no stage holds every render. Under
``accelerate launch`` the main rank renders (outputs are saved there), the others wait.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import PurePosixPath

import numpy as np
import pandas as pd
import torch
from PIL import Image, ImageDraw, ImageFont

from vlv_pipeline.datasets.model_directory import LazyModel
from vlv_pipeline.errors import ParameterError, SetupError
from vlv_pipeline.imaging.checks import resize_and_crop
from vlv_pipeline.imaging.sources import ImageSource, iter_images
from vlv_pipeline.imaging.user_images import open_images, screen_for
from vlv_pipeline.models.captioning import NoCaptionerError, caption_kept_images, choose_captioner
from vlv_pipeline.models.device import inference_device
from vlv_pipeline.models.published import official_crop
from vlv_pipeline.models.seeds import image_seed
from vlv_pipeline.models.teachers import call_kwargs_of
from vlv_pipeline.params.ingest import IngestParams
from vlv_pipeline.params.reconstruct import ReconstructParams
from vlv_pipeline.world.data import pil_to_tensor, tensor_to_uint8

logger = logging.getLogger(__name__)

# the renders of each image, in a sheet's order: (folder in `reconstructions`, label)
PANELS = {
    "original": "original",
    "from_embeddings": "from embeddings",
    "from_caption": "from caption",
}
RENDERED = ("from_embeddings", "from_caption")
# what each judge's distance is, as the metrics name it
DISTANCES = {
    "probe": "Frechet distance of the attribute probe's penultimate features (the FID "
    "formula; the shapes world's judge, not Inception)",
    "fid_clip": "FID: Frechet distance of Inception-v3 pool features (torchmetrics, 2048-d)",
}


def open_reconstruct_images(params: ReconstructParams) -> ImageSource:
    """The images ``reconstruct.source`` names: a folder, one image file, or (with
    ``reconstruct.kind``) a parquet file or webdataset shards."""
    return open_images(params.source, params.kind, pipeline="reconstruct")


def screen_reconstruct_images(
    images: ImageSource, ingest: IngestParams, params: ReconstructParams
) -> pd.DataFrame:
    """Every input's verdict, as the ``caption`` pipeline screens (``reconstruct.min_side``
    and ``reconstruct.max_aspect_ratio`` replace ingest's curation limits). A judge that
    this many images need (``fid_clip``'s Inception weights) is checked now, before any
    model is loaded or any image captioned or rendered."""
    screened = screen_for(images, ingest, params, pipeline="reconstruct")
    if (
        params.judge == "fid_clip"
        and fid_needed(int(screened["reason"].isna().sum()), params) is None
    ):
        _inception_fid()
    return screened


@dataclass
class ChosenCaptioner:
    """The captioner ``reconstruct.model`` names, loaded; or None and why there is none."""

    model: object | None
    why_not: str | None = None


def choose_reconstruct_captioner(
    trained, published, params: ReconstructParams, screened: pd.DataFrame | None = None
) -> ChosenCaptioner:
    """The captioner ``reconstruct.model`` names, chosen and loaded as the ``caption``
    pipeline chooses (the other is never read). ``none``, or a captioner not saved yet,
    gives none: the re-renders from captions are left out (a warning says which pipeline
    makes it), unless ``reconstruct.encoder`` is ``captioner``, which needs it.
    ``screened``: taken only so that the model is loaded after screening kept something."""
    if params.model == "none":
        return ChosenCaptioner(None, "reconstruct.model is none: no captioner was asked for")
    try:
        model = choose_captioner(trained, published, params.caption_params(), "reconstruct")
    except NoCaptionerError as error:
        if params.encoder == "captioner":
            raise
        logger.warning("reconstruct: no re-renders from captions: %s", error)
        return ChosenCaptioner(None, f"no captioner: {error}")
    return ChosenCaptioner(model)


@dataclass
class UserCaptions:
    """One row per input (the ``caption`` pipeline's table: file, image_id, caption,
    rejected, detail) and, when nothing was captioned, why."""

    table: pd.DataFrame
    why_not: str | None = None

    def texts(self) -> dict[str, str]:
        """``{image_id: caption}`` of the captioned images."""
        rows = self.table[self.table["caption"].map(lambda c: isinstance(c, str))]
        return dict(zip(rows["image_id"], rows["caption"], strict=True))


def caption_reconstruct_images(
    captioner: ChosenCaptioner, images: ImageSource, screened: pd.DataFrame, params
) -> UserCaptions:
    """The kept images captioned as the ``caption`` pipeline captions them
    (``models.captioning.caption_kept_images``), or, with no captioner, the same table
    without captions."""
    if captioner.model is not None:
        table = caption_kept_images(captioner.model, images, screened, params.caption_params())
        return UserCaptions(table)
    table = pd.DataFrame(
        {
            "file": screened["source"].astype(str),
            "image_id": screened["image_id"],
            "caption": [None] * len(screened),
            "rejected": screened["reason"],
            "detail": screened["detail"],
        }
    )
    return UserCaptions(table, captioner.why_not)


def render_name(folder: str, ref: str, image_id: str | None = None) -> str:
    """Where image ``ref``'s render goes in the ``reconstructions`` folder (its sheet in
    ``reconstruct_sheets``: ``folder`` empty): ``<folder>/<ref>.png``, the ref's own
    subfolders kept (``a.jpg`` and ``a.png`` stay apart); a ref that is no plain relative
    path gives the image's id instead."""
    parts = ref.split("/")
    if any(part in ("", ".", "..") for part in parts) or ref.startswith("/"):
        ref = str(image_id)
    name = f"{ref}.png"
    return str(PurePosixPath(folder, name)) if folder else name


def kept_rows(screened: pd.DataFrame) -> pd.DataFrame:
    """The kept images in the source's order, with each one's index among them."""
    kept = screened[screened["reason"].isna()].reset_index(drop=True)
    return kept.assign(index=np.arange(len(kept)))


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


def fid_needed(kept: int, params: ReconstructParams) -> str | None:
    """Why no distribution distance is computed for ``kept`` images (None: it is)."""
    if params.judge == "pixels":
        return (
            "reconstruct.judge is pixels: no feature judge (set it to fid_clip, or to probe in "
            "the shapes world)"
        )
    if kept < params.fid_min_images:
        return (
            f"{kept} image(s) reconstructed, fewer than reconstruct.fid_min_images "
            f"({params.fid_min_images}): a Frechet distance estimated from fewer images than "
            "that is dominated by the estimate's own error (its covariances need more samples "
            "than features), so it would not say how close the renders are"
        )
    return None


def _inception_fid():
    """torchmetrics' FID (Inception weights from torch-fidelity), or a ``SetupError``."""
    try:
        from torchmetrics.image.fid import FrechetInceptionDistance

        return FrechetInceptionDistance(feature=2048, normalize=True, reset_real_features=False)
    except (ImportError, ModuleNotFoundError, OSError, RuntimeError) as error:
        raise SetupError(
            "reconstruct.judge fid_clip on a folder of reconstruct.fid_min_images images or "
            "more needs torchmetrics with torch-fidelity (pip install 'torchmetrics[image]' "
            "torch-fidelity) and the Inception weights torch-fidelity downloads "
            "(weights-inception-2015-12-05-6726825d.pth into the torch hub cache); offline, "
            "download them on a connected machine first, or set reconstruct.judge: pixels. "
            f"Cause: {type(error).__name__}: {error}"
        ) from error


class Reconstructions:
    """The renders of the kept images, made when iterated: ``(name, image)`` pairs for the
    ``reconstructions`` folder (``render_name``), one batch of ``sampling.batch_size`` at a
    time. Image ``i`` (its index among the kept images) draws its noise from a generator
    seeded with ``image_seed(sampling.seed, i)``, the same for its two renders: its render
    does not depend on the batch size, nor on the other images."""

    def __init__(self, encoder, images: ImageSource, kept: pd.DataFrame, captions, params):
        self.encoder, self.images, self.kept = encoder, images, kept
        self.captions: UserCaptions = captions
        self.params: ReconstructParams = params

    def __iter__(self) -> Iterator[tuple[str, Image.Image]]:
        from vlv_pipeline.models.teachers import load_teacher

        params, s = self.params, self.params.sampling
        if self.kept.empty:
            return
        device = inference_device()
        t2i = load_teacher(params.t2i, params.t2i_dtype, device)
        side = render_side(t2i, params)
        seen_side = encoder_side(self.encoder, params)
        # the published captioner's encoder reads the official inference's crop
        published = params.encoder == "captioner" and params.model == "published"
        crop = official_crop if published else resize_and_crop
        texts = self.captions.texts()
        captioned = all(isinstance(texts.get(i), str) for i in self.kept["image_id"])
        where = {row.image_id: (row.index, str(row.source)) for row in self.kept.itertuples()}
        caption_pipeline: list = []  # (pipeline, its sampler), made at the first caption
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
                pipeline, scheduler = caption_pipeline
                words = [texts[image_id] for _, image_id, _, _ in batch]
                images = render(
                    pipeline,
                    captions=words,
                    call_kwargs=call_kwargs_of(self.params.render_t2i or self.params.t2i),
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
        """The pipeline that renders captions, and the sampler it uses: the stage-1 T2I
        model's with ``sampling.scheduler``, or ``render_t2i`` with its own sampler."""
        params = self.params
        if not params.render_t2i or params.render_t2i == params.t2i:
            return t2i.pipeline(), params.sampling.scheduler
        from diffusers import DiffusionPipeline

        dtype = getattr(torch, params.t2i_dtype)
        pipeline = DiffusionPipeline.from_pretrained(params.render_t2i, dtype=dtype)
        return pipeline.to(device), None


def render_reconstructions(
    encoder,
    captioner: ChosenCaptioner,
    images: ImageSource,
    screened: pd.DataFrame,
    captions: UserCaptions,
    params: ReconstructParams,
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
    return Reconstructions(model, images, kept, captions, params)


# ------------------------------------------------------------------------------ scores


def reconstruct_table(
    folder, captions: UserCaptions, screened: pd.DataFrame, params: ReconstructParams
) -> pd.DataFrame:
    """One row per input: its verdict, caption, index and seed among the kept images, the
    files of its renders in the ``reconstructions`` folder, and each render's MSE and PSNR
    against the original (images in [-1, 1], at the renders' side)."""
    table = captions.table.copy().reset_index(drop=True)
    kept = kept_rows(screened).set_index("image_id")
    index = [
        int(kept.loc[i, "index"]) if pd.isna(r) and i in kept.index else None
        for i, r in zip(table["image_id"], table["rejected"], strict=True)
    ]
    table["index"] = pd.array(index, dtype="Int64")
    table["seed"] = pd.array(
        [None if i is None else image_seed(params.sampling.seed, i) for i in index], dtype="Int64"
    )
    for name in PANELS:
        table[name] = [
            render_name(name, ref, image_id)
            if i is not None and render_name(name, ref, image_id) in folder
            else None
            for ref, image_id, i in zip(table["file"], table["image_id"], index, strict=True)
        ]
    for name in RENDERED:
        errors = [
            _mse(folder, original, render)
            if isinstance(original, str) and isinstance(render, str)
            else None
            for original, render in zip(table["original"], table[name], strict=True)
        ]
        table[f"mse_{name}"] = pd.array(errors, dtype="Float64")
        table[f"psnr_{name}"] = pd.array(
            [None if e is None else psnr(e) for e in errors], dtype="Float64"
        )
    return table


def psnr(mse: float) -> float:
    """PSNR in dB of a mean squared error between images in [-1, 1] (peak-to-peak 2)."""
    return float(10 * np.log10(4.0 / max(mse, 1e-12)))


def _mse(folder, original: str, render: str) -> float:
    return float(
        ((pil_to_tensor(folder.open(render)) - pil_to_tensor(folder.open(original))) ** 2).mean()
    )


def score_reconstructions(
    folder, captions: UserCaptions, screened: pd.DataFrame, params: ReconstructParams
) -> tuple[pd.DataFrame, dict]:
    """The per-input table (``reconstruct_table``) and the metrics: counts and verdicts, how
    the renders were made, mean MSE/PSNR of each render, and the judge's distance between
    the originals and each render set when at least ``reconstruct.fid_min_images`` images
    were reconstructed; below that (or with judge ``pixels``) the metrics say it was not
    computed, and why (logged too)."""
    table = reconstruct_table(folder, captions, screened, params)
    kept = table[table["index"].notna()]
    reasons = table["rejected"].dropna().value_counts()
    metrics: dict = {
        "images": {
            "inputs": len(table),
            "reconstructed": len(kept),
            "rejected": int(reasons.sum()),
            "rejected_by_reason": {str(k): int(v) for k, v in sorted(reasons.items())},
        },
        "source": {"kind": params.kind, "path": params.source},
        "t2i": params.t2i,
        "render_t2i": params.render_t2i or params.t2i,
        "encoder": params.encoder,
        "captioner": None if captions.why_not else params.model,
        "sampling": params.sampling.model_dump(),
        "per_image_seed": "image_seed(sampling.seed, index): sha256 of '<seed>:<index>'",
        "from_caption": {"rendered": bool(kept["from_caption"].notna().any())},
        "pixels": {},
    }
    if captions.why_not:
        metrics["from_caption"]["why_not"] = captions.why_not
    for name in RENDERED:
        errors = kept[f"mse_{name}"].dropna()
        if len(errors):
            mse = float(errors.mean())
            metrics["pixels"][name] = {
                "mse": mse,
                "psnr": float(kept[f"psnr_{name}"].dropna().mean()),
                "psnr_of_mean_mse": psnr(mse),
            }
    why = fid_needed(len(kept), params)
    fid: dict = {
        "computed": why is None,
        "judge": params.judge,
        "min_images": params.fid_min_images,
        "images": len(kept),
    }
    if params.judge in DISTANCES:
        fid["metric"] = DISTANCES[params.judge]
    if why is None:
        fid.update(_distances(folder, kept, params))
        logger.info("reconstruct: %s", {k: fid[k] for k in RENDERED if k in fid})
    else:
        fid["why_not"] = why
        logger.info("reconstruct: FID not computed: %s", why)
    metrics["fid"] = fid
    logger.info(
        "reconstruct: %d image(s) reconstructed, %d rejected (see reconstruct_table)",
        len(kept),
        metrics["images"]["rejected"],
    )
    return table, metrics


def _batches(folder, names: list[str], size: int = 64) -> Iterator[torch.Tensor]:
    for start in range(0, len(names), size):
        yield torch.stack([pil_to_tensor(folder.open(n)) for n in names[start : start + size]])


def _distances(folder, kept: pd.DataFrame, params: ReconstructParams) -> dict:
    """The judge's distance between the originals and each render set (read back)."""
    sets = {name: kept[name].dropna().tolist() for name in RENDERED}
    out = {}
    if params.judge == "probe":
        import torch.nn.functional as F

        from vlv_pipeline.metrics.frechet import frechet_distance
        from vlv_pipeline.models.probe import AttributeProbe

        probe = AttributeProbe.from_pretrained(params.probe).eval()
        side = probe.config.image_size

        def features(names):  # the probe's penultimate features, at its own side
            with torch.no_grad():
                return torch.cat(
                    [
                        probe.embedding(
                            F.interpolate(b, size=(side, side), mode="bilinear", antialias=True)
                        )
                        for b in _batches(folder, names)
                    ]
                )

        originals = features(kept["original"].tolist())
        for name, names in sets.items():
            if len(names) >= 2:
                out[name] = frechet_distance(originals, features(names))
        return out
    fid = _inception_fid().to(inference_device())
    for batch in _batches(folder, kept["original"].tolist()):
        fid.update(((batch + 1) / 2).to(fid.device), real=True)
    for name, names in sets.items():
        if len(names) < 2:
            continue
        fid.reset()  # the renders' statistics only (reset_real_features=False)
        for batch in _batches(folder, names):
            fid.update(((batch + 1) / 2).to(fid.device), real=False)
        out[name] = float(fid.compute())
    return out


# ------------------------------------------------------------------------------ sheets


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # a Pillow without FreeType: its one bitmap font
        return ImageFont.load_default()


def _wrapped(draw: ImageDraw.ImageDraw, text: str, font, width: int) -> list[str]:
    """``text`` in lines no wider than ``width`` pixels (a word longer than that alone)."""
    lines: list[str] = []
    for paragraph in text.splitlines() or [""]:
        line = ""
        for word in paragraph.split():
            trial = f"{line} {word}".strip()
            if line and draw.textlength(trial, font=font) > width:
                lines.append(line)
                line = word
            else:
                line = trial
        lines.append(line)
    return lines


def sheet(
    panels: list[tuple[str, Image.Image]], caption: str, title: str = "", side: int = 256
) -> Image.Image:
    """One image's side-by-side sheet: the panels (label above each, shown at least
    ``side`` pixels wide: small renders are upscaled, pixel for pixel) and the caption text
    under them."""
    margin, font, small = 8, _font(14), _font(12)
    size = max(side, max(p.width for _, p in panels))
    width = margin + len(panels) * (size + margin)
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    lines = _wrapped(measure, caption, font, width - 2 * margin)
    line_height = 18
    top = margin + (line_height if title else 0) + line_height
    height = top + size + margin + line_height * len(lines) + margin
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((margin, margin), title, fill="black", font=small)
    for k, (label, panel) in enumerate(panels):
        x = margin + k * (size + margin)
        resample = Image.Resampling.NEAREST if panel.width < size else Image.Resampling.LANCZOS
        shown = panel.resize((size, round(panel.height * size / panel.width)), resample)
        draw.text((x, top - line_height), label, fill="black", font=font)
        canvas.paste(shown, (x, top))
    for k, line in enumerate(lines):
        draw.text((margin, top + size + margin + k * line_height), line, fill="black", font=font)
    return canvas


class Sheets:
    """The sheets of the reconstructed images, made from the saved renders when iterated:
    ``(<ref>.png, sheet)`` pairs for the ``reconstruct_sheets`` folder."""

    def __init__(self, folder, table: pd.DataFrame, params: ReconstructParams, why_not=None):
        self.folder, self.table, self.params, self.why_not = folder, table, params, why_not

    def __iter__(self) -> Iterator[tuple[str, Image.Image]]:
        for row in self.table[self.table["index"].notna()].itertuples():
            panels = [
                (label, self.folder.open(getattr(row, name)))
                for name, label in PANELS.items()
                if isinstance(getattr(row, name), str)
            ]
            if isinstance(row.caption, str):
                text = f"caption: {row.caption}"
            else:
                text = f"no caption ({self.why_not or 'not captioned'})"
            title = f"{row.file}  (seed {row.seed})"
            yield (
                render_name("", row.file, row.image_id),
                sheet(panels, text, title, self.params.sheet_side),
            )


def reconstruction_sheets(
    folder, table: pd.DataFrame, captions: UserCaptions, params: ReconstructParams
) -> Sheets:
    """A side-by-side sheet per reconstructed image (``Sheets``), written one at a time."""
    return Sheets(folder, table, params, captions.why_not)


def _short(text: str, limit: int = 72) -> str:
    """A caption cut to ``limit`` characters for the grid (the sheets show it whole)."""
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "\u2026"


def plot_reconstruct_grid(folder, table: pd.DataFrame, params: ReconstructParams):
    """A contact sheet of the first ``reconstruct.grid_images`` images: original | from
    embeddings | from caption, each image's caption above it."""
    from vlv_pipeline.metrics.plots import image_grid

    rows = table[table["index"].notna()].head(params.grid_images)
    columns = {}
    for name, label in PANELS.items():
        if len(rows) and rows[name].notna().all():
            columns[label] = np.stack([np.asarray(folder.open(n)) for n in rows[name]])
    if not columns:  # nothing was reconstructed (cannot happen: screening keeps one)
        columns = {"original": np.zeros((1, 8, 8, 3), dtype=np.uint8)}
    texts = [
        _short(c) if isinstance(c, str) else f
        for c, f in zip(rows["caption"], rows["file"], strict=True)
    ]
    per_row = max(1, min(3, math.ceil(len(rows) / 2)))
    return image_grid(
        columns,
        captions=texts or None,
        title="reconstruct: original | from embeddings | from caption",
        items_per_row=per_row,
    )
