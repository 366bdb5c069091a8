"""Visual questions about shapes-world scenes, and an answerer that reads only a caption.

The default run's Table 3 (caption-only VQA) asks about each test image the questions below,
made from its true scene (the reference caption parsed back), each with ten annotations as a
VQA question has. ``CaptionAnswerer`` answers a question from a caption alone: it parses the
caption into a scene with the world's ``CaptionParser`` and reads the answer off that scene,
so a caption scores exactly as well as the facts it states. The answers are scored with the
standard VQA accuracy (``metrics/vqa.py``).

One question of each kind per image (the choices drawn from a generator seeded per image):

============  ==============================================  ===========================
kind          question                                        annotations (ten)
============  ==============================================  ===========================
colour        what colour is the {shape} {position}?           the colour (all ten)
shape         what is {position}?  (an occupied cell or an    4 the shape, 3 colour+shape,
              empty one, even odds)                           3 size+colour+shape; or all
                                                              ten ``nothing``
count         how many {shape}s are there? / how many         the number (all ten)
              objects are there?  (even odds)
position      where is the [{size}] {colour} {shape}?  (an    6 ``top left``, 4 ``at top
              object its words name alone)                    left`` (normalised)
presence      is there a {colour} {shape}?  (present or       ``yes`` or ``no`` (all ten)
              absent, even odds)
============  ==============================================  ===========================

The annotations are stored normalised (as the VQA datasets' are). Where several answers are
right (``what is``, ``where is``) they are spread as annotators would; the answerer gives the
commonest, which scores 1.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from vlv_pipeline.metrics.vqa import normalize_answer
from vlv_pipeline.world.scene import POSITIONS, CaptionParser, SceneObject, Vocabulary

QUESTION_KINDS = ("colour", "shape", "count", "position", "presence")
NOTHING = "nothing"
UNKNOWN = "unknown"  # the caption does not say: never an annotation


@dataclass(frozen=True)
class Question:
    kind: str
    text: str
    answers: tuple[str, ...]  # ten annotations, normalised


def place(cell: int) -> str:
    """The bare name of a cell: ``top left``, ``centre``, ``left`` (its position phrase
    without ``at the``/``on the``/``in the``)."""
    return POSITIONS[cell].split(" ", 2)[2]


def plural(shape: str) -> str:
    return shape + ("es" if shape.endswith(("s", "x", "ch", "sh")) else "s")


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _ten(*groups: tuple[int, str]) -> tuple[str, ...]:
    answers = tuple(normalize_answer(a) for n, a in groups for _ in range(n))
    assert len(answers) == 10
    return answers


def _pick(rng: np.random.Generator, items: Sequence):
    return items[int(rng.integers(len(items)))]


def scene_questions(
    objects: Sequence[SceneObject], vocab: Vocabulary, rng: np.random.Generator
) -> list[Question]:
    """One question of each kind about the scene ``objects`` (module docstring); the position
    question is left out when no object's words name it alone."""
    objects = sorted(objects, key=lambda o: o.cell)
    if not objects:
        raise ValueError("a scene without objects has no questions")
    questions = []
    # colour
    obj = _pick(rng, objects)
    questions.append(
        Question(
            "colour", f"what colour is the {obj.shape} {obj.position}?", _ten((10, obj.colour))
        )
    )
    # shape: what is at a cell
    occupied = {o.cell: o for o in objects}
    empty = [c for c in range(len(POSITIONS)) if c not in occupied]
    if empty and rng.random() < 0.5:
        cell = _pick(rng, empty)
        answers = _ten((10, NOTHING))
    else:
        cell = _pick(rng, sorted(occupied))
        o = occupied[cell]
        answers = _ten(
            (4, o.shape), (3, f"{o.colour} {o.shape}"), (3, f"{o.size} {o.colour} {o.shape}")
        )
    questions.append(Question("shape", f"what is {POSITIONS[cell]}?", answers))
    # count
    if rng.random() < 0.5:
        text, n = "how many objects are there?", len(objects)
    else:
        shape = _pick(rng, vocab.shapes)
        text, n = f"how many {plural(shape)} are there?", sum(o.shape == shape for o in objects)
    questions.append(Question("count", text, _ten((10, str(n)))))
    # position: an object named by its colour and shape (with its size if need be)
    for index in rng.permutation(len(objects)):
        o = objects[int(index)]
        same = [p for p in objects if (p.colour, p.shape) == (o.colour, o.shape)]
        if len(same) == 1:
            name = f"{o.colour} {o.shape}"
        elif sum(p.size == o.size for p in same) == 1:
            name = f"{o.size} {o.colour} {o.shape}"
        else:
            continue
        answers = _ten((6, place(o.cell)), (4, POSITIONS[o.cell]))
        questions.append(Question("position", f"where is the {name}?", answers))
        break
    # presence
    present = {(o.colour, o.shape) for o in objects}
    absent = [(c, s) for c in vocab.colours for s in vocab.shapes if (c, s) not in present]
    if absent and rng.random() < 0.5:
        (colour, shape), answer = _pick(rng, absent), "no"
    else:
        o = _pick(rng, objects)
        (colour, shape), answer = (o.colour, o.shape), "yes"
    text = f"is there {_article(colour)} {colour} {shape}?"
    questions.append(Question("presence", text, _ten((10, answer))))
    return questions


def caption_questions(
    references: Sequence[str], vocab: Vocabulary, seed: int
) -> list[tuple[int, Question]]:
    """``(image index, question)`` for every image, from its reference caption's scene; image
    ``i``'s choices come from a generator seeded with ``(seed, i)``. A reference the parser
    cannot read completely is refused (``ValueError`` naming the image)."""
    parser = CaptionParser(vocab)
    questions = []
    for index, reference in enumerate(references):
        parsed = parser.parse(reference or "")
        if not parsed.objects or not parsed.complete:
            raise ValueError(
                f"image {index} has no shapes-world reference caption to ask about: {reference!r}"
            )
        rng = np.random.default_rng([seed, index])
        questions += [(index, q) for q in scene_questions(parsed.objects, vocab, rng)]
    return questions


class CaptionAnswerer:
    """Answers the questions ``scene_questions`` asks from a caption alone: the caption is
    parsed into a scene (``CaptionParser``: every object phrase it finds, junk ignored) and
    the answer read off it. What the caption does not say is ``unknown``, which no annotator
    gave; a cell it names nothing at is ``nothing``. The colour question is answered from the
    object the caption puts at that place, whatever its shape (else from the caption's only
    object of that shape)."""

    def __init__(self, vocab: Vocabulary):
        self.vocab = vocab
        self.parser = CaptionParser(vocab)

        def alternation(words) -> str:
            return "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))

        shape, colour, size = (
            alternation(vocab.shapes),
            alternation(vocab.colours),
            alternation(vocab.sizes),
        )
        position = alternation(POSITIONS)
        self._plurals = {plural(s): s for s in vocab.shapes}
        self._forms = [
            ("colour", re.compile(rf"what colou?r is the (?P<shape>{shape}) (?P<pos>{position})")),
            ("shape", re.compile(rf"what is (?P<pos>{position})")),
            ("count", re.compile(r"how many objects are there")),
            ("count", re.compile(rf"how many (?P<plural>{alternation(self._plurals)}) are there")),
            (
                "position",
                re.compile(
                    rf"where is the (?:(?P<size>{size}) )?(?P<colour>{colour}) (?P<shape>{shape})"
                ),
            ),
            ("presence", re.compile(rf"is there an? (?P<colour>{colour}) (?P<shape>{shape})")),
        ]

    def answer(self, question: str, caption: str) -> str:
        text = " ".join(question.lower().split()).rstrip("?").strip()
        for kind, form in self._forms:
            match = form.fullmatch(text)
            if match:
                objects = self.parser.parse(caption or "").objects
                return getattr(self, f"_{kind}")(match, objects)
        raise ValueError(f"not a shapes-world question: {question!r}")

    @staticmethod
    def _colour(match, objects) -> str:
        cell = POSITIONS.index(match["pos"])
        here = [o for o in objects if o.cell == cell]
        if here:
            return here[0].colour
        same = [o for o in objects if o.shape == match["shape"]]
        return same[0].colour if len(same) == 1 else UNKNOWN

    @staticmethod
    def _shape(match, objects) -> str:
        cell = POSITIONS.index(match["pos"])
        here = [o for o in objects if o.cell == cell]
        return here[0].shape if here else NOTHING

    def _count(self, match, objects) -> str:
        if "plural" not in match.groupdict():
            return str(len(objects))
        shape = self._plurals[match["plural"]]
        return str(sum(o.shape == shape for o in objects))

    @staticmethod
    def _position(match, objects) -> str:
        for o in objects:
            if (o.colour, o.shape) == (match["colour"], match["shape"]) and (
                match["size"] is None or o.size == match["size"]
            ):
                return place(o.cell)
        return UNKNOWN

    @staticmethod
    def _presence(match, objects) -> str:
        wanted = (match["colour"], match["shape"])
        return "yes" if any((o.colour, o.shape) == wanted for o in objects) else "no"
