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

This module reads, screens and captions the inputs, and holds what the other modules share
(where a render goes, which images are kept, whether a judge's distance is computed); the
renders are made in ``renders.py``, the table and metrics in ``scores.py``, the sheets and
grid in ``sheets.py``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import PurePosixPath

import numpy as np
import pandas as pd

from vlv_pipeline.errors import SetupError
from vlv_pipeline.imaging.sources import ImageSource
from vlv_pipeline.imaging.user_images import open_images, screen_for
from vlv_pipeline.models.captioning import NoCaptionerError, caption_kept_images, choose_captioner
from vlv_pipeline.params.ingest import IngestParams
from vlv_pipeline.params.reconstruct import ReconstructParams

logger = logging.getLogger(__name__)

# the renders of each image, in a sheet's order: (folder in `reconstructions`, label)
PANELS = {
    "original": "original",
    "from_embeddings": "from embeddings",
    "from_caption": "from caption",
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
