"""The standard VQA accuracy against cases worked out by hand from the official definition
(visualqa.org/evaluation.html): answers normalised (lower case, periods but decimals removed,
number words to digits, articles dropped, missing apostrophes of contractions restored,
punctuation but apostrophes and colons to spaces, a comma between digits removed), then
min(#matching annotators / 3, 1) averaged over the ten subsets that leave one annotator out."""

import math

import numpy as np
import pytest

from vlv_pipeline.metrics.vqa import (
    PAPER_TABLE3,
    bootstrap_interval,
    normalize_answer,
    strip_punctuation,
    vqa_accuracy,
)


@pytest.mark.parametrize(
    ("raw", "normal"),
    [
        ("Yes", "yes"),
        ("Two", "2"),  # number words to digits
        ("none", "0"),  # as the official map has it
        ("ten dogs", "10 dogs"),
        ("The Dog.", "dog"),  # articles dropped, the full stop removed
        ("an apple", "apple"),
        ("3.5", "3.5"),  # a decimal keeps its period
        ("dont", "don't"),  # a contraction gets its apostrophe back
        ("wouldnt've", "wouldn't've"),
        ("girl's", "girl's"),  # apostrophes stay: possessives are not plurals
        ("2:30 pm", "2:30 pm"),  # so do colons (times)
        ("100,978", "100978"),  # a comma between digits goes, without a space
        ("red, white", "red white"),  # punctuation next to a space goes
        ("red/white", "red white"),  # ... elsewhere it becomes a space
        ("t-shirt", "t shirt"),
        ("  sunny\tday\n", "sunny day"),
        ("well", "well"),  # a word, not a contraction missing its apostrophe
    ],
)
def test_normalisation_follows_the_official_steps(raw, normal):
    assert normalize_answer(raw) == normal


def test_ground_truth_gets_the_punctuation_step_only():
    assert strip_punctuation("t-shirt") == "t shirt"
    assert strip_punctuation("The Dog") == "The Dog"  # case, articles, numbers: untouched


# k annotators of ten gave the answer: each leave-one-out subset of nine holds k - 1 of them
# (k subsets) or k (10 - k subsets); accuracy = mean of min(matches / 3, 1)
#   k=1: (1*0 + 9*1/3) / 10 = 0.3     k=2: (2*1/3 + 8*2/3) / 10 = 0.6
#   k=3: (3*2/3 + 7*1) / 10 = 0.9     k>=4: 1
@pytest.mark.parametrize(("k", "expected"), [(0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0)])
def test_accuracy_by_how_many_annotators_agree(k, expected):
    annotations = ["yes"] * k + ["no"] * (10 - k)
    assert vqa_accuracy("Yes.", annotations) == pytest.approx(expected)


def test_accuracy_normalises_the_answer_before_matching():
    assert vqa_accuracy("two", ["2"] * 10) == 1.0
    assert vqa_accuracy("A red Umbrella", ["red umbrella"] * 2 + ["red"] * 8) == pytest.approx(0.6)


def test_identical_annotations_are_compared_unprocessed():
    """The official code processes the annotators' answers (punctuation step) only when they
    differ: ten identical "t-shirt" never match the processed prediction "t shirt"."""
    assert vqa_accuracy("t-shirt", ["t-shirt"] * 10) == 0.0
    assert vqa_accuracy("t-shirt", ["t-shirt"] * 5 + ["shirt"] * 5) == 1.0


def test_accuracy_with_other_than_ten_annotators():
    # five annotators, two agree: 2 subsets of four hold 1 match, 3 hold 2 -> (2/3 + 3*2/3)/5
    assert vqa_accuracy("cat", ["cat", "cat", "dog", "dog", "bird"]) == pytest.approx(
        (2 * (1 / 3) + 3 * (2 / 3)) / 5
    )
    with pytest.raises(ValueError, match="no annotations"):
        vqa_accuracy("cat", [])


def test_bootstrap_interval_resamples_whole_images():
    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(50), 4)
    values = rng.random(200)
    low, high = bootstrap_interval(values, groups, seed=0)
    assert low < values.mean() < high
    assert bootstrap_interval(values, groups, seed=0) == (low, high)  # seeded
    # every question of an image the same: the interval is wider than if they were independent
    clustered = np.repeat(rng.random(50), 4)
    c_low, c_high = bootstrap_interval(clustered, groups, seed=1)
    i_low, i_high = bootstrap_interval(clustered, np.arange(200), seed=1)
    assert c_high - c_low > i_high - i_low
    assert bootstrap_interval(np.ones(8), np.arange(8), seed=0) == (1.0, 1.0)


def test_the_papers_vlv_row_is_written_down():
    vlv = PAPER_TABLE3["VLV"]
    assert [vlv[f"vqav2_{k}"] for k in (0, 4, 32)] == [58.55, 61.72, 63.60]
    assert [vlv[f"okvqa_{k}"] for k in (0, 4, 32)] == [45.31, 54.10, 60.25]
    assert all(not math.isnan(v) for v in vlv.values())
