"""The rating rubric of Table 2 (0 to 6), its exact scorer in the shapes world, and the
statistics of a column of ratings.

One rubric serves every rater: the VLM judge reads it in its prompt
(``captioners/judge.py``), human raters read it on the rating page (``rating_page.py``), and
in the shapes world ``rubric_score`` applies it exactly. It is written in this project's
words after the paper's description (arXiv 2507.07104, section 4.2 and appendix D): a caption
is rated on three things at once, coverage of the image's objects, absence of hallucination,
and a consistent spatial layout.

The exact scorer (``rubric_score``)
-----------------------------------

The true scene comes from the reference caption, which the world's ``CaptionParser`` reads
exactly; the caption is parsed the same way. Caption objects are paired with true objects in
three rounds, each taking only objects not yet paired (ties go to the lower grid cell):

1. the same object in the same cell (cell, size, colour, shape all equal): **right**;
2. the same object (size, colour, shape) in another cell, the nearest one in king moves:
   **misplaced**, one wrong position;
3. an object of the same shape in the same cell with another colour and/or size: **named with
   wrong attributes**, one slip per wrong attribute (1 or 2).

A caption object left over is **hallucinated** (an object not in the scene, or a second
mention of one); a true object left over is **missed**. A piece of text the parser cannot
read (``ParseResult.unparsed``) is one **unreadable fragment**.

- ``covered`` = right + misplaced + named with wrong attributes (true objects the caption names),
- ``major`` = missed + hallucinated objects,
- ``minor`` = wrong positions + wrong attributes + unreadable fragments ("slips").

The level is the first rule that holds:

======  ==========================================================
level   rule
======  ==========================================================
0       ``covered == 0`` (no object of the scene named; empty text)
6       ``major == 0`` and ``minor == 0``
5       ``major == 0`` and ``minor == 1``
4       ``major == 0`` (two or more slips)
3       ``major == 1`` and ``minor <= 1``
2       ``major <= covered`` (at least as many objects right as wrong)
1       otherwise (more objects missed or invented than named)
======  ==========================================================

which is the rubric's wording (``RUBRIC_LEVELS``) read with the scene's objects as the salient
objects, a wrong colour or size as a wrong detail, and a wrong cell as an object out of place.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from vlv_pipeline.world.scene import CaptionParser, SceneObject

MIN_SCORE, MAX_SCORE = 0, 6

RUBRIC_INTRO = (
    "Rate how well the caption describes the image, with a whole number from 0 to 6. Weigh "
    "three things together: coverage (does it name the image's salient objects?), "
    "hallucination (does it state anything that is not in the image: an object, a colour, a "
    "size, a count?) and spatial layout (does it put each thing where it is in the image, and "
    "relate things to each other correctly?)."
)

# level -> (name, what it means); the project's own words
RUBRIC_LEVELS: dict[int, tuple[str, str]] = {
    6: (
        "complete and exact",
        "every salient object is described, nothing it states is false, and the layout it "
        "describes matches the image.",
    ),
    5: (
        "nearly exact",
        "every salient object is described and nothing is invented, with one small slip: one "
        "wrong detail (such as a colour or a size) or one object out of place.",
    ),
    4: (
        "good, with slips",
        "every salient object is described and nothing is invented, but with two or more "
        "small slips.",
    ),
    3: (
        "partial",
        "one salient object is missing, or one object is invented; the rest is right, with "
        "at most one small slip.",
    ),
    2: (
        "weak",
        "it misses or invents two or more objects (or one, with two or more slips), but names "
        "at least as many of the image's objects as it gets wrong.",
    ),
    1: (
        "poor",
        "it names some of the image's objects, but misses or invents more than it gets right.",
    ),
    0: (
        "unrelated",
        "it names none of the image's objects, or there is no caption.",
    ),
}


def rubric_text() -> str:
    """The rubric as raters read it: the introduction, then the levels from 6 down to 0."""
    levels = "\n".join(
        f"{level} - {name}: {meaning}" for level, (name, meaning) in RUBRIC_LEVELS.items()
    )
    return f"{RUBRIC_INTRO}\n\n{levels}"


def rubric_hash() -> str:
    """12 hex digits of sha256 over the rubric's text: a journal of judge answers and a rating
    page are tied to the rubric they were made with."""
    return hashlib.sha256(rubric_text().encode("utf-8")).hexdigest()[:12]


@dataclass(frozen=True)
class RubricReading:
    """One caption read against its true scene: the counts and the level they give."""

    level: int
    objects: int  # in the true scene
    right: int
    misplaced: int
    wrong_attributes: int  # slips: a wrong colour or size of an object named in its cell
    attribute_objects: int  # objects named in their cell with a wrong colour and/or size
    hallucinated: int
    unreadable: int

    @property
    def covered(self) -> int:
        return self.right + self.misplaced + self.attribute_objects

    @property
    def missed(self) -> int:
        return self.objects - self.covered

    @property
    def major(self) -> int:
        return self.missed + self.hallucinated

    @property
    def minor(self) -> int:
        return self.misplaced + self.wrong_attributes + self.unreadable

    def explain(self) -> str:
        """The counts in words (the journal's answer for the exact judge)."""
        return (
            f"{self.covered} of {self.objects} objects named ({self.right} exactly, "
            f"{self.misplaced} in a wrong cell, {self.attribute_objects} with "
            f"{self.wrong_attributes} wrong attribute(s)), {self.missed} missed, "
            f"{self.hallucinated} hallucinated, {self.unreadable} unreadable fragment(s)\n"
            f"Score: {self.level}"
        )


def level_of(covered: int, major: int, minor: int) -> int:
    """The rubric's level from the counts (the table in the module docstring)."""
    if covered == 0:
        return 0
    if major == 0:
        return 6 - min(minor, 2)
    if major == 1 and minor <= 1:
        return 3
    if major <= covered:
        return 2
    return 1


def _king_distance(a: int, b: int) -> int:
    return max(abs(a // 3 - b // 3), abs(a % 3 - b % 3))


def rubric_score(
    caption: str, truth: Sequence[SceneObject], parser: CaptionParser
) -> RubricReading:
    """``caption`` rated against the true scene ``truth`` (module docstring)."""
    parsed = parser.parse(caption or "")
    said = list(parsed.objects)
    left = list(truth)

    def pair(match, cost) -> list[tuple[SceneObject, SceneObject]]:
        """Pairs (said, true) that ``match``, cheapest first (ties: the lower cells), each
        object in one pair at most; the paired objects leave ``said`` and ``left``."""
        candidates = sorted(
            (
                (cost(o, t), t.cell, o.cell, i, j)
                for i, o in enumerate(said)
                for j, t in enumerate(left)
                if match(o, t)
            )
        )
        used_said, used_true, pairs = set(), set(), []
        for *_, i, j in candidates:
            if i not in used_said and j not in used_true:
                used_said.add(i)
                used_true.add(j)
                pairs.append((said[i], left[j]))
        said[:] = [o for i, o in enumerate(said) if i not in used_said]
        left[:] = [t for j, t in enumerate(left) if j not in used_true]
        return pairs

    def identity(o: SceneObject) -> tuple[str, str, str]:
        return (o.size, o.colour, o.shape)

    right = len(pair(lambda o, t: o.key() == t.key(), lambda o, t: 0))
    misplaced = len(
        pair(lambda o, t: identity(o) == identity(t), lambda o, t: _king_distance(o.cell, t.cell))
    )
    renamed = pair(lambda o, t: o.cell == t.cell and o.shape == t.shape, lambda o, t: 0)
    attribute_objects = len(renamed)
    wrong_attributes = sum((o.colour != t.colour) + (o.size != t.size) for o, t in renamed)
    counts = dict(
        objects=len(truth),
        right=right,
        misplaced=misplaced,
        wrong_attributes=wrong_attributes,
        attribute_objects=attribute_objects,
        hallucinated=len(said),
        unreadable=len(parsed.unparsed),
    )
    reading = RubricReading(level=0, **counts)
    level = level_of(reading.covered, reading.major, reading.minor)
    return RubricReading(level=level, **counts)


def true_scene(reference: str, parser: CaptionParser) -> list[SceneObject] | None:
    """The scene a shapes-world reference caption describes, or None when the parser cannot
    read it whole (not a caption of this world's vocabulary)."""
    parsed = parser.parse(reference or "")
    if not parsed.complete or not parsed.objects:
        return None
    return parsed.objects


# ---------------------------------------------------------------------- statistics


IntervalMethod = Literal["t", "bootstrap"]


def mean_interval(
    scores: Sequence[float],
    method: IntervalMethod = "t",
    *,
    seed: int = 0,
    samples: int = 10000,
    level: float = 0.95,
) -> tuple[float | None, tuple[float, float] | None]:
    """The mean of ``scores`` and its ``level`` (95%) confidence interval.

    ``t``: Student's t interval, mean +- t(0.975, n-1) * s / sqrt(n) (s: the sample standard
    deviation); ``bootstrap``: the percentile bootstrap over ``samples`` resamples drawn with
    ``numpy.random.default_rng(seed)``. No scores: (None, None); one score: no interval. The
    interval is clipped to the rubric's range [0, 6]."""
    values = np.asarray(list(scores), dtype=float)
    n = len(values)
    if n == 0:
        return None, None
    mean = float(values.mean())
    if n == 1:
        return mean, None
    alpha = 1 - level
    if method == "t":
        from scipy import stats

        half = float(stats.t.ppf(1 - alpha / 2, n - 1)) * float(values.std(ddof=1)) / math.sqrt(n)
        low, high = mean - half, mean + half
    elif method == "bootstrap":
        rng = np.random.default_rng(seed)
        means = values[rng.integers(0, n, size=(samples, n))].mean(axis=1)
        low, high = (float(q) for q in np.quantile(means, [alpha / 2, 1 - alpha / 2]))
    else:
        raise ValueError(f"unknown interval method {method!r}")
    return mean, (max(float(MIN_SCORE), low), min(float(MAX_SCORE), high))
