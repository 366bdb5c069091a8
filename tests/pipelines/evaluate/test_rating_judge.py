"""Table 2's VLM judge against a stub OpenAI-compatible server on 127.0.0.1 that answers by
rule: the strict score format, the journal (a rerun, or a run after a kill, never asks
twice), failures asked again, the key only in the header, the table's counts."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pandas as pd
import pytest
from PIL import Image
from rating_factory import WORLD, eval_set

from vlv_pipeline.captioners import CaptionerError
from vlv_pipeline.captioners.judge import (
    JudgeJournal,
    RubricJudge,
    journal_path,
    judge_prompt,
    parse_score,
    prompt_hash,
)
from vlv_pipeline.metrics.rubric import rubric_text
from vlv_pipeline.metrics.tables import PaperTable
from vlv_pipeline.params.rating import RatingParams
from vlv_pipeline.pipelines.evaluate import rating

KEY = "sk-judge-SECRET-0123456789"


@pytest.mark.parametrize(
    "answer, score",
    [
        ("The caption is right.\nScore: 6", 6),
        ("Score: 0", 0),
        ("  reasons\n\n  Score:4  \n\n", 4),
        ("Score: 5.", None),
        ("**Score: 5**", None),
        ("Score: 7", None),
        ("Score: -1", None),
        ("score: 5", None),
        ("Score: 5/6", None),
        ("Score: 5\nI hope this helps", None),
        ("I would give it a 5", None),
        ("", None),
        (None, None),
    ],
)
def test_the_score_is_parsed_strictly(answer, score):
    assert parse_score(answer) == score


def test_the_prompt_has_the_rubric_the_caption_and_the_answer_format():
    prompt = judge_prompt("a small red circle at the top")
    assert rubric_text() in prompt
    assert '"""\na small red circle at the top\n"""' in prompt
    assert prompt.rstrip().endswith("Write nothing after that line.")
    assert "`Score: N`" in prompt


class Stub:
    """Answers by the caption: one with "circle" -> "Score: 5", "square" -> an answer without
    the score line, anything else -> "Score: 3"; ``refuse`` (a word): HTTP 400 for captions
    with it."""

    def __init__(self):
        self.requests: list[dict] = []
        self.headers: list[dict] = []
        self.refuse: str | None = None
        self.status: int | None = None
        self.lock = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.httpd.daemon_threads = True
        self.httpd.stub = self
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def answer(self, body: dict) -> tuple[int, dict]:
        text = body["messages"][0]["content"][0]["text"]
        caption = re.search(r'Caption:\n"""\n(.*)\n"""', text, re.S).group(1)
        if self.status is not None:
            return self.status, {"error": {"message": "no"}}
        if self.refuse and self.refuse in caption:
            return 400, {"error": {"message": "refused"}}
        if "circle" in caption:
            content = "It names the circle.\nScore: 5"
        elif "square" in caption:
            content = "A fair caption, I'd say five out of six."
        else:
            content = "Something is off.\nScore: 3"
        return 200, {"choices": [{"message": {"role": "assistant", "content": content}}]}


class _Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        stub: Stub = self.server.stub
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with stub.lock:
            stub.requests.append(body)
            stub.headers.append(dict(self.headers))
        status, payload = stub.answer(body)
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format, *args):
        pass


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch):
    for name in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def stub():
    server = Stub()
    thread = threading.Thread(target=server.httpd.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    with contextlib.ExitStack() as stack:
        stack.callback(thread.join, 5)
        stack.callback(server.httpd.server_close)
        stack.callback(server.httpd.shutdown)
        yield server


def _params(stub: Stub, tmp_path, **kw) -> RatingParams:
    return RatingParams(
        images=6,
        judge="vlm",
        vlm={
            "base_url": stub.base_url,
            "model": "gemini-2.0-flash",
            "max_retries": 0,
            "backoff_s": 0,
            "max_concurrency": 2,
        },
        journal_dir=str(tmp_path / "journal"),
        **kw,
    )


def _run(stub, tmp_path, **kw):
    data, captions = eval_set(8)
    params = _params(stub, tmp_path, **kw)
    sample = rating.sample_rating_items(data, captions, params)
    judged = rating.judge_rating_items(data, sample, params, WORLD, {"api_key": KEY})
    return data, sample, judged, params


def _expected(caption: str) -> tuple[str, float | None]:
    if "circle" in caption:
        return "rated", 5.0
    if "square" in caption:
        return "unparsed", None
    return "rated", 3.0


def test_the_judge_rates_every_caption_once_and_a_rerun_asks_nothing(stub, tmp_path):
    data, sample, judged, params = _run(stub, tmp_path)
    # one request per distinct (image, caption): vlv repeats the reference's text
    distinct = {(i, c) for i, c in zip(sample["image_id"], sample["caption"], strict=True)}
    assert len(stub.requests) == len(distinct) < len(sample)
    for caption, status, score in zip(
        sample["caption"], judged["status"], judged["score"], strict=True
    ):
        want_status, want_score = _expected(caption)
        assert status == want_status
        assert pd.isna(score) if want_score is None else score == want_score
    unparsed = judged[judged["status"] == "unparsed"]
    assert (
        len(unparsed) and (unparsed["answer"] == "A fair caption, I'd say five out of six.").all()
    )
    # the request: the rubric and the caption as text, the image as a PNG data URL, the key
    # in the Authorization header only
    body = stub.requests[0]
    assert body["model"] == "gemini-2.0-flash" and body["max_tokens"] == 400
    url = body["messages"][0]["content"][1]["image_url"]["url"]
    image = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
    assert image.size == (16, 16)
    assert all(h["Authorization"] == f"Bearer {KEY}" for h in stub.headers)
    journal = journal_path(params.journal_dir, "gemini-2.0-flash")
    assert journal.name == f"gemini-2.0-flash-{prompt_hash()}.jsonl" and journal.is_file()
    assert KEY not in journal.read_text()
    assert len(JudgeJournal(journal).read()) == len(distinct)
    # again: every answer comes from the journal, nothing is asked
    asked = len(stub.requests)
    _, _, again, _ = _run(stub, tmp_path)
    assert len(stub.requests) == asked
    assert again.equals(judged)


def test_failures_are_counted_and_asked_again_answers_never(stub, tmp_path):
    stub.refuse = "triangle"
    _, sample, judged, params = _run(stub, tmp_path)
    failed = judged[judged["status"] == "failed"]
    with_triangle = sample["caption"].str.contains("triangle")
    assert with_triangle.any() and set(failed.index) == set(sample.index[with_triangle])
    assert failed["answer"].str.contains("HTTP 400").all() and failed["score"].isna().all()
    table = PaperTable.from_dict(
        rating.rating_table(sample, judged, rating.read_user_ratings(sample, params), params)
    )
    notes = " ".join(table.notes)
    assert "failed" in notes and "unparsed" in notes and "gemini-2.0-flash" in notes
    vlv = table.row("VLV captioner")
    n_rated = int(((judged["captioner"] == "vlv") & (judged["status"] == "rated")).sum())
    assert vlv.count["judge"] == n_rated  # unparsed and failed left out of the mean
    # the next run (the server now answers) asks only what failed
    stub.refuse = None
    asked = len(stub.requests)
    _, _, again, _ = _run(stub, tmp_path)
    distinct_failed = {
        (i, c)
        for i, c in zip(
            sample.loc[with_triangle, "image_id"], sample.loc[with_triangle, "caption"], strict=True
        )
    }
    assert len(stub.requests) - asked == len(distinct_failed)
    assert "failed" not in set(again["status"])


def test_a_run_killed_midway_resumes_from_the_journal(stub, tmp_path):
    """The answers journaled before the kill are not asked again."""
    _, sample, judged, params = _run(stub, tmp_path)
    journal = journal_path(params.journal_dir, "gemini-2.0-flash")
    lines = journal.read_text().splitlines()
    kept = len(lines) // 2
    # as a kill leaves it: the first answers, then a torn line
    journal.write_text("\n".join(lines[:kept]) + "\n" + lines[kept][:20])
    asked = len(stub.requests)
    _, _, again, _ = _run(stub, tmp_path)
    assert len(stub.requests) - asked == len(lines) - kept
    assert again.equals(judged)


def test_a_bad_key_stops_the_run_naming_the_judges_settings(stub, tmp_path):
    stub.status = 401
    with pytest.raises(CaptionerError, match=r"rating judge: .*HTTP 401 \(check the api key") as e:
        _run(stub, tmp_path)
    assert KEY not in str(e.value)
    stub.status = 404
    with pytest.raises(CaptionerError, match=r"check rating\.vlm\.base_url and model"):
        _run(stub, tmp_path)


def test_the_judges_repr_and_description_never_show_the_key(stub):
    judge = RubricJudge(base_url=stub.base_url, model="m", api_key=KEY)
    assert KEY not in repr(judge) and "RubricJudge" in repr(judge)
    assert judge.describe() == {
        "judge": "vlm",
        "model": "m",
        "base_url": stub.base_url,
        "prompt_hash": prompt_hash(),
    }
