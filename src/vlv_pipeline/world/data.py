"""The shapes world as tensors: images, captions and per-cell targets of each split."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from vlv_pipeline.errors import MissingEntryError
from vlv_pipeline.world.scene import N_CELLS


@dataclass
class SplitTensors:
    """One split: images in [-1, 1] (N, 3, S, S), captions, (N, 9, 3) targets, image ids."""

    images: torch.Tensor
    captions: list[str]
    targets: torch.Tensor
    image_ids: list[str]

    def __len__(self) -> int:
        return len(self.image_ids)

    def head(self, n: int) -> SplitTensors:
        return SplitTensors(
            self.images[:n], self.captions[:n], self.targets[:n], self.image_ids[:n]
        )


def pil_to_tensor(image) -> torch.Tensor:
    """An RGB PIL image as a (3, H, W) float tensor in [-1, 1]."""
    array = np.asarray(image.convert("RGB"), dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def to_unit_range(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 pixels -> float32 in [-1, 1], the values ``pil_to_tensor`` gives; floats pass."""
    if pixels.dtype == torch.uint8:
        return pixels.float() / 127.5 - 1.0
    return pixels


def tensor_to_uint8(images: torch.Tensor) -> np.ndarray:
    """(B, 3, H, W) in [-1, 1] -> (B, H, W, 3) uint8."""
    return ((images.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()


def scene_targets(objects, shapes, colours, sizes) -> torch.Tensor:
    """A labels row's objects as the (9, 3) target layout of metrics.scenes."""
    target = torch.zeros(N_CELLS, 3, dtype=torch.long)
    for o in objects:
        target[int(o["cell"])] = torch.tensor(
            [
                1 + list(shapes).index(o["shape"]),
                list(colours).index(o["colour"]),
                list(sizes).index(o["size"]),
            ]
        )
    return target


def load_world_tensors(
    source, manifest: pd.DataFrame, labels: pd.DataFrame, shapes, colours, sizes
) -> dict[str, SplitTensors]:
    """Every manifest image of the shapes world with its caption and targets, per split.

    Images come through ingest's normaliser (``iter_images``), joined to the world's labels
    by file name, in manifest order.
    """
    from vlv_pipeline.imaging.sources import iter_images

    by_file = labels.set_index("file")
    ref_of = dict(zip(manifest["image_id"], manifest["source"], strict=True))
    split_of = dict(zip(manifest["image_id"], manifest["split"], strict=True))
    buckets: dict[str, dict[str, list]] = {}
    for image_id, image in iter_images(source, manifest, None):
        ref = ref_of[image_id]
        if ref not in by_file.index:
            raise MissingEntryError(
                f"image {ref!r} of the manifest has no row in the world's labels table: "
                "rerun `kedro run --pipeline world` then `--pipeline ingest`"
            )
        row = by_file.loc[ref]
        bucket = buckets.setdefault(
            split_of[image_id], {"images": [], "captions": [], "targets": [], "ids": []}
        )
        bucket["images"].append(pil_to_tensor(image))
        bucket["captions"].append(row["caption"])
        bucket["targets"].append(scene_targets(row["objects"], shapes, colours, sizes))
        bucket["ids"].append(image_id)
    out = {}
    for split, b in buckets.items():
        # Canonical order (by file name), whatever order the source was read in.
        order = sorted(range(len(b["ids"])), key=lambda i: ref_of[b["ids"][i]])
        out[split] = SplitTensors(
            torch.stack([b["images"][i] for i in order]),
            [b["captions"][i] for i in order],
            torch.stack([b["targets"][i] for i in order]),
            [b["ids"][i] for i in order],
        )
    return out
