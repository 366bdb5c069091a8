import pytest
import torch

from vlv_pipeline.metrics.captions import caption_scene_metrics
from vlv_pipeline.metrics.frechet import frechet_distance
from vlv_pipeline.metrics.text import caption_text_metrics, tokenize
from vlv_pipeline.params.world import WorldParams
from vlv_pipeline.world import Vocabulary

REFS = ["a small red circle on the left", "a large blue square in the centre"]


def test_text_metrics_reward_the_right_caption():
    perfect, _ = caption_text_metrics(REFS, REFS)
    wrong, each = caption_text_metrics(["a large green triangle", "nothing here"], REFS)
    assert perfect["bleu4"] > 0.99 and perfect["rouge_l"] > 0.99
    assert perfect["cider"] > wrong["cider"] and perfect["bleu4"] > wrong["bleu4"]
    assert len(each["cider"]) == 2
    assert tokenize("A Small, red circle!") == "a small red circle"
    with pytest.raises(ValueError):
        caption_text_metrics(["x"], REFS)


def test_scene_metrics_parse_captions():
    vocab = Vocabulary.from_params(WorldParams())
    scores = caption_scene_metrics(
        ["a small red circle on the left", "a large red square in the centre junk"], REFS, vocab
    )
    assert scores["exact_scene"] == 0.5  # the second has a wrong colour and junk
    assert scores["parsed"] == 0.5
    assert scores["shape_recall"] == 1.0 and scores["colour_recall"] == 0.5


def test_frechet_distance_is_zero_for_the_same_set_and_grows_with_a_shift():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(200, 4, generator=g)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    near = frechet_distance(a, a + 0.1)
    far = frechet_distance(a, a + 1.0)
    assert near == pytest.approx(4 * 0.01, rel=1e-3) and far > near
    with pytest.raises(ValueError):
        frechet_distance(a, torch.randn(10, 3))
