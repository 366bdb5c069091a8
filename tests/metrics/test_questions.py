"""Shapes-world questions (the default run's Table 3): generated from a scene with ten
annotations each, answered from a caption alone by the world's parser, scored with the
standard VQA accuracy."""

import numpy as np
import pytest

from vlv_pipeline.metrics.questions import (
    QUESTION_KINDS,
    CaptionAnswerer,
    caption_questions,
    scene_questions,
)
from vlv_pipeline.metrics.vqa import vqa_accuracy
from vlv_pipeline.params.world import WorldParams
from vlv_pipeline.world import SceneObject, Vocabulary, caption, sample_scene

VOCAB = Vocabulary.from_params(WorldParams())
RED_CIRCLE = SceneObject(cell=0, size="large", colour="red", shape="circle")
BLUE_SQUARE = SceneObject(cell=4, size="small", colour="blue", shape="square")


def _scenes(n=200, seed=0):
    rng = np.random.default_rng(seed)
    return [sample_scene(rng, VOCAB, max_objects=3, jitter=0.0) for _ in range(n)]


def test_each_scene_gets_one_question_of_each_kind_with_ten_annotations():
    questions = scene_questions([RED_CIRCLE, BLUE_SQUARE], VOCAB, np.random.default_rng(0))
    assert [q.kind for q in questions] == list(QUESTION_KINDS)
    assert all(len(q.answers) == 10 for q in questions)
    assert all(q.text.endswith("?") and q.text == q.text.lower() for q in questions)


def test_questions_are_fixed_by_the_seed():
    references = [caption(s) for s in _scenes(20)]
    assert caption_questions(references, VOCAB, seed=3) == caption_questions(
        references, VOCAB, seed=3
    )
    assert caption_questions(references, VOCAB, seed=3) != caption_questions(
        references, VOCAB, seed=4
    )


def test_the_reference_caption_answers_every_question_exactly():
    answerer = CaptionAnswerer(VOCAB)
    scenes = _scenes()
    references = [caption(s) for s in scenes]
    questions = caption_questions(references, VOCAB, seed=0)
    kinds = {q.kind for _, q in questions}
    assert kinds == set(QUESTION_KINDS)
    for index, question in questions:
        answer = answerer.answer(question.text, references[index])
        assert vqa_accuracy(answer, question.answers) == 1.0, (question, references[index])


def test_every_kind_has_both_kinds_of_answer():
    """Presence asks about absent objects too, "what is" about empty cells, "how many" gets
    zero: a caption that names nothing cannot score everywhere."""
    questions = [q for _, q in caption_questions([caption(s) for s in _scenes()], VOCAB, 0)]
    presence = {q.answers[0] for q in questions if q.kind == "presence"}
    assert presence == {"yes", "no"}
    assert any(q.answers[0] == "nothing" for q in questions if q.kind == "shape")
    assert any(q.answers[0] == "0" for q in questions if q.kind == "count")


def test_annotations_spread_where_several_answers_are_right():
    questions = scene_questions([RED_CIRCLE], VOCAB, np.random.default_rng(0))
    by_kind = {q.kind: q for q in questions}
    where = by_kind["position"]
    assert where.text == "where is the red circle?"
    assert sorted(set(where.answers)) == ["at top left", "top left"]  # normalised
    # "what is at X?" names the shape, or the object with its colour, or with its size too
    answerer = CaptionAnswerer(VOCAB)
    assert vqa_accuracy("red circle", ["circle"] * 4 + ["red circle"] * 3 + ["x"] * 3) == 0.9
    assert by_kind["colour"].answers == ("red",) * 10
    assert answerer.answer(where.text, caption([RED_CIRCLE])) == "top left"


@pytest.mark.parametrize(
    ("question", "text", "answer"),
    [
        ("what colour is the circle at the top left?", "a large red circle at the top left", "red"),
        # the object at the place asked about, whatever its shape
        (
            "what colour is the circle at the top left?",
            "a small blue square at the top left",
            "blue",
        ),
        (
            "what colour is the circle at the top left?",
            "a small blue square in the centre",
            "unknown",
        ),
        ("what is in the centre?", "a small blue square in the centre", "square"),
        ("what is in the centre?", "a large red circle at the top left", "nothing"),
        (
            "how many circles are there?",
            "a large red circle at the top left and a small red circle at the top",
            "2",
        ),
        ("how many squares are there?", "a large red circle at the top left", "0"),
        ("how many objects are there?", "a large red circle at the top left and junk", "1"),
        ("where is the red circle?", "a large red circle on the left", "left"),
        ("where is the large red circle?", "a small red circle on the left", "unknown"),
        ("is there a red circle?", "a large red circle at the bottom", "yes"),
        ("is there a red circle?", "a large green circle at the bottom", "no"),
        ("is there a red circle?", "", "no"),
    ],
)
def test_the_answerer_reads_the_caption_alone(question, text, answer):
    assert CaptionAnswerer(VOCAB).answer(question, text) == answer


def test_the_answerer_refuses_a_question_it_was_not_built_for():
    with pytest.raises(ValueError, match="not a shapes-world question"):
        CaptionAnswerer(VOCAB).answer("why is the sky blue?", "a large red circle at the top")


def test_a_wrong_caption_scores_lower_than_the_right_one():
    answerer = CaptionAnswerer(VOCAB)
    references = [caption(s) for s in _scenes()]
    questions = caption_questions(references, VOCAB, seed=0)
    shifted = references[1:] + references[:1]  # another scene's caption (chance)
    right = np.mean(
        [vqa_accuracy(answerer.answer(q.text, references[i]), q.answers) for i, q in questions]
    )
    wrong = np.mean(
        [vqa_accuracy(answerer.answer(q.text, shifted[i]), q.answers) for i, q in questions]
    )
    assert right == 1.0 and 0.2 < wrong < 0.8


def test_a_reference_the_parser_cannot_read_is_refused_by_image():
    with pytest.raises(ValueError, match=r"image 1 .*a dog on a sofa"):
        caption_questions(["a large red circle at the top", "a dog on a sofa"], VOCAB, seed=0)


def test_an_article_fits_the_colour():
    vocab = Vocabulary(shapes=("circle",), colours=("orange",), sizes=("small",))
    obj = SceneObject(cell=0, size="small", colour="orange", shape="circle")
    questions = scene_questions([obj], vocab, np.random.default_rng(0))
    presence = next(q for q in questions if q.kind == "presence")
    assert presence.text == "is there an orange circle?"
