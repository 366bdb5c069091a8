"""Nodes of the `evaluate` pipeline: the test split captioned, re-rendered and scored."""

from __future__ import annotations

import logging
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
from vlv_pipeline.pipelines.stage1.nodes import load_image_pixels
from vlv_pipeline.world.data import tensor_to_uint8

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
    image_ids: list[str]
    pixels: torch.Tensor
    references: list[str | None]


def load_eval_data(raw_images, image_manifest: pd.DataFrame, params: EvaluateParams) -> EvalData:
    rows = image_manifest[image_manifest["split"] == params.split].sort_values("image_id")
    if len(rows) < 2:
        raise ValueError(
            f"evaluate.split {params.split!r} has {len(rows)} images in the manifest; need >= 2"
        )
    rows = rows.head(params.images)
    pixels = load_image_pixels(raw_images, rows, params.resolution)
    ids = rows["image_id"].tolist()
    return EvalData(
        ids,
        torch.stack([pixels[i] for i in ids]),
        [None if pd.isna(c) else str(c) for c in rows["caption"]],
    )


def _chance_order(n: int, seed: int) -> list[int]:
    """A derangement: every image gets another image's caption."""
    g = torch.Generator().manual_seed(seed)
    return ((torch.randperm(n - 1, generator=g)[:1] + 1 + torch.arange(n)) % n).tolist()


def caption_eval_images(
    vlv_captioner, baseline_captioner, data: EvalData, params: EvaluateParams
) -> pd.DataFrame:
    """The test images captioned by the VLV captioner and the "without stage 1" baseline;
    ``chance`` is another test image's reference caption."""
    batch = params.sampling.batch_size
    vlv_captioner, baseline_captioner = (
        vlv_captioner.to(inference_device()),
        baseline_captioner.to(inference_device()),
    )
    table = pd.DataFrame({"image_id": data.image_ids, "reference": data.references})
    table["vlv"] = vlv_captioner.caption(data.pixels, batch_size=batch)
    table["without_stage1"] = baseline_captioner.caption(data.pixels, batch_size=batch)
    if all(r is not None for r in data.references):
        order = _chance_order(len(table), params.chance_seed)
        table["chance"] = [data.references[i] for i in order]
    return table


@torch.no_grad()
def reconstruct(
    vlv_encoder, data: EvalData, captions: pd.DataFrame, params: EvaluateParams
) -> dict[str, torch.Tensor]:
    """Images in [-1, 1] per reconstruction (see ``RECONSTRUCTIONS``)."""
    from diffusers import DiffusionPipeline

    s = params.sampling
    kwargs = dict(steps=s.steps, guidance=s.guidance, seed=s.seed, batch_size=s.batch_size)
    device = inference_device()
    t2i = FrozenT2I.load(params.stage1_t2i, params.t2i_dtype, device)
    conditions = t2i.condition_images(vlv_encoder, data.pixels, s.batch_size)
    out = {"from_embeddings": t2i.render(conditions, scheduler=s.scheduler, **kwargs)}
    scheduler = s.scheduler
    if params.render_t2i == params.stage1_t2i:
        pipeline = t2i.pipeline()
    else:  # another model (e.g. SD 3.5 Medium) samples with its own scheduler
        dtype = getattr(torch, params.t2i_dtype)
        pipeline = DiffusionPipeline.from_pretrained(params.render_t2i, torch_dtype=dtype)
        pipeline.to(device)
        scheduler = None
    texts = {
        "from_caption": captions["vlv"],
        "without_stage1": captions["without_stage1"],
        "ground_truth_caption": captions["reference"],
        "chance": captions.get("chance"),
    }
    for name, column in texts.items():
        if column is None or column.isna().any():
            continue
        out[name] = render(pipeline, captions=column.tolist(), scheduler=scheduler, **kwargs)
    return out


def _probe_scores(probe, originals, images, targets) -> tuple[dict, np.ndarray]:
    size = probe.config.image_size
    resize = (
        (lambda x: x)
        if images.shape[-1] == size
        else (lambda x: F.interpolate(x, size=(size, size), mode="bilinear", antialias=True))
    )
    predicted = probe.predict(resize(images))
    scores = scene_agreement(predicted, targets)
    scores["frechet_probe"] = frechet_distance(
        probe.embedding(resize(originals)), probe.embedding(resize(images))
    )
    exact = predicted == targets
    occupied = targets[..., 0] > 0
    cell_ok = exact[..., 0] & (~occupied | (exact[..., 1] & exact[..., 2]))
    return scores, cell_ok.all(-1).numpy()


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


def _fid_clip(metrics, originals, images, captions, first: bool) -> dict:
    fid, clip = metrics
    device = fid.device
    if first:  # the originals' Inception statistics are kept across reconstructions
        fid.update(((originals + 1) / 2).to(device), real=True)
    fid.reset()  # clears the fake features only (reset_real_features=False)
    fid.update(((images + 1) / 2).to(device), real=False)
    result = {"fid": float(fid.compute())}
    if all(c is not None for c in captions):
        pixels = ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).to(device)
        clip.reset()
        result["clip_score"] = float(clip(pixels, list(captions)))
    return result


def pixel_scores(originals: torch.Tensor, images: torch.Tensor) -> dict:
    """Mean squared error (images in [-1, 1]) and PSNR against the originals: a judge that
    needs no weights (the rehearsal environment's), not a measure of caption quality."""
    mse = float(((images.clamp(-1, 1) - originals) ** 2).mean())
    return {"mse": mse, "psnr": float(10 * torch.log10(torch.tensor(4.0 / max(mse, 1e-12))))}


@torch.no_grad()
def score_evaluation(
    data: EvalData, captions: pd.DataFrame, renders: dict[str, torch.Tensor], params: EvaluateParams
) -> tuple[dict, pd.DataFrame]:
    """Metrics (json) and sample-level results (parquet) for the model and every baseline."""
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
    metrics["reconstruction"] = {}
    fid_clip = _fid_clip_metrics(params) if params.judge == "fid_clip" else None
    for index, (name, images) in enumerate(renders.items()):
        entry: dict = {"what": RECONSTRUCTIONS[name]}
        if probe is not None:
            scores, exact = _probe_scores(probe, data.pixels, images, targets)
            entry.update(scores)
            samples[f"{name}_exact"] = exact
        elif params.judge == "pixels":
            entry.update(pixel_scores(data.pixels, images))
        else:  # FID against the originals; CLIP score against the reference captions
            entry.update(_fid_clip(fid_clip, data.pixels, images, data.references, index == 0))
        metrics["reconstruction"][name] = entry
    for name, entry in metrics["captions"].items():
        logger.info(
            "evaluate: %s captions %s",
            name,
            {k: round(v, 4) for k, v in entry.items() if isinstance(v, float)},
        )
    return metrics, samples


def plot_eval_grid(data: EvalData, captions: pd.DataFrame, renders: dict, params: EvaluateParams):
    """original | reconstruction from embeddings | reconstruction from the caption.

    Returned twice: once for the versioned PNG, once in memory for the report (a saved
    matplotlib figure cannot be loaded back).
    """
    n = min(params.grid_images, len(data.image_ids))
    items = {"original": tensor_to_uint8(data.pixels[:n])}
    for name, label in (("from_embeddings", "from embeddings"), ("from_caption", "from caption")):
        if name in renders:
            items[label] = tensor_to_uint8(renders[name][:n])
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
