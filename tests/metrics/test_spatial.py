"""Spatial fidelity and composition scores on hand-made scenes."""

import math

import pytest
import torch

from vlv_pipeline.metrics.spatial import chebyshev, composition, disjoint_pairs, spatial_fidelity


def scene(*objects) -> torch.Tensor:
    """(9, 3): objects as (cell, shape index >= 1, colour, size)."""
    out = torch.zeros(9, 3, dtype=torch.long)
    for cell, shape, colour, size in objects:
        out[cell] = torch.tensor([shape, colour, size])
    return out


def test_chebyshev_counts_king_moves_on_the_grid():
    assert chebyshev(0, 0) == 0 and chebyshev(0, 4) == 1 and chebyshev(0, 8) == 2
    assert chebyshev(2, 6) == 2 and chebyshev(3, 5) == 2


def test_each_true_object_is_found_in_place_elsewhere_or_not_at_all():
    truth = torch.stack([scene((0, 1, 2, 0), (4, 2, 1, 0)), scene((8, 3, 3, 1))])
    rendered = torch.stack(
        [
            scene((0, 1, 2, 1), (2, 2, 1, 0)),  # first in place (size ignored), second 2 cells off
            scene((8, 3, 4, 1)),  # right shape, wrong colour: not found
        ]
    )
    scores = spatial_fidelity(rendered, truth)
    assert scores["objects"] == 3
    assert scores["exact_cell"] == pytest.approx(1 / 3)
    assert scores["elsewhere"] == pytest.approx(1 / 3)
    assert scores["not_found"] == pytest.approx(1 / 3)
    assert scores["mean_distance_elsewhere"] == 1  # cell 4 to cell 2: one king move
    perfect = spatial_fidelity(truth, truth)
    assert perfect["exact_cell"] == 1 and math.isnan(perfect["mean_distance_elsewhere"])


def test_composition_counts_objects_from_each_source_and_from_neither():
    a = torch.stack([scene((0, 1, 1, 0)), scene((1, 2, 2, 0))])
    b = torch.stack([scene((8, 3, 3, 0)), scene((7, 1, 1, 0))])
    rendered = torch.stack(
        [
            scene((0, 1, 1, 0), (8, 3, 3, 1), (4, 2, 2, 0)),  # A's, B's and one from neither
            scene((1, 2, 2, 0)),  # only A's
        ]
    )
    scores = composition(rendered, a, b)
    assert scores["both"] == 0.5
    assert scores["from_a"] == 1.0 and scores["from_b"] == 0.5
    assert scores["from_neither"] == pytest.approx(1 / 4)


def test_disjoint_pairs_never_share_a_cell_and_are_seeded():
    scenes = torch.stack(
        [scene((0, 1, 1, 0)), scene((0, 2, 2, 0)), scene((4, 1, 1, 0)), scene((8, 3, 3, 0))]
    )
    pairs = disjoint_pairs(scenes, count=3, seed=0)
    assert len(pairs) == 3 and pairs == disjoint_pairs(scenes, count=3, seed=0)
    occupied = scenes[..., 0] > 0
    assert all(not (occupied[i] & occupied[j]).any() for i, j in pairs)
