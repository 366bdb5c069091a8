"""The rubric's exact scorer of the shapes world: hand-made captions for every level, the
counts behind them, and the statistics of a column of ratings."""

import pytest

from vlv_pipeline.metrics.rubric import (
    RUBRIC_LEVELS,
    level_of,
    mean_interval,
    rubric_hash,
    rubric_score,
    rubric_text,
    true_scene,
)
from vlv_pipeline.world.scene import CaptionParser, Vocabulary

VOCAB = Vocabulary(
    ("circle", "square", "triangle"), ("red", "green", "blue", "yellow"), ("small", "large")
)
PARSER = CaptionParser(VOCAB)
TWO = "a small red circle at the top left and a large blue square in the centre"
ONE = "a large green triangle at the bottom right"


def score(caption: str, reference: str = TWO):
    return rubric_score(caption, true_scene(reference, PARSER), PARSER)


@pytest.mark.parametrize(
    "caption, level, counts",
    [
        # 6: both objects, exact (order and punctuation do not matter)
        (
            "a large blue square in the centre, and a small red circle at the top left.",
            6,
            dict(right=2),
        ),
        # 5: one wrong attribute (the circle's colour)
        (
            "a small green circle at the top left and a large blue square in the centre",
            5,
            dict(right=1, attribute_objects=1, wrong_attributes=1),
        ),
        # 5: one object in the wrong cell
        (
            "a small red circle at the top and a large blue square in the centre",
            5,
            dict(right=1, misplaced=1),
        ),
        # 5: everything right, plus one fragment the world cannot read
        (TWO + " and a dog", 5, dict(right=2, unreadable=1)),
        # 4: two slips (the circle's colour and size)
        (
            "a large green circle at the top left and a large blue square in the centre",
            4,
            dict(right=1, attribute_objects=1, wrong_attributes=2),
        ),
        # 4: both objects misplaced
        (
            "a small red circle at the top right and a large blue square at the bottom",
            4,
            dict(misplaced=2),
        ),
        # 3: one object missed, the other exact
        ("a small red circle at the top left", 3, dict(right=1)),
        # 3: one object invented beside an exact scene, one slip
        (
            TWO.replace("small red", "large red") + " and a small yellow triangle on the left",
            3,
            dict(right=1, attribute_objects=1, wrong_attributes=1, hallucinated=1),
        ),
        # 2: one missed and two slips on the other
        ("a large green circle at the top left", 2, dict(attribute_objects=1, wrong_attributes=2)),
        # 2: both named, two invented
        (
            TWO + " and a small red square at the bottom left and a small red circle on the right",
            2,
            dict(right=2, hallucinated=2),
        ),
        # 1: one of two named, one missed and one invented (more wrong than right)
        (
            "a small red circle at the top left and a small yellow triangle on the left",
            1,
            dict(right=1, hallucinated=1),
        ),
        # 0: another object in the square's cell (another shape is not the same object)
        ("a large blue circle in the centre", 0, dict(hallucinated=1)),
        # 0: nothing readable, or nothing at all
        ("a photograph of a cat", 0, dict(unreadable=1)),
        ("", 0, dict()),
    ],
)
def test_every_level_from_hand_made_captions(caption, level, counts):
    reading = score(caption)
    assert reading.level == level, reading.explain()
    expected = dict(
        right=0, misplaced=0, attribute_objects=0, wrong_attributes=0, hallucinated=0, unreadable=0
    )
    expected.update(counts)
    assert {k: getattr(reading, k) for k in expected} == expected


def test_a_one_object_scene_and_a_misplaced_object_is_paired_with_the_nearest():
    assert score(ONE, ONE).level == 6
    assert score("a large green triangle at the top left", ONE).level == 5
    # two triangles said, one true: the nearer one (bottom) is the misplaced object, the
    # other is invented
    reading = score(
        "a large green triangle at the bottom and a large green triangle at the top left", ONE
    )
    assert (reading.misplaced, reading.hallucinated, reading.level) == (1, 1, 3)


def test_the_reference_is_exact_and_a_mention_twice_is_a_hallucination():
    assert score(TWO).level == 6
    reading = score(TWO + " and a small red circle at the top left")
    assert (reading.right, reading.hallucinated, reading.level) == (2, 1, 3)


def test_the_explanation_ends_with_the_judge_answer_format():
    text = score("a small red circle at the top left").explain()
    assert text.splitlines()[-1] == "Score: 3"
    assert "1 missed" in text


def test_level_rule_table():
    assert level_of(covered=0, major=0, minor=0) == 0
    assert [level_of(2, 0, m) for m in (0, 1, 2, 5)] == [6, 5, 4, 4]
    assert [level_of(1, 1, m) for m in (0, 1, 2)] == [3, 3, 2]
    assert level_of(2, 2, 0) == 2 and level_of(1, 2, 0) == 1


def test_a_reference_outside_the_world_has_no_true_scene():
    assert true_scene("a photo of a dog", PARSER) is None
    assert true_scene("", PARSER) is None
    assert [o.shape for o in true_scene(TWO, PARSER)] == ["circle", "square"]


def test_the_rubric_text_has_every_level_and_a_stable_hash():
    text = rubric_text()
    assert [line.split(" - ")[0] for line in text.splitlines()[2:]] == [
        "6",
        "5",
        "4",
        "3",
        "2",
        "1",
        "0",
    ]
    assert sorted(RUBRIC_LEVELS) == list(range(7))
    assert rubric_hash() == rubric_hash() and len(rubric_hash()) == 12


def test_t_interval_by_hand():
    # mean 4, s = sqrt(4/3) (n = 4): t(0.975, 3) = 3.182446 -> half-width
    # 3.182446 * sqrt(4/3) / 2 = 1.837385
    mean, (low, high) = mean_interval([3, 5, 3, 5], "t")
    assert mean == 4
    assert low == pytest.approx(4 - 1.837385, abs=1e-5)
    assert high == pytest.approx(4 + 1.837385, abs=1e-5)


def test_intervals_are_clipped_to_the_scale_and_degenerate_cases():
    assert mean_interval([6, 6, 6]) == (6.0, (6.0, 6.0))
    _, (low, high) = mean_interval([0, 6], "t")
    assert (low, high) == (0.0, 6.0)
    assert mean_interval([]) == (None, None)
    assert mean_interval([4]) == (4.0, None)


def test_the_bootstrap_is_seeded():
    scores = [0, 1, 2, 3, 4, 5, 6, 6, 5, 4]
    one = mean_interval(scores, "bootstrap", seed=3, samples=2000)
    assert one == mean_interval(scores, "bootstrap", seed=3, samples=2000)
    assert one != mean_interval(scores, "bootstrap", seed=4, samples=2000)
    mean, (low, high) = one
    assert low < mean < high
    t_mean, (t_low, t_high) = mean_interval(scores, "t")
    assert abs(low - t_low) < 0.5 and abs(high - t_high) < 0.5
