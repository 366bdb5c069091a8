"""The `evaluate` pipeline's scores: the captions against the references, and every
reconstruction against the originals under ``evaluate.judge`` (the attribute probe, FID and
CLIP score, or pixel error), with the grid's images.

Renders arrive one batch at a time; only the scores' running state is kept. Under
``accelerate launch`` each rank reads its own renders; the per-image readings (or error sums)
and the grid's images are gathered to every rank in rank order, reconstruction after
reconstruction in the same order on every rank, so every rank returns the same tables,
metrics and grid as a single process would.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from itertools import groupby

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from vlv_pipeline.distributed import each_rank, gather_lists
from vlv_pipeline.errors import ParameterError, SetupError
from vlv_pipeline.metrics.captions import caption_scene_metrics
from vlv_pipeline.metrics.frechet import frechet_distance
from vlv_pipeline.metrics.scenes import scene_agreement
from vlv_pipeline.metrics.spatial import spatial_fidelity
from vlv_pipeline.metrics.text import caption_text_metrics
from vlv_pipeline.models.device import inference_device
from vlv_pipeline.params.evaluate import EvaluateParams
from vlv_pipeline.pipelines.evaluate.nodes import EvalData, caption_columns
from vlv_pipeline.pipelines.evaluate.renders import RECONSTRUCTIONS, EvalRenders, HeldRenders

logger = logging.getLogger(__name__)


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
    probe, vocab, targets = _probe_judge(params, data) if params.judge == "probe" else (None,) * 3
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
    fid_clip = _fid_clip_metrics(params) if params.judge == "fid_clip" else None
    grid_size = min(params.grid_images, len(data.image_ids))
    grid_parts: list[tuple[str, int, torch.Tensor]] = []
    original_features: list[torch.Tensor] = []
    # one reconstruction after the other, each scored before the next one's scores start
    # (they share FID's state), in the same order on every rank (scoring gathers across ranks)
    for k, (name, batches) in enumerate(_by_reconstruction(renders)):
        scores = _Scores(params.judge, probe, fid_clip, have_refs)
        for _, start, originals, images in batches:
            if k == 0:  # the originals' statistics, once
                if probe is not None:
                    original_features.append(_probe_reading(probe, originals)[1])
                if fid_clip is not None:
                    fid_clip[0].update(((originals + 1) / 2).to(fid_clip[0].device), real=True)
            scores.add(originals, images, data.references[start : start + len(images)])
            if start < grid_size:
                if k == 0:
                    grid_parts.append(("original", start, originals[: grid_size - start]))
                if name in ("from_embeddings", "from_caption"):
                    grid_parts.append((name, start, images[: grid_size - start]))
        if k == 0 and probe is not None:  # every rank's originals, before the first score
            original_features = gather_lists([f.cpu() for f in original_features])
        result, exact = scores.result(original_features, targets)
        metrics.setdefault("reconstruction", {})[name] = {"what": RECONSTRUCTIONS[name], **result}
        if exact is not None:
            samples[f"{name}_exact"] = exact
    grid = _grid(gather_lists(grid_parts))
    for name, entry in metrics["captions"].items():
        logger.info(
            "evaluate: %s captions %s",
            name,
            {k: round(v, 4) for k, v in entry.items() if isinstance(v, float)},
        )
    return metrics, samples, grid


def _probe_judge(params: EvaluateParams, data: EvalData):
    """``(probe, its vocabulary, the references' scene targets)`` of judge ``probe``."""
    from vlv_pipeline.models.probe import AttributeProbe, caption_targets
    from vlv_pipeline.world.scene import Vocabulary

    if not params.probe:
        raise ParameterError("evaluate.judge is probe but evaluate.probe names no probe directory")
    probe = AttributeProbe.from_pretrained(params.probe).eval()
    cfg = probe.config
    vocab = Vocabulary(tuple(cfg.shapes), tuple(cfg.colours), tuple(cfg.sizes))
    return probe, vocab, caption_targets(data.references, probe)


def _by_reconstruction(renders: EvalRenders | HeldRenders) -> Iterator[tuple[str, Iterator]]:
    """``(name, this rank's batches of it)`` for every reconstruction of ``renders.names()``,
    in that order, also those of which this rank rendered nothing (no batches). Each name's
    batches are to be read before the next name is asked for."""
    groups = groupby(renders, key=lambda batch: batch[0])
    group = next(groups, None)
    for name in renders.names():
        if group is not None and group[0] == name:
            yield group
            group = next(groups, None)
        else:
            yield name, iter(())


def _grid(parts: list[tuple[str, int, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The grid's images from ``(row, start, images)`` pieces: each row in the split's order."""
    grid = {}
    for row in ("original", "from_embeddings", "from_caption"):
        pieces = sorted((p for p in parts if p[0] == row), key=lambda p: p[1])
        if pieces:
            grid[row] = torch.cat([images for _, _, images in pieces])
    return grid
