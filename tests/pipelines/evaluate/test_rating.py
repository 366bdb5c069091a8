"""Table 2's nodes in the shapes world: the seeded sample, the exact rubric judge, the blind
rating page, the raters' files read back (and refused when wrong), and the table."""

import json
import re
from pathlib import Path

import pandas as pd
import pytest
from kedro.config import OmegaConfigLoader
from rating_factory import WORLD, eval_set

from vlv_pipeline import settings
from vlv_pipeline.errors import InputError, MissingInputError, ParameterError
from vlv_pipeline.metrics.rating_page import FORMAT, caption_order, page_id, page_items
from vlv_pipeline.metrics.tables import PaperTable
from vlv_pipeline.params.rating import RatingParams
from vlv_pipeline.pipelines.evaluate import rating


@pytest.fixture
def data_and_captions():
    return eval_set(12)


def _sample(data_and_captions, **kw):
    data, captions = data_and_captions
    return rating.sample_rating_items(data, captions, RatingParams(**{"images": 5, **kw}))


def test_the_sample_is_seeded_written_down_and_has_every_captioner(data_and_captions):
    data, _ = data_and_captions
    sample = _sample(data_and_captions)
    assert list(sample.columns) == ["image_id", "index", "captioner", "caption"]
    images = list(dict.fromkeys(sample["image_id"]))
    assert len(images) == 5 and len(sample) == 5 * 4
    assert set(sample["captioner"]) == {"reference", "vlv", "without_stage1", "chance"}
    indices = list(dict.fromkeys(sample["index"]))
    assert indices == sorted(indices)  # in the evaluation set's order
    assert [data.image_ids[i] for i in indices] == images
    again = _sample(data_and_captions)
    pd.testing.assert_frame_equal(sample, again)
    other = _sample(data_and_captions, seed=1)
    assert list(dict.fromkeys(other["image_id"])) != images
    # more images asked than there are: all of them
    assert _sample(data_and_captions, images=200)["image_id"].nunique() == 12


def test_the_sample_rates_the_captioners_named_and_refuses_unknown_ones(data_and_captions):
    sample = _sample(data_and_captions, captioners=["vlv", "chance"])
    assert set(sample["captioner"]) == {"vlv", "chance"}
    with pytest.raises(ParameterError, match=r"rating.captioners names \['gpt4o'\]"):
        _sample(data_and_captions, captioners=["vlv", "gpt4o"])


def test_the_exact_judge_rates_against_the_true_scene(data_and_captions):
    data, _ = data_and_captions
    params = RatingParams(images=12)
    sample = rating.sample_rating_items(*data_and_captions, params)
    judged = rating.judge_rating_items(data, sample, params, WORLD, {})
    assert list(judged.columns) == ["image_id", "captioner", "status", "score", "answer"]
    assert (judged["status"] == "rated").all()
    by = judged.groupby("captioner")["score"].apply(list)
    assert by["reference"] == [6.0] * 12 and by["vlv"] == [6.0] * 12
    assert set(by["without_stage1"]) <= {5.0, 4.0}  # one colour changed: one slip
    assert max(by["chance"]) < 6  # another scene (unless two scenes are equal: not here)
    for answer, score in zip(judged["answer"], judged["score"], strict=True):
        assert answer.splitlines()[-1] == f"Score: {int(score)}"


def test_the_exact_judge_refuses_references_outside_the_world(data_and_captions):
    data, captions = data_and_captions
    data.references[3] = "a photo of a dog"
    captions.loc[3, "reference"] = "a photo of a dog"
    params = RatingParams(images=12)
    sample = rating.sample_rating_items(data, captions, params)
    with pytest.raises(InputError, match="not a caption of the world's vocabulary"):
        rating.judge_rating_items(data, sample, params, WORLD, {})


def test_a_missing_caption_is_not_rated(data_and_captions):
    data, captions = data_and_captions
    captions["vlv"] = captions["vlv"].astype(object)
    captions.loc[0, "vlv"] = None
    params = RatingParams(images=12)
    sample = rating.sample_rating_items(data, captions, params)
    judged = rating.judge_rating_items(data, sample, params, WORLD, {})
    missing = judged[judged["status"] == "missing"]
    assert missing[["image_id", "captioner"]].values.tolist() == [[data.image_ids[0], "vlv"]]
    assert missing["score"].isna().all()
    table = PaperTable.from_dict(
        rating.rating_table(sample, judged, rating.read_user_ratings(sample, params), params)
    )
    assert table.row("VLV captioner").count["judge"] == 11


def _page_data(page: str) -> dict:
    found = re.search(r'<script type="application/json" id="page-data">(.*?)</script>', page, re.S)
    return json.loads(found.group(1))


def test_the_rating_page_is_self_contained_and_blind(data_and_captions):
    data, captions = data_and_captions
    params = RatingParams(images=5)
    sample = rating.sample_rating_items(data, captions, params)
    page = rating.write_rating_page(data, sample, params)
    assert page.startswith("<!DOCTYPE html>")
    # nothing fetched from anywhere: no URL but data URLs, no external script or style
    assert not re.search(r"(?:https?:)?//[a-z0-9]", page, re.I)
    assert "<script src" not in page and "<link" not in page
    content = _page_data(page)
    assert content["format"] == FORMAT
    items = page_items(sample, params.seed)
    assert content["page_id"] == page_id(items)
    assert [i["image_id"] for i in content["items"]] == [i.image_id for i in items]
    assert all(i["image"].startswith("data:image/png;base64,") for i in content["items"])
    # the captions in their shuffled order, never the captioners' names
    for shown, item in zip(content["items"], items, strict=True):
        assert shown["captions"] == list(item.captions)
        assert set(shown) == {"image_id", "order_key", "image", "captions"}
    for name in ("without_stage1", '"vlv"', "chance", '"reference"'):
        assert name not in page
    orders = {tuple(item.captioners) for item in items}
    assert len(orders) > 1  # the order differs from image to image
    assert "Score every caption" in page and "6 - complete and exact" in page


def _ratings_file(tmp_path, items, scores=None, **overrides):
    payload = {
        "format": FORMAT,
        "page_id": page_id(items),
        "rater": "ann",
        "saved_at": "2025-01-01T00:00:00Z",
        "ratings": [
            {
                "image_id": item.image_id,
                "order_key": item.order_key,
                "scores": (scores or {}).get(item.image_id, [5] * len(item.captions)),
            }
            for item in items
        ],
    }
    payload.update(overrides)
    path = tmp_path / f"ratings-{len(list(tmp_path.iterdir()))}.json"
    path.write_text(json.dumps(payload))
    return path


def test_the_raters_files_come_back_into_the_table(data_and_captions, tmp_path):
    data, captions = data_and_captions
    sample = rating.sample_rating_items(data, captions, RatingParams(images=4))
    items = page_items(sample, 0)
    # rater 1: 6 for the reference and VLV, 2 for the others; rater 2: 4 for everything
    by_name = {"reference": 6, "vlv": 6, "without_stage1": 2, "chance": 2}
    first = _ratings_file(
        tmp_path, items, {i.image_id: [by_name[c] for c in i.captioners] for i in items}
    )
    second = _ratings_file(tmp_path, items, {i.image_id: [4] * 4 for i in items}, rater="")
    params = RatingParams(images=4, ratings=[str(first), str(second)])
    users = rating.read_user_ratings(sample, params)
    assert list(users.columns) == ["image_id", "captioner", "score", "rater"]
    assert len(users) == 2 * 4 * 4 and set(users["rater"]) == {"ann", second.stem}
    judged = rating.judge_rating_items(data, sample, params, WORLD, {})
    table = PaperTable.from_dict(rating.rating_table(sample, judged, users, params))
    assert [r.label for r in table.rows] == [
        "VLV captioner",
        '"without stage 1"',
        "chance (another image's reference caption)",
        "reference captions (upper bound)",
        "VLV",
        "GPT-4o",
    ]
    vlv = table.row("VLV captioner")
    assert vlv.kind == "model" and vlv.values == {"judge": 6.0, "users": 5.0}
    assert vlv.count == {"judge": 4, "users": 4}
    assert vlv.intervals["users"] == (5.0, 5.0)
    assert table.row('"without stage 1"').values["users"] == 3.0
    assert table.row("reference captions (upper bound)").kind == "reference"
    paper = [r for r in table.rows if r.kind == "paper"]
    assert [(r.label, r.values) for r in paper] == [
        ("VLV", {"judge": 5.18, "users": 5.17}),
        ("GPT-4o", {"judge": 5.25, "users": 5.20}),
    ]
    notes = " ".join(table.notes)
    assert "exact, not a VLM" in notes and "2 rater(s)" in notes and "Student's t" in notes
    assert "the paper rates 200" in notes
    json.dumps(table.to_dict())


def test_without_ratings_the_users_column_is_empty_and_says_how(data_and_captions):
    data, captions = data_and_captions
    params = RatingParams(images=4, interval="bootstrap", bootstrap_samples=500)
    sample = rating.sample_rating_items(data, captions, params)
    users = rating.read_user_ratings(sample, params)
    assert users.empty
    judged = rating.judge_rating_items(data, sample, params, WORLD, {})
    table = PaperTable.from_dict(rating.rating_table(sample, judged, users, params))
    assert [c for c, _ in table.columns] == ["judge", "users"]
    assert table.row("VLV captioner").values["users"] is None
    assert table.row('"without stage 1"').intervals["judge"][0] <= 5
    notes = " ".join(table.notes)
    assert "no rating file given" in notes and "bootstrap" in notes and "seed 0" in notes


@pytest.fixture
def page(data_and_captions):
    data, captions = data_and_captions
    sample = rating.sample_rating_items(data, captions, RatingParams(images=3))
    return sample, page_items(sample, 0)


def _read(sample, path, **kw):
    return rating.read_user_ratings(sample, RatingParams(images=3, ratings=str(path), **kw))


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(page_id="0123456789abcdef"), "saved from rating page '0123456789abcdef'"),
        (dict(format="other/1"), "not a rating file of format"),
        (dict(ratings={}), "`ratings` is not a list"),
    ],
)
def test_a_file_of_another_page_or_format_is_refused(page, tmp_path, change, message):
    sample, items = page
    with pytest.raises(InputError, match=re.escape(message)):
        _read(sample, _ratings_file(tmp_path, items, **change))


def test_scores_out_of_range_or_not_whole_numbers_are_refused(page, tmp_path):
    sample, items = page
    first = items[0].image_id
    for bad in (7, -1, 5.5, True, "5"):
        scores = {first: [bad] + [5] * (len(items[0].captions) - 1)}
        with pytest.raises(InputError, match=r"caption A: score .* not a whole number from 0 to 6"):
            _read(sample, _ratings_file(tmp_path, items, scores))
    with pytest.raises(InputError, match="needs a list of 4 scores"):
        _read(sample, _ratings_file(tmp_path, items, {first: [5, 5]}))


def test_missing_unknown_or_twice_rated_images_are_refused(page, tmp_path):
    sample, items = page
    path = _ratings_file(tmp_path, items)
    payload = json.loads(path.read_text())
    payload["ratings"] = payload["ratings"][:2]
    path.write_text(json.dumps(payload))
    with pytest.raises(InputError, match="1 of the page's 3 images are not fully rated"):
        _read(sample, path)
    partial = _read(sample, path, complete_ratings=False)
    assert partial["image_id"].nunique() == 2
    with pytest.raises(InputError, match="not fully rated"):
        _read(sample, _ratings_file(tmp_path, items, {items[1].image_id: [5, None, 5, 5]}))
    payload["ratings"].append(dict(payload["ratings"][0]))
    path.write_text(json.dumps(payload))
    with pytest.raises(InputError, match="is rated twice"):
        _read(sample, path)
    payload["ratings"][-1] = dict(payload["ratings"][0], image_id="nope")
    path.write_text(json.dumps(payload))
    with pytest.raises(InputError, match="rates image 'nope', not on this page"):
        _read(sample, path)
    whole = json.loads(_ratings_file(tmp_path, items).read_text())
    payload["ratings"] = whole["ratings"][:2] + [dict(whole["ratings"][2], order_key="0" * 16)]
    path.write_text(json.dumps(payload))
    with pytest.raises(InputError, match="has order key '0000000000000000'"):
        _read(sample, path)


def test_a_missing_or_broken_file_is_named(page, tmp_path):
    sample, _ = page
    with pytest.raises(MissingInputError, match="nowhere.json' is not there"):
        _read(sample, tmp_path / "nowhere.json")
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(InputError, match="broken.json' is not a JSON file"):
        _read(sample, broken)


def test_the_caption_order_comes_back_from_the_key_alone(page):
    _, items = page
    for item in items:
        assert caption_order(item.order_key, list(reversed(item.captioners))) == list(
            item.captioners
        )


def test_parameters_check_the_judge_and_take_one_path_or_many():
    with pytest.raises(ValueError, match="judge vlm needs a `vlm:` block"):
        RatingParams(judge="vlm")
    assert RatingParams(ratings="a.json").ratings == ["a.json"]
    assert RatingParams(ratings=None).ratings == []
    assert RatingParams(ratings=["a", "b"]).ratings == ["a", "b"]
    with pytest.raises(ValueError, match="trials"):
        RatingParams(trials=3)


@pytest.mark.parametrize("env", ["base", "paper", "rehearsal"])
def test_each_environments_rating_block_validates(env):
    root = Path(__file__).resolve().parents[3]
    loader = OmegaConfigLoader(str(root / "conf"), env=env, **settings.CONFIG_LOADER_ARGS)
    params = RatingParams(**loader["parameters"]["rating"])
    assert params.images == 200 and params.ratings == []
    if env == "paper":
        assert params.judge == "vlm" and params.vlm.model == "gemini-2.0-flash"
        assert params.journal_dir == "data/paper/07_model_output/rating_journal"
    else:
        assert params.judge == "rubric"
