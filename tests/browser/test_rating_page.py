"""The blind rating page in a real headless browser (Debian's Chromium, driven by Playwright):
a rater scores a few images, moves back and forth, saves, and the pipeline reads the saved
file back into Table 2."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "pipelines" / "evaluate"))

from rating_factory import WORLD, eval_set  # noqa: E402

from vlv_pipeline.metrics.rating_page import page_id, page_items  # noqa: E402
from vlv_pipeline.metrics.tables import PaperTable  # noqa: E402
from vlv_pipeline.params.rating import RatingParams  # noqa: E402
from vlv_pipeline.pipelines.evaluate import rating  # noqa: E402

CHROMIUM = Path("/usr/bin/chromium")
ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
# what each captioner's captions get from this rater
GIVES = {"vlv": 6, "reference": 5, "without_stage1": 3, "chance": 0}

pytestmark = pytest.mark.skipif(
    not CHROMIUM.is_file(),
    reason="no Chromium at /usr/bin/chromium (apt-get install -y chromium chromium-driver; "
    ".ci/run installs it)",
)


@pytest.fixture
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            yield launched
        finally:
            launched.close()


def _rate_shown_image(tab, item) -> None:
    for slot, captioner in enumerate(item.captioners):
        tab.click(f"#score-{slot}-{GIVES[captioner]}")


def test_a_rater_scores_saves_and_the_pipeline_reads_the_file_back(browser, tmp_path):
    data, captions = eval_set(8)
    params = RatingParams(images=3)
    sample = rating.sample_rating_items(data, captions, params)
    items = page_items(sample, params.seed)
    page_file = tmp_path / "rating_page.html"
    page_file.write_text(rating.write_rating_page(data, sample, params), encoding="utf-8")

    context = browser.new_context(accept_downloads=True)
    tab = context.new_page()
    requests: list[str] = []
    tab.on("request", lambda request: requests.append(request.url))
    errors: list[str] = []
    tab.on("pageerror", lambda error: errors.append(str(error)))
    tab.goto(page_file.as_uri())
    assert tab.title() == "Rate the captions"
    assert tab.text_content("#page-id") == page_id(items)
    assert tab.text_content("#position") == "Image 1 of 3"
    assert tab.locator("#image").evaluate("img => img.complete && img.naturalWidth") == 16

    # the captions shown are the page's, in its order, with letters and no names
    shown = tab.locator(".caption .text").all_text_contents()
    assert shown == list(items[0].captions)
    assert tab.locator(".caption .letter").all_text_contents()[:2] == ["Caption A", "Caption B"]

    _rate_shown_image(tab, items[0])
    assert tab.text_content("#progress") == "1 of 3 images fully rated"
    tab.click("#next")
    _rate_shown_image(tab, items[1])
    tab.click("#prev")  # back: the first image's scores are still there
    assert tab.text_content("#position") == "Image 1 of 3"
    slot = items[0].captioners.index("vlv")
    assert tab.is_checked(f"#score-{slot}-6")
    tab.keyboard.press("ArrowRight")
    tab.keyboard.press("ArrowRight")
    assert tab.text_content("#position") == "Image 3 of 3"
    assert tab.is_disabled("#next")
    _rate_shown_image(tab, items[2])
    tab.fill("#rater", "rater one")

    with tab.expect_download() as download:
        tab.click("#save")
    saved = tmp_path / download.value.suggested_filename
    download.value.save_as(saved)
    assert saved.name == f"ratings-{page_id(items)}.json"
    assert "3 of 3 images fully rated" in tab.text_content("#status")
    assert not errors
    # nothing but the page itself, its embedded images and the download's blob was requested
    assert requests and all(url.split(":", 1)[0] in ("file", "data", "blob") for url in requests)

    content = json.loads(saved.read_text())
    assert content["rater"] == "rater one" and content["page_id"] == page_id(items)
    for name in ('"vlv"', "without_stage1", '"chance"', '"reference"'):
        assert name not in saved.read_text()  # blind: no captioner named in the file

    users = rating.read_user_ratings(sample, RatingParams(images=3, ratings=[str(saved)]))
    assert len(users) == 3 * 4 and set(users["rater"]) == {"rater one"}
    assert all(GIVES[c] == s for c, s in zip(users["captioner"], users["score"], strict=True))
    judged = rating.judge_rating_items(data, sample, params, WORLD, {})
    table = PaperTable.from_dict(rating.rating_table(sample, judged, users, params))
    assert table.row("VLV captioner").values["users"] == 6.0
    assert table.row("reference captions (upper bound)").values["users"] == 5.0
    assert table.row('"without stage 1"').values["users"] == 3.0
    assert table.row("chance (another image's reference caption)").values["users"] == 0.0
    assert table.row("VLV captioner").count["users"] == 3

    # a reload keeps the scores (the browser's local storage, keyed by the page's id)
    tab.reload()
    assert tab.text_content("#progress") == "3 of 3 images fully rated"
    context.close()


def test_a_partly_rated_page_saves_nulls_the_reader_refuses_unless_told(browser, tmp_path):
    data, captions = eval_set(8)
    params = RatingParams(images=2)
    sample = rating.sample_rating_items(data, captions, params)
    items = page_items(sample, params.seed)
    page_file = tmp_path / "page.html"
    page_file.write_text(rating.write_rating_page(data, sample, params), encoding="utf-8")
    context = browser.new_context(accept_downloads=True)
    tab = context.new_page()
    tab.goto(page_file.as_uri())
    tab.click("#score-0-4")  # one caption of the first image only
    with tab.expect_download() as download:
        tab.click("#save")
    saved = tmp_path / "partial.json"
    download.value.save_as(saved)
    context.close()
    scores = [r["scores"] for r in json.loads(saved.read_text())["ratings"]]
    assert scores[0][0] == 4 and scores[0][1:] == [None] * 3 and scores[1] == [None] * 4
    from vlv_pipeline.errors import InputError

    with pytest.raises(InputError, match="2 of the page's 2 images are not fully rated"):
        rating.read_user_ratings(sample, RatingParams(images=2, ratings=[str(saved)]))
    users = rating.read_user_ratings(
        sample, RatingParams(images=2, ratings=[str(saved)], complete_ratings=False)
    )
    assert users.values.tolist() == [[items[0].image_id, items[0].captioners[0], 4, saved.stem]]
