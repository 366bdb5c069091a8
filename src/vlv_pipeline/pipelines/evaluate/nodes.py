"""Nodes of the `evaluate` pipeline: the test split captioned, re-rendered and scored."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from vlv_pipeline.metrics.captions import caption_scene_metrics
from vlv_pipeline.metrics.frechet import frechet_distance
from vlv_pipeline.metrics.plots import image_grid
from vlv_pipeline.metrics.scenes import scene_agreement
from vlv_pipeline.metrics.text import caption_text_metrics
from vlv_pipeline.models.device import inference_device
from vlv_pipeline.models.t2i import FrozenT2I
from vlv_pipeline.models.teacher import render
from vlv_pipeline.params.evaluate import EvaluateParams
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
    """The evaluation split's ids and reference captions (in memory) and a per-item reader
    of its images (uint8): no stage of evaluate holds the split's pixels."""

    image_ids: list[str]
    pixels: ImagePixels
    references: list[str | None]

    def images(self, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """Images ``start:stop`` in [-1, 1]."""
        stop = len(self.image_ids) if stop is None else min(stop, len(self.image_ids))
        return torch.stack([to_unit_range(self.pixels[i]) for i in range(start, stop)])


def load_eval_data(raw_images, image_manifest: pd.DataFrame, params: EvaluateParams) -> EvalData:
    rows = image_manifest[image_manifest["split"] == params.split].sort_values("image_id")
    if len(rows) < 2:
        raise ValueError(
            f"evaluate.split {params.split!r} has {len(rows)} images in the manifest; need >= 2"
        )
    rows = rows.head(params.images)
    return EvalData(
        rows["image_id"].astype(str).tolist(),
        ImagePixels.of_manifest(raw_images, rows, params.resolution),
        [None if pd.isna(c) else str(c) for c in rows["caption"]],
    )


def _chance_order(n: int, seed: int) -> list[int]:
    """A derangement: every image gets another image's caption."""
    g = torch.Generator().manual_seed(seed)
    return ((torch.randperm(n - 1, generator=g)[:1] + 1 + torch.arange(n)) % n).tolist()


def caption_eval_images(
    vlv_captioner, baseline_captioner, data: EvalData, params: EvaluateParams
) -> pd.DataFrame:
    """The test images captioned by the VLV captioner and the "without stage 1" baseline,
    one batch of images at a time; ``chance`` is another test image's reference caption."""
    batch = params.sampling.batch_size
    vlv_captioner, baseline_captioner = (
        vlv_captioner.to(inference_device()),
        baseline_captioner.to(inference_device()),
    )
    table = pd.DataFrame({"image_id": data.image_ids, "reference": data.references})
    vlv, baseline = [], []
    for start in range(0, len(data.image_ids), batch):
        pixels = data.images(start, start + batch)
        vlv += vlv_captioner.caption(pixels, batch_size=batch)
        baseline += baseline_captioner.caption(pixels, batch_size=batch)
    table["vlv"], table["without_stage1"] = vlv, baseline
    if all(r is not None for r in data.references):
        order = _chance_order(len(table), params.chance_seed)
        table["chance"] = [data.references[i] for i in order]
    return table


class EvalRenders:
    """The reconstructions, rendered when iterated, one batch at a time: iterating yields
    ``(name, start, originals, renders)`` for each reconstruction (see ``RECONSTRUCTIONS``)
    and each batch of ``sampling.batch_size`` images, name by name. Each reconstruction
    draws from one generator seeded with ``sampling.seed``, batches in order: exactly the
    images that rendering the whole split in one ``render`` call (with the same batch size)
    gives."""

    def __init__(self, vlv_encoder, data: EvalData, captions: pd.DataFrame, params):
        self.vlv_encoder, self.data, self.captions, self.params = (
            vlv_encoder,
            data,
            captions,
            params,
        )

    def names(self) -> list[str]:
        texts = self._texts()
        return ["from_embeddings", *(n for n, column in texts.items() if column is not None)]

    def _texts(self) -> dict[str, pd.Series | None]:
        captions = self.captions
        texts = {
            "from_caption": captions["vlv"],
            "without_stage1": captions["without_stage1"],
            "ground_truth_caption": captions["reference"],
            "chance": captions.get("chance"),
        }
        return {n: (c if c is not None and not c.isna().any() else None) for n, c in texts.items()}

    @torch.no_grad()
    def __iter__(self) -> Iterator[tuple[str, int, torch.Tensor, torch.Tensor]]:
        from diffusers import DiffusionPipeline

        s, params, data = self.params.sampling, self.params, self.data
        kwargs = dict(steps=s.steps, guidance=s.guidance, batch_size=s.batch_size)
        device = inference_device()
        t2i = FrozenT2I.load(params.stage1_t2i, params.t2i_dtype, device)
        total = len(data.image_ids)
        generator = torch.Generator().manual_seed(s.seed)
        for start in range(0, total, s.batch_size):
            originals = data.images(start, start + s.batch_size)
            conditions = t2i.condition_images(self.vlv_encoder, originals, s.batch_size)
            images = t2i.render(conditions, scheduler=s.scheduler, generator=generator, **kwargs)
            yield "from_embeddings", start, originals, images
        scheduler = s.scheduler
        if params.render_t2i == params.stage1_t2i:
            pipeline = t2i.pipeline()
        else:  # another model (e.g. SD 3.5 Medium) samples with its own scheduler
            dtype = getattr(torch, params.t2i_dtype)
            pipeline = DiffusionPipeline.from_pretrained(params.render_t2i, torch_dtype=dtype)
            pipeline.to(device)
            scheduler = None
        for name, column in self._texts().items():
            if column is None:
                continue
            generator = torch.Generator().manual_seed(s.seed)
            for start in range(0, total, s.batch_size):
                texts = column.iloc[start : start + s.batch_size].tolist()
                images = render(
                    pipeline, captions=texts, scheduler=scheduler, generator=generator, **kwargs
                )
                yield name, start, data.images(start, start + len(texts)), images


class HeldRenders:
    """Reconstructions already in memory (``{name: images}``), iterated like ``EvalRenders``
    (for tests and notebooks)."""

    def __init__(self, data: EvalData, renders: dict[str, torch.Tensor], batch_size: int):
        self.data, self.renders, self.batch_size = data, renders, batch_size

    def __iter__(self):
        for name, images in self.renders.items():
            for start in range(0, len(images), self.batch_size):
                stop = start + self.batch_size
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
        raise RuntimeError(
            "judge fid_clip needs torchmetrics with torch-fidelity (pip install "
            "'torchmetrics[image]' torch-fidelity), the Inception weights torch-fidelity "
            "downloads (pt_inception-2015-12-05-6726825d.pth into the torch hub cache) and the "
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
        if self.judge == "probe":
            return _probe_scores(self.probe, original_features, self.readings, targets)
        if self.judge == "pixels":
            return pixel_scores(self.squared / self.values), None
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
    (probe readings, Inception statistics, error sums) and the grid's few images are kept."""
    samples = captions.copy()
    metrics: dict = {"images": len(data.image_ids), "judge": params.judge, "captions": {}}
    have_refs = all(r is not None for r in data.references)
    vocab = probe = targets = None
    if params.judge == "probe":
        from vlv_pipeline.models.probe import AttributeProbe
        from vlv_pipeline.pipelines.stage1.nodes import caption_targets
        from vlv_pipeline.world.scene import Vocabulary

        if not params.probe:
            raise ValueError("evaluate.judge is probe but evaluate.probe names no probe directory")
        probe = AttributeProbe.from_pretrained(params.probe).eval()
        cfg = probe.config
        vocab = Vocabulary(tuple(cfg.shapes), tuple(cfg.colours), tuple(cfg.sizes))
        targets = caption_targets(data.references, probe)
    for name in CAPTIONERS:
        if name not in captions or not have_refs:
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
    grid: dict[str, torch.Tensor] = {}
    original_features: list[torch.Tensor] = []
    scores: dict[str, _Scores] = {}
    first = None
    for name, start, originals, images in renders:
        first = first or name
        if name not in scores:
            if scores:  # the previous reconstruction is complete
                _finish(metrics, samples, scores, original_features, targets)
            scores[name] = _Scores(params.judge, probe, fid_clip, have_refs)
        if name == first:  # the originals' statistics, once
            if probe is not None:
                original_features.append(_probe_reading(probe, originals)[1])
            if fid_clip is not None:
                fid_clip[0].update(((originals + 1) / 2).to(fid_clip[0].device), real=True)
        references = data.references[start : start + len(images)]
        scores[name].add(originals, images, references)
        if start == 0:
            grid.setdefault("original", originals[:grid_size])
            if name in ("from_embeddings", "from_caption"):
                grid[name] = images[:grid_size]
    if scores:
        _finish(metrics, samples, scores, original_features, targets)
    for name, entry in metrics["captions"].items():
        logger.info(
            "evaluate: %s captions %s",
            name,
            {k: round(v, 4) for k, v in entry.items() if isinstance(v, float)},
        )
    return metrics, samples, grid


def _finish(metrics, samples, scores: dict[str, _Scores], original_features, targets) -> None:
    """Score the last reconstruction in ``scores`` into ``metrics`` (and ``samples``)."""
    name = next(reversed(scores))
    result, exact = scores[name].result(original_features, targets)
    metrics.setdefault("reconstruction", {})[name] = {"what": RECONSTRUCTIONS[name], **result}
    if exact is not None:
        samples[f"{name}_exact"] = exact


def plot_eval_grid(grid: dict[str, torch.Tensor], captions: pd.DataFrame, params: EvaluateParams):
    """original | reconstruction from embeddings | reconstruction from the caption.

    Returned twice: once for the versioned PNG, once in memory for the report (a saved
    matplotlib figure cannot be loaded back).
    """
    labels = {"original": "original", "from_embeddings": "from embeddings"}
    labels["from_caption"] = "from caption"
    items = {labels[k]: tensor_to_uint8(v) for k, v in grid.items() if k in labels}
    n = len(grid["original"])
    texts = [f"{c}" for c in captions["vlv"].head(n)]
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
) -> str:
    """The HTML report: tables with the baselines beside the model, grid, loss curves, params."""
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
    return build_report(metrics, figure_png(grid), losses, parameters, notes)


def plot_report_preview(metrics: dict, grid):
    """The report's tables and grid as one PNG (a picture of the report)."""
    from vlv_pipeline.metrics.report import report_figure

    return report_figure(metrics, grid)
