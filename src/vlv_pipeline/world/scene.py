"""Scenes of the shapes world, their captions, and the parser back from text.

A scene is a set of objects, each in a distinct cell of a 3x3 grid. The caption lists
them in reading order (top-left to bottom-right) as
``a {size} {colour} {shape} {position}`` joined by `` and ``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

POSITIONS: tuple[str, ...] = (
    "at the top left",
    "at the top",
    "at the top right",
    "on the left",
    "in the centre",
    "on the right",
    "at the bottom left",
    "at the bottom",
    "at the bottom right",
)
N_CELLS = len(POSITIONS)


@dataclass(frozen=True, order=True)
class SceneObject:
    """One object. ``cell`` is 0..8 in reading order; ``dx``/``dy`` jitter in cell units."""

    cell: int
    size: str
    colour: str
    shape: str
    dx: float = field(default=0.0, compare=False)
    dy: float = field(default=0.0, compare=False)

    @property
    def position(self) -> str:
        return POSITIONS[self.cell]

    def phrase(self) -> str:
        return f"a {self.size} {self.colour} {self.shape} {self.position}"

    def key(self) -> tuple[int, str, str, str]:
        """What a caption determines: jitter is not part of it."""
        return (self.cell, self.size, self.colour, self.shape)


@dataclass(frozen=True)
class Vocabulary:
    """The words the world uses; the defaults come from ``WorldParams``."""

    shapes: tuple[str, ...]
    colours: tuple[str, ...]
    sizes: tuple[str, ...]

    @classmethod
    def from_params(cls, params) -> Vocabulary:
        return cls(tuple(params.shapes), tuple(params.colours), tuple(params.sizes))

    def words(self) -> list[str]:
        """Every word a caption can contain, in a fixed order."""
        words: list[str] = ["a", "and"]
        for text in (*self.sizes, *self.colours, *self.shapes, *POSITIONS):
            for word in text.split():
                if word not in words:
                    words.append(word)
        return words


def caption(objects: list[SceneObject] | tuple[SceneObject, ...]) -> str:
    """The caption of a scene: objects in reading order joined by `` and ``."""
    return " and ".join(obj.phrase() for obj in sorted(objects, key=lambda o: o.cell))


def sample_scene(
    rng: np.random.Generator, vocab: Vocabulary, max_objects: int, jitter: float
) -> list[SceneObject]:
    """Draw 1..max_objects objects in distinct cells, uniformly over the vocabulary."""
    n = int(rng.integers(1, max_objects + 1))
    cells = sorted(int(c) for c in rng.choice(N_CELLS, size=n, replace=False))
    objects = []
    for cell in cells:
        objects.append(
            SceneObject(
                cell=cell,
                size=vocab.sizes[rng.integers(len(vocab.sizes))],
                colour=vocab.colours[rng.integers(len(vocab.colours))],
                shape=vocab.shapes[rng.integers(len(vocab.shapes))],
                dx=float(rng.uniform(-jitter, jitter)),
                dy=float(rng.uniform(-jitter, jitter)),
            )
        )
    return objects


@dataclass
class ParseResult:
    """What the parser recognised, and the pieces of text it could not."""

    objects: list[SceneObject]
    unparsed: list[str]

    @property
    def complete(self) -> bool:
        return not self.unparsed

    def keys(self) -> set[tuple[int, str, str, str]]:
        return {obj.key() for obj in self.objects}


class CaptionParser:
    """Parses captions of a vocabulary back into scenes; tolerant of junk.

    It finds every ``a {size} {colour} {shape} {position}`` phrase anywhere in the text;
    whatever is left over (other than the joining ``and`` and punctuation) is reported
    in ``unparsed``.
    """

    def __init__(self, vocab: Vocabulary):
        self.vocab = vocab

        def alternation(words) -> str:
            # Longest first, so "at the top left" wins over "at the top".
            return "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))

        self._phrase = re.compile(
            rf"\ba\s+(?P<size>{alternation(vocab.sizes)})\s+(?P<colour>{alternation(vocab.colours)})"
            rf"\s+(?P<shape>{alternation(vocab.shapes)})\s+(?P<position>{alternation(POSITIONS)})\b"
        )

    def parse(self, text: str) -> ParseResult:
        normalised = " ".join(text.lower().split())
        objects: list[SceneObject] = []
        leftovers: list[str] = []
        last = 0
        for match in self._phrase.finditer(normalised):
            leftovers.append(normalised[last : match.start()])
            last = match.end()
            objects.append(
                SceneObject(
                    cell=POSITIONS.index(match["position"]),
                    size=match["size"],
                    colour=match["colour"],
                    shape=match["shape"],
                )
            )
        leftovers.append(normalised[last:])
        unparsed = []
        for piece in leftovers:
            piece = re.sub(
                r"^[\s,.;:!?]*(and\b)?[\s,.;:!?]*|[\s,.;:!?]*(\band)?[\s,.;:!?]*$", "", piece
            )
            if piece:
                unparsed.append(piece)
        return ParseResult(sorted(objects), unparsed)
