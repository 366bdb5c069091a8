import numpy as np
import pytest

from vlv_pipeline.params.world import WorldParams
from vlv_pipeline.world import (
    POSITIONS,
    CaptionParser,
    SceneObject,
    Vocabulary,
    caption,
    sample_scene,
)

VOCAB = Vocabulary.from_params(WorldParams())


def test_caption_grammar_matches_the_specification():
    objects = [
        SceneObject(cell=4, size="small", colour="blue", shape="square"),
        SceneObject(cell=0, size="large", colour="red", shape="circle"),
    ]
    assert (
        caption(objects)
        == "a large red circle at the top left and a small blue square in the centre"
    )


def test_positions_are_named_in_reading_order():
    assert POSITIONS == (
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


@pytest.mark.parametrize("max_objects", [1, 2, 4, 9])
def test_round_trip_is_exact(max_objects):
    parser = CaptionParser(VOCAB)
    rng = np.random.default_rng(7)
    for _ in range(300):
        scene = sample_scene(rng, VOCAB, max_objects, 0.05)
        assert len({o.cell for o in scene}) == len(scene)  # distinct cells
        result = parser.parse(caption(scene))
        assert result.complete, result.unparsed
        assert result.keys() == {o.key() for o in scene}


def test_sampling_is_deterministic_per_seed():
    a = sample_scene(np.random.default_rng([3, 1, 5]), VOCAB, 2, 0.05)
    b = sample_scene(np.random.default_rng([3, 1, 5]), VOCAB, 2, 0.05)
    c = sample_scene(np.random.default_rng([3, 1, 6]), VOCAB, 2, 0.05)
    assert [(o.key(), o.dx, o.dy) for o in a] == [(o.key(), o.dx, o.dy) for o in b]
    assert [(o.key(), o.dx) for o in a] != [(o.key(), o.dx) for o in c]


def test_parser_tolerates_junk_and_reports_it():
    parser = CaptionParser(VOCAB)
    result = parser.parse(
        "A LARGE red circle at the top left, and a purple blob and a small green square on the right!!"
    )
    assert result.keys() == {(0, "large", "red", "circle"), (5, "small", "green", "square")}
    assert result.unparsed == ["a purple blob"]
    assert not result.complete


def test_parser_prefers_the_longest_position():
    result = CaptionParser(VOCAB).parse("a small red circle at the top right")
    assert result.keys() == {(2, "small", "red", "circle")}


def test_parser_on_empty_and_garbage():
    parser = CaptionParser(VOCAB)
    assert parser.parse("").objects == [] and parser.parse("").complete
    garbage = parser.parse("<unk> <unk> circle circle")
    assert garbage.objects == [] and garbage.unparsed == ["<unk> <unk> circle circle"]
