"""The demo page (``make demo``, ``demo.py``) in a real headless browser (Debian's Chromium,
driven by Playwright): a tiny trained project's page is served on a free port of 127.0.0.1;
a shapes-world image is uploaded and the page shows the caption ``Captioner`` gives it and the
two renders the reconstruct pipeline makes; a non-image gets the caption pipeline's verdict,
shown on the page (issue 29, section 2)."""

from __future__ import annotations

import io
import socket
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from demo_factory import ROOT, tiny_demo_project  # noqa: E402

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
WAIT_MS = 120_000  # a render on a loaded 2-core machine

pytestmark = pytest.mark.skipif(
    not CHROMIUM.is_file(),
    reason="no Chromium at /usr/bin/chromium (apt-get install -y chromium chromium-driver; "
    ".ci/run installs it)",
)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """The page of a tiny trained project (conf/base, its data under tmp), served in this
    process on a free port; the models it loaded."""
    from kedro.framework.startup import bootstrap_project

    from vlv_pipeline import demo

    project = tiny_demo_project(tmp_path_factory.mktemp("demo"))
    bootstrap_project(ROOT)
    models = demo.load_models(project_path=ROOT, conf_source=str(project.conf))
    port = _free_port()
    with pytest.MonkeyPatch.context() as patch:  # uploads go to a folder of this test's
        patch.setenv("GRADIO_TEMP_DIR", str(tmp_path_factory.mktemp("gradio")))
        page = demo.serve(models, port=port)
        try:
            yield project, models, f"http://127.0.0.1:{port}/"
        finally:
            page.close()


@pytest.fixture
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            yield launched
        finally:
            launched.close()


def _shown_image(context, tab, elem_id: str) -> np.ndarray:
    """The pixels of the image the page shows in ``#elem_id`` (fetched as the page did)."""
    image = tab.locator(f"#{elem_id} img")
    image.wait_for(state="visible", timeout=WAIT_MS)
    assert image.evaluate("img => img.complete && img.naturalWidth") > 0
    response = context.request.get(image.get_attribute("src"))
    assert response.ok
    return np.asarray(Image.open(io.BytesIO(response.body())).convert("RGB"))


def test_an_upload_shows_its_caption_and_renders_and_a_non_image_its_verdict(
    served, browser, tmp_path
):
    from playwright.sync_api import expect

    from vlv_pipeline import Captioner

    project, models, url = served
    context = browser.new_context()
    tab = context.new_page()
    requests: list[str] = []
    tab.on("request", lambda request: requests.append(request.url))
    errors: list[str] = []
    tab.on("pageerror", lambda error: errors.append(str(error)))
    tab.goto(url)
    expect(tab).to_have_title("VLV auto-encoder: caption and reconstruct an image")

    tab.locator("#upload input[type=file]").set_input_files(str(project.image))
    caption = tab.locator("#caption textarea")
    expect(caption).not_to_have_value("", timeout=WAIT_MS)
    captioner = Captioner.from_pretrained(project.data / "06_models/vlv_captioner")
    assert caption.input_value() == captioner.caption(Image.open(project.image))
    expect(tab.locator("#error")).to_be_hidden()

    # the two renders (and the crop they are compared with) are the reconstruct pipeline's
    expected = models.reconstruct(project.image)
    for elem_id, image in (
        ("original", expected.original),
        ("from-embeddings", expected.from_embeddings),
        ("from-caption", expected.from_caption),
    ):
        shown = _shown_image(context, tab, elem_id)
        assert shown.shape == (models.render_side, models.render_side, 3), elem_id
        assert np.array_equal(shown, np.asarray(image)), elem_id

    tab.locator("#upload button[aria-label=Clear]").click()  # as a user replaces the file
    expect(caption).to_have_value("", timeout=WAIT_MS)
    notes = tmp_path / "notes.txt"
    notes.write_text("a shopping list, not an image\n")
    tab.locator("#upload input[type=file]").set_input_files(str(notes))
    error = tab.locator("#error")
    expect(error).to_be_visible(timeout=WAIT_MS)
    expect(error).to_contain_text("Refused: notes.txt is not an image (not_an_image)")
    assert "Traceback" not in error.text_content()
    expect(caption).to_have_value("")
    assert tab.locator("#from-embeddings img").count() == 0

    assert not errors
    # the page asks nothing of any other host
    assert requests and all(r.startswith(url) or r.startswith("data:") for r in requests)
    context.close()
