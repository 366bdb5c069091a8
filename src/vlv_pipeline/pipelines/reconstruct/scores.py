"""The `reconstruct` pipeline's scores, read back from the ``reconstructions`` folder: one row
per input (``reconstruct_table``: verdict, caption, seed, files, per-image MSE/PSNR) and the
metrics, with the judge's distance between the originals and each render set where enough
images were reconstructed (``fid_needed``)."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import numpy as np
import pandas as pd
import torch

from vlv_pipeline.models.device import inference_device
from vlv_pipeline.models.seeds import image_seed
from vlv_pipeline.params.reconstruct import ReconstructParams
from vlv_pipeline.params.t2i import T2IParams
from vlv_pipeline.pipelines.reconstruct.nodes import (
    PANELS,
    UserCaptions,
    _inception_fid,
    fid_needed,
    kept_rows,
    render_name,
)
from vlv_pipeline.world.data import pil_to_tensor

logger = logging.getLogger(__name__)

# the renders of each image, each scored against its original
RENDERED = ("from_embeddings", "from_caption")
# what each judge's distance is, as the metrics name it
DISTANCES = {
    "probe": "Frechet distance of the attribute probe's penultimate features (the FID "
    "formula; the shapes world's judge, not Inception)",
    "fid_clip": "FID: Frechet distance of Inception-v3 pool features (torchmetrics, 2048-d)",
}


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
    folder,
    captions: UserCaptions,
    screened: pd.DataFrame,
    params: ReconstructParams,
    t2i: T2IParams,
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
        "t2i": t2i.model,
        "render_t2i": params.render_t2i or t2i.model,
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
