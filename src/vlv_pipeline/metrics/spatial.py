"""Where objects land: spatial fidelity and composition, read from (B, 9, 3) scenes.

Scenes use the layout of ``metrics.scenes``: per cell of the 3 x 3 grid, the shape index
(0 = empty, else 1 + shape id), colour id and size id. An object is identified by its shape
and colour (sizes are ignored here: the question is where things go, not how big they are).
"""

from __future__ import annotations

import torch

GRID = 3


def _objects(scene: torch.Tensor) -> list[tuple[int, int, int]]:
    """(cell, shape, colour) of each object of one (9, 3) scene."""
    return [
        (c, int(scene[c, 0]), int(scene[c, 1])) for c in range(scene.shape[0]) if scene[c, 0] > 0
    ]


def chebyshev(a: int, b: int) -> int:
    """Distance between two cells of the grid in king moves."""
    return max(abs(a // GRID - b // GRID), abs(a % GRID - b % GRID))


def spatial_fidelity(predicted: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    """For each true object, the rendered objects of the same shape and colour (as the probe
    reads them): found in its own cell, found only elsewhere (at the nearest such cell's
    Chebyshev distance), or not found. Several true objects may share one rendered object.

    Returns the shares of true objects ``exact_cell``, ``elsewhere`` and ``not_found`` (they
    sum to 1), ``mean_distance_elsewhere`` (cells; NaN when none is elsewhere) and
    ``objects``, the number of true objects.
    """
    if predicted.shape != target.shape or predicted.shape[-2:] != (GRID * GRID, 3):
        raise ValueError(f"expected two (B, 9, 3) tensors, got {tuple(predicted.shape)}")
    exact = elsewhere = missing = 0
    distances: list[int] = []
    for rendered, truth in zip(predicted, target, strict=True):
        seen = _objects(rendered)
        for cell, shape, colour in _objects(truth):
            cells = [c for c, s, k in seen if (s, k) == (shape, colour)]
            if cell in cells:
                exact += 1
            elif cells:
                elsewhere += 1
                distances.append(min(chebyshev(cell, c) for c in cells))
            else:
                missing += 1
    total = exact + elsewhere + missing
    if total == 0:
        raise ValueError("the target scenes hold no objects")
    return {
        "exact_cell": exact / total,
        "elsewhere": elsewhere / total,
        "not_found": missing / total,
        "mean_distance_elsewhere": sum(distances) / len(distances) if distances else float("nan"),
        "objects": total,
    }


def composition(
    predicted: torch.Tensor, scene_a: torch.Tensor, scene_b: torch.Tensor
) -> dict[str, float]:
    """Renders meant to combine scene A and scene B: an object is reproduced when the render
    has one of the same shape and colour in the same cell.

    Returns ``both`` (share of renders with at least one of A's objects and one of B's),
    ``from_a`` and ``from_b`` (shares of A's and of B's objects reproduced), ``from_neither``
    (share of the rendered objects that are in neither scene, in that cell) and ``renders``.
    """
    both = 0
    reproduced = {"a": 0, "b": 0}
    totals = {"a": 0, "b": 0}
    neither = rendered_total = 0
    for render, a, b in zip(predicted, scene_a, scene_b, strict=True):
        seen = set(_objects(render))
        hits = {}
        for name, scene in (("a", a), ("b", b)):
            objects = set(_objects(scene))
            totals[name] += len(objects)
            hits[name] = len(objects & seen)
            reproduced[name] += hits[name]
        both += hits["a"] > 0 and hits["b"] > 0
        sources = set(_objects(a)) | set(_objects(b))
        neither += len(seen - sources)
        rendered_total += len(seen)
    return {
        "both": both / max(1, len(predicted)),
        "from_a": reproduced["a"] / max(1, totals["a"]),
        "from_b": reproduced["b"] / max(1, totals["b"]),
        "from_neither": neither / max(1, rendered_total),
        "renders": len(predicted),
    }


def disjoint_pairs(scenes: torch.Tensor, count: int, seed: int) -> list[tuple[int, int]]:
    """Up to ``count`` pairs (i, j) of scenes whose objects occupy different cells, drawn
    with ``seed``: each scene is A at most once."""
    g = torch.Generator().manual_seed(seed)
    occupied = scenes[..., 0] > 0
    order = torch.randperm(len(scenes), generator=g).tolist()
    pairs = []
    for i in order:
        partners = [j for j in order if j != i and not (occupied[i] & occupied[j]).any()]
        if partners:
            pairs.append((i, partners[int(torch.randint(len(partners), (1,), generator=g))]))
        if len(pairs) == count:
            break
    return pairs
