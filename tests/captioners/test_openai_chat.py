"""OpenAICaptioner against a scripted fake chat-completions server on 127.0.0.1."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import re
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from PIL import Image

from vlv_pipeline.captioners import CaptionerError, CaptionFailure
from vlv_pipeline.captioners.failures import parse_retry_after
from vlv_pipeline.captioners.journal import CaptionJournal
from vlv_pipeline.captioners.openai_chat import OpenAICaptioner
from vlv_pipeline.captioners.transport import THREAD_NAME_PREFIX

KEY = "sk-test-SECRET-0123456789"
PROMPT = "Describe the image in one sentence."


@dataclass
class Request:
    path: str
    headers: dict[str, str]
    body: dict

    @property
    def image(self) -> Image.Image:
        url = self.body["messages"][0]["content"][1]["image_url"]["url"]
        return Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))

    @property
    def image_id(self) -> str:
        """The test images encode their id in the red channel of pixel (0, 0)."""
        return f"img{self.image.convert('RGB').getpixel((0, 0))[0]}"


def answer(caption: str) -> tuple[int, dict, dict]:
    return 200, {}, {"choices": [{"message": {"role": "assistant", "content": caption}}]}


def caption_for(request: Request) -> str:
    image = request.image
    return f"  a {image.width}x{image.height} {image.mode} picture of {request.image_id}\n"


class FakeServer:
    """``respond(request) -> (status, headers, json-able or bytes)``, settable per test."""

    def __init__(self):
        self.respond = lambda request: answer(caption_for(request))
        self.requests: list[Request] = []
        self.lock = threading.Lock()
        self.in_flight = 0
        self.max_in_flight = 0
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.httpd.daemon_threads = True
        self.httpd.fake = self
        self.httpd.handle_error = lambda request, address: None  # clients that hung up
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.url = f"{self.base_url}/chat/completions"

    def attempts(self) -> Counter:
        with self.lock:
            return Counter(r.image_id for r in self.requests)


class _Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        fake: FakeServer = self.server.fake
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length)) if length else {}
        request = Request(self.path, dict(self.headers), body)
        with fake.lock:
            fake.requests.append(request)
            fake.in_flight += 1
            fake.max_in_flight = max(fake.max_in_flight, fake.in_flight)
        try:
            status, headers, payload = fake.respond(request)
        finally:
            with fake.lock:
                fake.in_flight -= 1
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        try:
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except OSError:
            pass  # the client timed out and went away

    do_GET = do_POST  # a followed redirect may turn the POST into a GET

    def log_message(self, format, *args):
        pass


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch):
    for name in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        monkeypatch.delenv(name, raising=False)


@contextlib.contextmanager
def running(fake: FakeServer):
    thread = threading.Thread(target=fake.httpd.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    try:
        yield fake
    finally:
        fake.httpd.shutdown()
        fake.httpd.server_close()
        thread.join(5)


@pytest.fixture
def server():
    with running(FakeServer()) as fake:
        yield fake


@pytest.fixture
def elsewhere():
    """A second server, on another port: another origin."""
    with running(FakeServer()) as fake:
        yield fake


def make_images(n: int, mode: str = "RGB") -> list[tuple[str, Image.Image]]:
    """img<i>: size (8+i)x(5+i), pixel (0, 0) has red = i (lossless in PNG)."""
    items = []
    for i in range(n):
        image = Image.new("RGB", (8 + i, 5 + i), (i, 100, 200))
        items.append((f"img{i}", image.convert(mode)))
    return items


def captioner(server: FakeServer, **kwargs) -> OpenAICaptioner:
    options = dict(
        base_url=server.base_url,
        model="gpt-test",
        prompt=PROMPT,
        api_key=KEY,
        max_concurrency=4,
        timeout_s=5,
        max_retries=3,
        backoff_s=0.01,
    )
    options.update(kwargs)
    return OpenAICaptioner(**options)


# ---------------------------------------------------------------- happy path and request shape


def test_captions_map_to_their_images_and_requests_have_the_documented_shape(server):
    items = make_images(10)
    results = list(captioner(server, max_concurrency=3, max_tokens=77).caption_stream(items))

    assert len(results) == 10
    captions = dict(results)
    for i in range(10):  # stripped, and derived from the image the server decoded
        assert captions[f"img{i}"] == f"a {8 + i}x{5 + i} RGB picture of img{i}"
    assert server.attempts() == Counter({f"img{i}": 1 for i in range(10)})

    request = server.requests[0]
    assert request.path == "/v1/chat/completions"
    assert request.headers["Authorization"] == f"Bearer {KEY}"
    assert request.headers["Content-Type"] == "application/json"
    assert request.body["model"] == "gpt-test"
    assert request.body["max_tokens"] == 77
    [message] = request.body["messages"]
    assert message["role"] == "user"
    text, image = message["content"]
    assert text == {"type": "text", "text": PROMPT}
    assert image["type"] == "image_url"
    assert image["image_url"]["url"].startswith("data:image/png;base64,")
    assert request.image.format == "PNG"


def test_images_are_sent_as_rgb_and_jpeg_is_labelled_as_such(server):
    items = make_images(2, mode="RGBA") + [("gray", Image.new("L", (4, 4), 7))]
    cap = captioner(server, image_format="jpeg", api_key=None, base_url=server.base_url + "/")
    captions = dict(cap.caption_stream(items))

    assert set(captions) == {"img0", "img1", "gray"}
    for request in server.requests:
        url = request.body["messages"][0]["content"][1]["image_url"]["url"]
        assert url.startswith("data:image/jpeg;base64,")
        assert request.image.mode == "RGB"
        assert "Authorization" not in request.headers  # no key: no header
        assert request.path == "/v1/chat/completions"  # trailing slash in base_url


def test_empty_input_yields_nothing(server):
    assert list(captioner(server).caption_stream(iter([]))) == []
    assert server.requests == []


# ---------------------------------------------------------------- concurrency and laziness


def test_requests_in_flight_never_exceed_max_concurrency(server):
    def slow(request):
        time.sleep(0.05)
        return answer(caption_for(request))

    server.respond = slow
    results = list(captioner(server, max_concurrency=3).caption_stream(make_images(15)))

    assert len(results) == 15
    assert 2 <= server.max_in_flight <= 3  # concurrent, but bounded


def test_the_input_is_consumed_lazily(server):
    pulled = 0

    def generate():
        nonlocal pulled
        for item in make_images(40):
            pulled += 1
            yield item

    stream = captioner(server, max_concurrency=2).caption_stream(generate())
    next(stream)
    assert pulled <= 2 * 2  # at most 2 * max_concurrency images taken before a result
    assert len(list(stream)) == 39
    assert pulled == 40


def test_a_caller_that_stops_early_cancels_the_rest(server):
    stream = captioner(server, max_concurrency=2).caption_stream(make_images(40))
    next(stream)
    stream.close()  # e.g. the caller broke out of its loop

    assert _no_captioner_threads_left()
    assert len(server.requests) <= 2 * 2 + 2


# ---------------------------------------------------------------- retries


def _fail_first(times: int, status: int, headers: dict | None = None, image_id: str = "img1"):
    """Answer ``status`` to the first ``times`` requests for ``image_id``, then captions."""
    seen = Counter()
    lock = threading.Lock()

    def respond(request):
        with lock:
            seen[request.image_id] += 1
            n = seen[request.image_id]
        if request.image_id == image_id and n <= times:
            return status, headers or {}, {"error": {"message": f"try again ({status})"}}
        return answer(caption_for(request))

    return respond


@pytest.mark.parametrize(
    ("status", "headers"),
    [(429, {"Retry-After": "0"}), (503, {}), (500, {}), (502, {"Retry-After": "soon"})],
)
def test_429_and_5xx_are_retried_until_success(server, status, headers):
    server.respond = _fail_first(2, status, headers)
    captions = dict(captioner(server).caption_stream(make_images(3)))

    assert set(captions) == {"img0", "img1", "img2"}
    assert server.attempts() == Counter({"img0": 1, "img1": 3, "img2": 1})


def test_a_numeric_retry_after_is_honoured(server):
    server.respond = _fail_first(1, 429, {"Retry-After": "0.3"})
    start = time.monotonic()
    captions = dict(captioner(server, backoff_s=0.01).caption_stream(make_images(2)))

    assert time.monotonic() - start >= 0.3
    assert set(captions) == {"img0", "img1"}
    assert server.attempts()["img1"] == 2


def test_parse_retry_after():
    assert parse_retry_after(None) is None
    assert parse_retry_after("0") == 0
    assert parse_retry_after(" 2 ") == 2
    assert parse_retry_after("3600") == 60  # capped
    assert parse_retry_after("-1") is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") is None


def test_persistent_5xx_fails_the_image_after_max_retries_plus_one_attempts(server):
    # a server that quotes the Authorization header back: the key must not reach the reason
    server.respond = lambda request: (
        500,
        {},
        {"error": {"message": f"the model fell over ({request.headers['Authorization']})"}},
    )
    cap = captioner(server, max_concurrency=1, max_retries=2)
    [(image_id, failure)] = list(cap.caption_stream(make_images(1)))

    assert image_id == "img0" and isinstance(failure, CaptionFailure)
    assert server.attempts() == Counter({"img0": 3}) and failure.attempts == 3
    assert server.url in failure.reason
    assert "HTTP 500" in failure.reason
    assert "the model fell over (Bearer ***)" in failure.reason
    assert "3 attempt" in failure.reason
    assert KEY not in failure.reason and KEY not in repr(failure)


def test_a_timeout_is_retried(server):
    seen = Counter()

    def slow_first(request):
        seen[request.image_id] += 1
        if seen[request.image_id] == 1:
            time.sleep(0.6)  # longer than timeout_s
        return answer(caption_for(request))

    server.respond = slow_first
    cap = captioner(server, max_concurrency=1, timeout_s=0.2)
    assert dict(cap.caption_stream(make_images(1))) == {"img0": "a 8x5 RGB picture of img0"}
    assert server.attempts() == Counter({"img0": 2})


def test_connection_errors_are_retried_then_reported():
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    base_url = f"http://127.0.0.1:{port}/v1"
    cap = OpenAICaptioner(
        base_url=base_url, model="m", prompt="p", api_key=KEY, max_retries=2, backoff_s=0.01
    )
    with pytest.raises(CaptionerError) as info:
        list(cap.caption_stream(make_images(1)))

    text = str(info.value)
    assert f"{base_url}/chat/completions" in text
    assert "3 attempt" in text
    assert "no HTTP status" in text
    assert KEY not in text


# ---------------------------------------------------------------- deadline (issue 26, item 14)


class TrickleServer:
    """A server on 127.0.0.1 that answers every request with a caption, one byte every
    ``interval`` seconds: from the status line on (``phase="headers"``) or after headers sent
    at once (``phase="body"``). Each byte comes well within any per-read timeout."""

    def __init__(self, phase: str, interval: float = 0.05):
        self.phase, self.interval = phase, interval
        self.requests = 0
        self.stop = threading.Event()
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.05)
        self.base_url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/v1"
        self.thread = threading.Thread(target=self._accept, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(5)
        self.sock.close()

    def _accept(self):
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            self.requests += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket):
        with conn:
            try:
                data = b""
                while b"\r\n\r\n" not in data:
                    data += conn.recv(65536)
                head, body = data.split(b"\r\n\r\n", 1)
                length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))
                while len(body) < length:
                    body += conn.recv(65536)
                payload = json.dumps(answer("a caption sent slowly")[2]).encode()
                headers = (
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n"
                ).encode()
                rest = headers + payload
                if self.phase == "body":
                    conn.sendall(headers)
                    rest = payload
                for byte in rest:
                    if self.stop.is_set():
                        return
                    conn.sendall(bytes([byte]))
                    time.sleep(self.interval)
            except OSError:
                pass  # the client hung up


@pytest.mark.parametrize("phase", ["headers", "body"])
def test_a_trickling_server_is_cut_off_at_the_deadline(phase):
    """timeout_s bounds each socket read, and a byte every 50 ms never trips it (the whole
    answer would take 4-9 s); deadline_s bounds the request as a whole."""
    with TrickleServer(phase) as server:
        cap = OpenAICaptioner(
            base_url=server.base_url,
            model="m",
            prompt="p",
            api_key=KEY,
            timeout_s=5,
            deadline_s=0.5,
            max_retries=1,
            backoff_s=0.01,
        )
        start = time.monotonic()
        [(image_id, failure)] = list(cap.caption_stream(make_images(1)))
        elapsed = time.monotonic() - start

    assert image_id == "img0" and isinstance(failure, CaptionFailure)
    assert "deadline_s = 0.5" in failure.reason and "2 attempt" in failure.reason
    assert server.requests == 2  # cut off, then retried once like a timeout
    assert 0.9 <= elapsed < 2.0
    assert _no_captioner_threads_left()  # no watchdog left behind


def test_an_answer_within_the_deadline_is_kept(server):
    def slow(request):
        time.sleep(0.3)
        return answer(caption_for(request))

    server.respond = slow
    cap = captioner(server, max_concurrency=2, deadline_s=2)
    assert dict(cap.caption_stream(make_images(2))) == {
        "img0": "a 8x5 RGB picture of img0",
        "img1": "a 9x6 RGB picture of img1",
    }
    assert server.attempts() == Counter({"img0": 1, "img1": 1})


# ---------------------------------------------------------------- redirects (issue 26, item 1)


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_a_redirect_is_refused_and_the_key_goes_nowhere_else(server, elsewhere, status):
    """A redirect to another origin must not carry the Authorization header there: the
    captioner follows no redirect, and says where the server wanted to send it."""
    target = f"{elsewhere.base_url}/chat/completions?token=not-for-the-error"
    server.respond = lambda request: (status, {"Location": target}, {"moved": True})
    got = []
    with pytest.raises(CaptionerError) as info:
        for result in captioner(server, max_concurrency=1).caption_stream(make_images(1)):
            got.append(result)

    assert elsewhere.requests == []  # neither the key nor the image went there
    assert got == []  # nothing journaled from an address the image was never sent to
    assert server.attempts() == Counter({"img0": 1})  # not retried
    text = str(info.value)
    origin = elsewhere.base_url.removesuffix("/v1")
    assert server.url in text and origin in text
    assert "redirect" in text and "base_url" in text
    assert "not-for-the-error" not in text  # the origin only, not the whole Location
    assert KEY not in text and KEY not in repr(info.value)


def test_a_same_origin_redirect_is_refused_too(server):
    server.respond = lambda request: (302, {"Location": "/v2/chat/completions"}, {})
    with pytest.raises(CaptionerError, match="redirect") as info:
        list(captioner(server, max_concurrency=1).caption_stream(make_images(1)))
    assert [r.path for r in server.requests] == ["/v1/chat/completions"]
    assert server.base_url.removesuffix("/v1") in str(info.value)


# ---------------------------------------------------------------- errors that are not retried


def test_400_fails_the_image_at_once_with_the_server_message(server):
    long_tail = "x" * 3000
    server.respond = lambda request: (
        400,
        {},
        {"error": {"message": f"Invalid image_url for {request.image_id} {long_tail}"}},
    )
    [(image_id, failure)] = list(
        captioner(server, max_concurrency=1).caption_stream(make_images(1))
    )

    assert image_id == "img0" and isinstance(failure, CaptionFailure)
    assert server.attempts() == Counter({"img0": 1}) and failure.attempts == 1
    assert "HTTP 400" in failure.reason
    assert "Invalid image_url for img0" in failure.reason
    assert server.url in failure.reason
    assert len(failure.reason) < 800  # the server's message is truncated


def test_non_json_error_bodies_are_quoted(server):
    server.respond = lambda request: (404, {}, b"<html>no such route</html>")
    with pytest.raises(CaptionerError, match=r"HTTP 404.*no such route"):
        list(captioner(server).caption_stream(make_images(1)))


@pytest.mark.parametrize("status", [401, 403])
def test_auth_failures_point_at_the_credentials_file(server, status):
    # a server that echoes the Authorization header it got: the key must still not leak
    server.respond = lambda request: (
        status,
        {},
        {"error": {"message": f"bad key: {request.headers['Authorization']}"}},
    )
    cap = captioner(server)
    with pytest.raises(CaptionerError) as info:
        list(cap.caption_stream(make_images(3)))

    text = str(info.value)
    assert f"HTTP {status}" in text
    assert "conf/local/credentials.yml" in text
    assert "bad key: Bearer ***" in text
    assert KEY not in text
    assert KEY not in repr(info.value)
    assert KEY not in repr(cap)
    assert KEY not in json.dumps(cap.describe())
    assert sum(server.attempts().values()) <= 3  # no retries


@pytest.mark.parametrize(
    ("payload", "match"),
    [
        (b"this is not json", "malformed JSON"),
        ({"choices": []}, r"choices\[0\]\.message\.content"),
        ({"choices": [{"message": {"role": "assistant"}}]}, r"choices\[0\]\.message\.content"),
        ({"choices": [{"message": {"content": None}}]}, "not text"),
        ({"choices": [{"message": {"content": "  \n"}, "finish_reason": "length"}]}, "empty"),
    ],
)
def test_a_malformed_answer_fails_the_image_after_bad_answer_attempts(server, payload, match):
    server.respond = lambda request: (200, {}, payload)
    cap = captioner(server, max_concurrency=1, bad_answer_attempts=2)
    [(image_id, failure)] = list(cap.caption_stream(make_images(1)))

    assert image_id == "img0" and isinstance(failure, CaptionFailure)
    assert re.search(match, failure.reason) and "2 unusable answer" in failure.reason
    assert server.attempts() == Counter({"img0": 2}) and failure.attempts == 2


def test_a_malformed_answer_is_asked_again(server):
    seen = Counter()

    def respond(request):
        seen[request.image_id] += 1
        if seen[request.image_id] == 1:
            return 200, {}, b"{not json"
        return answer(caption_for(request))

    server.respond = respond
    cap = captioner(server, max_concurrency=1, bad_answer_attempts=2)
    assert dict(cap.caption_stream(make_images(1))) == {"img0": "a 8x5 RGB picture of img0"}


def test_content_given_as_parts_is_joined(server):
    server.respond = lambda request: (
        200,
        {},
        {"choices": [{"message": {"content": [{"type": "text", "text": " a red square "}]}}]},
    )
    assert dict(captioner(server).caption_stream(make_images(1))) == {"img0": "a red square"}


def _no_captioner_threads_left(seconds: float = 3) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and any(
        t.name.startswith(THREAD_NAME_PREFIX) for t in threading.enumerate()
    ):
        time.sleep(0.02)
    return not any(t.name.startswith(THREAD_NAME_PREFIX) for t in threading.enumerate())


def test_a_fatal_error_stops_promptly_and_cancels_the_backlog(server):
    img2_sent = threading.Event()

    def respond(request):
        if request.image_id == "img0":
            img2_sent.wait(2)  # answer once img2 is in flight
            return 401, {}, {"error": {"message": "nope"}}
        if request.image_id == "img1":  # asks for a long wait: the worker must not sleep it out
            return 503, {"Retry-After": "30"}, {"error": {"message": "busy"}}
        img2_sent.set()
        time.sleep(0.5)
        return answer(caption_for(request))

    server.respond = respond
    start = time.monotonic()
    got = []
    with pytest.raises(CaptionerError, match="nope"):
        for result in captioner(server, max_concurrency=3).caption_stream(make_images(30)):
            got.append(result)
    # the backlog would take 5 s and img1 asked for 30 s: only the request in flight (0.5 s)
    # is waited for, and its answer is yielded before the error
    assert time.monotonic() - start < 0.95
    assert got == [("img2", "a 10x7 RGB picture of img2")]

    assert _no_captioner_threads_left()
    assert len(server.requests) <= 3  # the queued images were never sent
    assert server.attempts()["img1"] <= 1  # its Retry-After sleep was cut short, not retried


def test_images_that_stay_bad_are_reported_and_the_run_goes_on(server):
    """HTTP 500s, invalid JSON, empty captions, a refused image and a slow answer: each bad
    image is given up on with its reason, and every other image is captioned."""

    def respond(request):
        match request.image_id:
            case "img1":
                return 500, {}, {"error": {"message": "internal error"}}
            case "img2":
                return 200, {}, b'{"choices": [{"message": '
            case "img3":
                return 200, {}, {"choices": [{"message": {"content": ""}, "finish_reason": "stop"}]}
            case "img4":
                return 400, {}, {"error": {"message": "content policy"}}
            case "img5":
                time.sleep(0.3)
        return answer(caption_for(request))

    server.respond = respond
    cap = captioner(server, max_concurrency=3, max_retries=2, bad_answer_attempts=2)
    results = dict(cap.caption_stream(make_images(8)))

    assert sorted(results) == [f"img{i}" for i in range(8)]
    failed = {i: r for i, r in results.items() if isinstance(r, CaptionFailure)}
    assert sorted(failed) == ["img1", "img2", "img3", "img4"]
    assert "HTTP 500" in failed["img1"].reason and "internal error" in failed["img1"].reason
    assert "malformed JSON" in failed["img2"].reason
    assert "empty caption" in failed["img3"].reason
    assert "HTTP 400" in failed["img4"].reason and "content policy" in failed["img4"].reason
    assert results["img5"] == "a 13x10 RGB picture of img5"
    assert server.attempts() == Counter(
        {"img0": 1, "img1": 3, "img2": 2, "img3": 2, "img4": 1, "img5": 1, "img6": 1, "img7": 1}
    )


def test_rate_limits_that_outlast_the_retries_stop_the_stream(server):
    """A 429 is never about the image: giving up on the images one by one would mark them
    all failed, so it stops the stream instead."""
    server.respond = lambda request: (429, {}, {"error": {"message": "quota exceeded"}})
    with pytest.raises(CaptionerError, match=r"HTTP 429.*quota exceeded.*max_concurrency"):
        list(captioner(server, max_concurrency=1, max_retries=1).caption_stream(make_images(3)))
    assert server.attempts()["img0"] == 2


# ---------------------------------------------------------------- a bad key answered with 400


def _bad_key(request):
    # some OpenAI-compatible servers answer a bad key with 400, which reads as the image's fault
    return 400, {}, {"error": {"message": "Incorrect API key provided: sk-te****6789"}}


def test_a_run_whose_first_answers_all_fail_stops_with_the_servers_message(server):
    server.respond = _bad_key
    cap = captioner(server, max_concurrency=2, stop_after_first_failures=4)
    got = []
    with pytest.raises(CaptionerError) as info:
        for result in cap.caption_stream(make_images(40)):
            got.append(result)

    text = str(info.value)
    assert got == []  # no image is given up on (and so recorded as failed) for a bad key
    assert "first 4 answers" in text and "no caption" in text
    assert "HTTP 400" in text and "Incorrect API key provided" in text  # the last answer
    assert "conf/local/credentials.yml" in text and "stop_after_first_failures" in text
    assert KEY not in text
    # the 4 answers and what the window (2 x max_concurrency) had let start before the 4th
    # was read: workers take queued images without waiting for the stream, no more
    assert len(server.requests) <= 4 + 2 * 2
    assert _no_captioner_threads_left()


def test_a_caption_before_the_kth_failure_lets_the_run_go_on(server):
    def respond(request):
        if request.image_id in ("img0", "img1", "img4"):
            return _bad_key(request)
        return answer(caption_for(request))

    server.respond = respond
    cap = captioner(server, max_concurrency=1, stop_after_first_failures=3)
    results = dict(cap.caption_stream(make_images(6)))

    assert sorted(results) == [f"img{i}" for i in range(6)]  # the held failures come too
    failed = sorted(i for i, r in results.items() if isinstance(r, CaptionFailure))
    assert failed == ["img0", "img1", "img4"]
    assert "Incorrect API key" in results["img0"].reason


def test_fewer_answers_than_the_guard_are_all_reported(server):
    server.respond = _bad_key
    cap = captioner(server, max_concurrency=2, stop_after_first_failures=8)
    results = dict(cap.caption_stream(make_images(3)))
    assert sorted(results) == ["img0", "img1", "img2"]
    assert all(isinstance(r, CaptionFailure) for r in results.values())


def test_the_guard_is_off_by_default(server):
    server.respond = _bad_key
    results = list(captioner(server, max_concurrency=2).caption_stream(make_images(12)))
    assert len(results) == 12 and all(isinstance(r, CaptionFailure) for _, r in results)


# ---------------------------------------------------------------- resumability with the journal


def test_a_failed_run_resumes_from_the_journal(server, tmp_path):
    journal = CaptionJournal(tmp_path / "captions.jsonl")
    items = make_images(6)
    broken = {"on": True}

    def respond(request):
        if broken["on"] and request.image_id == "img3":
            return 403, {}, {"error": {"message": "key revoked"}}
        return answer(caption_for(request))

    server.respond = respond
    cap = captioner(server, max_concurrency=1)

    with pytest.raises(CaptionerError, match="key revoked"):
        for image_id, caption in cap.caption_stream(items):
            journal.append(image_id, caption)
    # one at a time: exactly the images before the failing one were yielded and kept
    assert set(journal.read()) == {"img0", "img1", "img2"}

    broken["on"] = False
    done = journal.read()
    todo = [(image_id, image) for image_id, image in items if image_id not in done]
    for image_id, caption in cap.caption_stream(todo):
        journal.append(image_id, caption)

    records = journal.read()
    assert set(records) == {f"img{i}" for i in range(6)}
    assert records["img4"]["caption"] == "a 12x9 RGB picture of img4"
    # nothing captioned twice with success: the rerun sent only img3..img5
    assert server.attempts() == Counter(
        {"img0": 1, "img1": 1, "img2": 1, "img3": 2, "img4": 1, "img5": 1}
    )


# ---------------------------------------------------------------- arguments


def test_describe_names_the_backend_without_the_key(server):
    cap = captioner(server, base_url=server.base_url + "/")
    assert cap.describe() == {
        "captioner": "openai",
        "model": "gpt-test",
        "base_url": server.base_url,
        "prompt": PROMPT,
    }


@pytest.mark.parametrize(
    ("overrides", "name"),
    [
        ({"base_url": ""}, "base_url"),
        ({"base_url": "api.openai.com/v1"}, "base_url"),
        ({"model": " "}, "model"),
        ({"prompt": ""}, "prompt"),
        ({"api_key": ""}, "api_key"),
        ({"max_concurrency": 0}, "max_concurrency"),
        ({"max_concurrency": 2.5}, "max_concurrency"),
        ({"timeout_s": 0}, "timeout_s"),
        ({"deadline_s": 0}, "deadline_s"),
        ({"max_retries": -1}, "max_retries"),
        ({"backoff_s": -0.5}, "backoff_s"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"bad_answer_attempts": 0}, "bad_answer_attempts"),
        ({"image_format": "GIF"}, "image_format"),
        ({"stop_after_first_failures": -1}, "stop_after_first_failures"),
    ],
)
def test_bad_arguments_are_rejected_by_name(overrides, name):
    options = dict(base_url="http://127.0.0.1:1/v1", model="m", prompt="p", api_key=KEY)
    options.update(overrides)
    with pytest.raises(ValueError, match=name):
        OpenAICaptioner(**options)
