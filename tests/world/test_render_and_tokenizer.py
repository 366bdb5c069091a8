import numpy as np
import pytest
from transformers import AutoTokenizer

from vlv_pipeline.params.world import RENDERABLE_SHAPES, WorldParams
from vlv_pipeline.world import (
    SHAPE_DRAWERS,
    SceneObject,
    Vocabulary,
    build_world_tokenizer,
    render_scene,
)

PARAMS = WorldParams()


def _render(objects, size=32):
    return np.asarray(
        render_scene(
            objects,
            image_size=size,
            colours=PARAMS.colours,
            sizes=PARAMS.sizes,
            background=PARAMS.background,
            supersample=4,
        )
    )


def test_render_puts_the_colour_in_the_right_cell():
    image = _render([SceneObject(cell=8, size="large", colour="red", shape="circle")])
    assert image.shape == (32, 32, 3)
    cell = 32 / 3
    bottom_right = image[int(2 * cell) :, int(2 * cell) :].reshape(-1, 3)
    top_left = image[: int(cell), : int(cell)].reshape(-1, 3)
    red = (bottom_right[:, 0] > 150) & (bottom_right[:, 1] < 100)
    assert red.mean() > 0.3
    assert (top_left == PARAMS.background).all()


def test_large_is_larger_than_small_and_shapes_differ():
    def area(size, shape):
        img = _render([SceneObject(cell=4, size=size, colour="yellow", shape=shape)], 96)
        return (img[..., 0] > 100).sum()

    assert area("large", "circle") > 1.8 * area("small", "circle")
    circle = _render([SceneObject(4, "large", "yellow", "circle")], 96)
    triangle = _render([SceneObject(4, "large", "yellow", "triangle")], 96)
    assert (circle != triangle).any()


def test_tokenizer_round_trips_through_save_pretrained(tmp_path):
    tokenizer = build_world_tokenizer(Vocabulary.from_params(PARAMS))
    tokenizer.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    text = "a large red circle at the top left and a small blue square in the centre"
    ids = loaded(text).input_ids
    assert ids[0] == loaded.bos_token_id and ids[-1] == loaded.eos_token_id
    assert loaded.unk_token_id not in ids
    assert loaded.decode(ids, skip_special_tokens=True) == text
    assert max(ids) < len(loaded)
    assert (loaded.pad_token_id, loaded.bos_token_id, loaded.eos_token_id, loaded.unk_token_id) == (
        0,
        1,
        2,
        3,
    )
    assert loaded("a purple circle").input_ids[2] == loaded.unk_token_id
    padded = loaded([text], padding="max_length", max_length=loaded.model_max_length).input_ids[0]
    assert len(padded) == 77 and padded[-1] == loaded.pad_token_id


def test_the_parameters_accept_exactly_the_shapes_the_renderer_draws():
    # params/ names the shapes without importing the renderer; the two lists must agree
    assert set(RENDERABLE_SHAPES) == set(SHAPE_DRAWERS)
    WorldParams(shapes=list(RENDERABLE_SHAPES))  # each renderable shape is accepted
    with pytest.raises(ValueError, match="unknown shapes \\['hexagon'\\]"):
        WorldParams(shapes=["circle", "hexagon"])
