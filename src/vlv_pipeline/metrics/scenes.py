"""Scene agreement metrics of the shapes world.

Scenes are compared as (B, 9, 3) long tensors: per grid cell the shape index
(0 = empty, else 1 + shape id), colour id and size id (colour/size ignored for empty
cells). The same layout serves the probe's predictions and parsed captions.
"""

from __future__ import annotations

import torch


def scene_agreement(predicted: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    """Exact-scene match and per-attribute accuracy of ``predicted`` against ``target``.

    Per-attribute accuracies are over the target's objects: ``position`` (something is
    predicted in that cell), ``shape``, ``colour``, ``size`` (right value in that cell);
    ``attributes`` is the mean of the four. ``count`` compares the number of objects;
    ``false_objects`` is the share of predicted objects in cells the target left empty.
    """
    if predicted.shape != target.shape or predicted.shape[-2:] != (9, 3):
        raise ValueError(
            f"expected two (B, 9, 3) tensors, got {tuple(predicted.shape)} and {tuple(target.shape)}"
        )
    p_shape, t_shape = predicted[..., 0], target[..., 0]
    occupied = t_shape > 0
    same = predicted == target
    cell_ok = same[..., 0] & (~occupied | (same[..., 1] & same[..., 2]))
    n_true = occupied.sum().clamp(min=1).item()
    predicted_objects = (p_shape > 0).sum().clamp(min=1).item()
    result = {
        "exact_scene": cell_ok.all(dim=-1).float().mean().item(),
        "position": ((p_shape > 0) & occupied).sum().item() / n_true,
        "shape": (same[..., 0] & occupied).sum().item() / n_true,
        "colour": ((p_shape > 0) & same[..., 1] & occupied).sum().item() / n_true,
        "size": ((p_shape > 0) & same[..., 2] & occupied).sum().item() / n_true,
        "count": ((p_shape > 0).sum(-1) == occupied.sum(-1)).float().mean().item(),
        "false_objects": ((p_shape > 0) & ~occupied).sum().item() / predicted_objects,
    }
    result["attributes"] = (
        result["position"] + result["shape"] + result["colour"] + result["size"]
    ) / 4
    return result
