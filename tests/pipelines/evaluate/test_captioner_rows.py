"""Table 1's rows beyond the project's own captioners: a caption file, an OpenAI-compatible
VLM (a stub server on 127.0.0.1, journaled), the published captioner; rows that cannot be made
stop the run before anything is captioned, or are left out when optional."""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from table1_factory import coco_params, world_as_coco

from vlv_pipeline.benchmarks.captioners import api_key, read_caption_file
from vlv_pipeline.captioners import CaptionerError
from vlv_pipeline.errors import InputError
from vlv_pipeline.params.evaluate import CocoParams, EvalCaptionerRow
from vlv_pipeline.pipelines.evaluate import nodes


class Stub:
    """A chat-completions server on 127.0.0.1 that answers by rule: ``answer(n)`` for the
    n-th request (the caption, or an int: an HTTP status)."""

    def __init__(self):
        self.requests: list[dict] = []
        self.answer = lambda n: f"a picture, answer {n}"
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                stub.requests.append({"body": body, "auth": self.headers.get("Authorization")})
                reply = stub.answer(len(stub.requests))
                if isinstance(reply, int):
                    status, data = reply, b'{"error": {"message": "refused"}}'
                else:
                    status = 200
                    data = json.dumps({"choices": [{"message": {"content": reply}}]}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"


@contextlib.contextmanager
def serving():
    stub = Stub()
    thread = threading.Thread(target=stub.httpd.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    try:
        yield stub
    finally:
        stub.httpd.shutdown()
        stub.httpd.server_close()


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch):
    for name in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="module")
def coco_set(tiny_world, tmp_path_factory):
    return world_as_coco(tiny_world, tmp_path_factory.mktemp("coco") / "coco")


def _openai_row(base_url: str, **kw) -> dict:
    openai = {"base_url": base_url, "model": "stub-vlm", "max_retries": 0, "backoff_s": 0}
    return {"kind": "openai", "name": "stub", "label": "a stub VLM", "openai": openai, **kw}


def _setup(tiny_world, tiny_sd, coco_set, tmp_path, rows, sample=4):
    source, manifest = tiny_world
    params = coco_params(
        tiny_sd,
        *coco_set,
        sample=sample,
        captioners=[{"kind": "reference"}, {"kind": "chance"}, *rows],
        journal_dir=str(tmp_path / "journal"),
    )
    return params, nodes.load_eval_data(source, manifest, params)


def test_an_openai_row_is_journaled_and_never_asked_twice(tiny_world, tiny_sd, coco_set, tmp_path):
    with serving() as stub:
        params, data = _setup(tiny_world, tiny_sd, coco_set, tmp_path, [_openai_row(stub.base_url)])
        table = nodes.caption_eval_images(None, None, data, params, None, {}, {})
        assert list(table.columns) == ["image_id", "reference", "chance", "stub"]
        assert len(stub.requests) == 4 and table["stub"].str.startswith("a picture").all()
        assert stub.requests[0]["auth"] is None  # loopback: no key needed, none sent
        # each image went as the evaluated pixels (a PNG data URL)
        content = stub.requests[0]["body"]["messages"][0]["content"]
        assert content[1]["image_url"]["url"].startswith("data:image/png;base64,")
        journals = list((tmp_path / "journal").glob("openai-*.jsonl"))
        assert len(journals) == 1 and len(journals[0].read_text().splitlines()) == 4
        again = nodes.caption_eval_images(None, None, data, params, None, {}, {})
        assert len(stub.requests) == 4  # every caption came from the journal
        assert again["stub"].tolist() == table["stub"].tolist()
        # a larger set asks only for the new images
        params6, data6 = _setup(
            tiny_world, tiny_sd, coco_set, tmp_path, [_openai_row(stub.base_url)], sample=6
        )
        nodes.caption_eval_images(None, None, data6, params6, None, {}, {})
        assert len(stub.requests) == 6
        # another COCO-format file numbers its images 1, 2, ... too: its ids are not the same
        # images, so it has a journal of its own
        other = world_as_coco(tiny_world, tmp_path / "other", extra_captions=2)
        coco = {**params.coco.model_dump(), "annotations": str(other[0]), "images": str(other[1])}
        params_b = params.model_copy(update={"coco": CocoParams(**coco)})
        data_b = nodes.load_eval_data(*tiny_world, params_b)
        assert data_b.image_ids == data.image_ids
        nodes.caption_eval_images(None, None, data_b, params_b, None, {}, {})
        assert len(stub.requests) == 10
        assert len(list((tmp_path / "journal").glob("openai-*.jsonl"))) == 2


def test_an_image_the_vlm_refuses_fails_the_row_and_is_asked_again(
    tiny_world, tiny_sd, coco_set, tmp_path
):
    with serving() as stub:
        stub.answer = lambda n: 400 if n == 2 else f"caption {n}"
        params, data = _setup(tiny_world, tiny_sd, coco_set, tmp_path, [_openai_row(stub.base_url)])
        with pytest.raises(CaptionerError, match=r"no caption for 1 of 4 images.*failed\.jsonl"):
            nodes.caption_eval_images(None, None, data, params, None, {}, {})
        stub.answer = lambda n: f"caption {n}"
        table = nodes.caption_eval_images(None, None, data, params, None, {}, {})
        assert len(stub.requests) == 5 and table["stub"].notna().all()  # only the refused one


def test_a_caption_file_in_the_official_format_is_a_row(tiny_world, tiny_sd, coco_set, tmp_path):
    params, data = _setup(tiny_world, tiny_sd, coco_set, tmp_path, [])
    path = tmp_path / "user_captions.json"
    document = {f"val2014/{f}": f"my caption of {f}" for f in data.files[:2]}  # paths: by name
    document |= {f: f"my caption of {f}" for f in data.files[2:]}
    document["rejected"] = {"broken.jpg": "corrupt: truncated"}
    path.write_text(json.dumps(document))
    assert "rejected" not in read_caption_file(path)
    row = {"kind": "file", "name": "mine", "label": "my captions", "path": str(path)}
    params, data = _setup(tiny_world, tiny_sd, coco_set, tmp_path, [row])
    table = nodes.caption_eval_images(None, None, data, params)
    assert table["mine"].tolist() == [f"my caption of {f}" for f in data.files]


def test_a_row_that_cannot_be_made_stops_the_run_before_anything_is_captioned(
    tiny_world, tiny_sd, coco_set, tmp_path
):
    path = tmp_path / "few.json"
    path.write_text(json.dumps({"COCO_val2014_000000000001.jpg": "one caption"}))
    with serving() as stub:
        rows = [
            _openai_row(stub.base_url),  # listed first: still never asked
            {"kind": "file", "name": "mine", "path": str(path)},
            _openai_row("https://api.example.com/v1", name="remote"),
            {"kind": "published"},
        ]
        params, data = _setup(tiny_world, tiny_sd, coco_set, tmp_path, rows)
        with pytest.raises(InputError) as raised:
            nodes.caption_eval_images(None, None, data, params, None, {}, {})
        assert stub.requests == []
    message = str(raised.value)
    assert "3 of the evaluation's captioners cannot be made" in message
    assert "(file 'mine')" in message and "no caption for" in message
    assert "(openai 'remote')" in message and "eval_captioners: {remote:" in message
    assert "(published 'published')" in message and "--pipeline import_published" in message


def test_an_optional_row_that_cannot_be_made_is_left_out_with_a_warning(
    tiny_world, tiny_sd, coco_set, tmp_path, caplog
):
    rows = [
        {"kind": "published", "optional": True},
        {**_openai_row("https://x.example/v1"), "optional": True},
    ]
    params, data = _setup(tiny_world, tiny_sd, coco_set, tmp_path, rows)
    with caplog.at_level(logging.WARNING):
        table = nodes.caption_eval_images(None, None, data, params, None, {}, {})
    assert list(table.columns) == ["image_id", "reference", "chance"]
    assert "left out (optional)" in caplog.text and "import_published" in caplog.text


def _lazy(folder, loads: list):
    """The catalog's eval_published_captioner: a lazy versioned model directory."""
    from kedro.io import Version

    from vlv_pipeline.datasets.model_directory import ModelDirectoryDataset

    lazy = ModelDirectoryDataset(
        filepath=str(folder),
        load_class="vlv_pipeline.models.captioner.VLVCaptioner",
        version=Version(None, None),
        lazy=True,
    ).load()

    def load():
        loads.append(folder)
        return lazy()

    load.where = lazy.where
    return load


def test_the_published_captioner_is_loaded_only_for_its_row(
    tiny_world, tiny_sd, coco_set, tmp_path
):
    from shapes_captioner import save_captioner, shapes_captioner

    loads: list = []
    params, data = _setup(tiny_world, tiny_sd, coco_set, tmp_path, [{"kind": "published"}])
    with pytest.raises(InputError, match=r"has no usable captioner.*import_published"):
        nodes.caption_eval_images(None, None, data, params, _lazy(tmp_path / "none", loads))
    save_captioner(shapes_captioner(image_size=16), tmp_path / "published")
    published = _lazy(tmp_path / "published", loads)
    loads.clear()
    other, _ = _setup(tiny_world, tiny_sd, coco_set, tmp_path, [])
    nodes.caption_eval_images(None, None, data, other, published)
    assert loads == []  # given, but no row names it: never read
    table = nodes.caption_eval_images(None, None, data, params, published)
    assert loads == [tmp_path / "published"]
    assert table["published"].map(lambda c: isinstance(c, str)).all()
    assert EvalCaptionerRow(kind="published").title == "VLV (published captioner)"


def test_an_openai_rows_key_comes_from_its_own_credentials_then_synthesizes():
    row = EvalCaptionerRow(**_openai_row("https://x.example/v1", name="gpt4o"))
    assert api_key(row, {"api_key": "sk-shared"}, {"gpt4o": {"api_key": "sk-own"}}) == "sk-own"
    assert api_key(row, {"api_key": "sk-shared"}, {"other": {"api_key": "sk-x"}}) == "sk-shared"
    assert api_key(row, {}, {}) is None
