"""The hand-written OpenAI-compatible client (captioners/openai_chat.py) against the `openai`
package, on one local server, in one run (issue 31 §4).

    python bench/bench_openai_client.py [--images 96] [--latency-ms 40] [--concurrency 8]

Scenarios, each run by both clients with the same settings (8 requests in flight, 3 retries):

- ``clean``: every answer arrives after ``--latency-ms``: throughput.
- ``flaky``: every third image's first request is answered 429 (``Retry-After: 1``) or 500
  (no header): do the retries hide it, at what cost (both back off from 0.5 s, the
  package's own start).
- ``trickle``: one image's answer arrives one byte every 0.5 s, forever: a per-read timeout
  never fires; only a deadline on the whole request ends it (the run is cut at 20 s).
- ``redirect``: the server answers 307 to another port: is the request (and its key) sent on.

The ``openai`` side uses its sync client in a thread pool of the same size (the async
client needs an event loop that Kedro nodes do not run; its timing is printed too). The
package is not a dependency of this project: install it where this bench can import it
(``pip install --target /tmp/oai openai`` and ``OPENAI_PATH=/tmp/oai``), else only the
hand-written client runs and the script says so. Numbers and the decision: bench/README.md
and docs/ARCHITECTURE.md ("OpenAI-compatible client").
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor, wait
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from vlv_pipeline.captioners import CaptionFailure  # noqa: E402
from vlv_pipeline.captioners.openai_chat import OpenAICaptioner  # noqa: E402

if os.environ.get("OPENAI_PATH"):
    sys.path.append(os.environ["OPENAI_PATH"])  # after this venv's packages: ours win
try:
    import openai
except ImportError:  # the package is optional here
    openai = None

PROMPT = "Describe the image."
SCENARIOS = ["clean", "flaky", "trickle", "redirect"]
KEY = "sk-bench-secret"


class Server:
    """A local chat-completions server whose answers follow one scenario."""

    def __init__(self, scenario: str, latency_s: float):
        self.scenario, self.latency_s = scenario, latency_s
        self.seen: dict[str, int] = {}
        self.requests = 0
        self.keys_at_target: list[str] = []
        self.lock = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.httpd.daemon_threads = True
        self.httpd.owner = self
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.target = None
        if scenario == "redirect":
            self.target = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
            self.target.daemon_threads = True
            self.target.owner = self
            self.target.is_target = True

    def __enter__(self) -> Server:
        for httpd in filter(None, (self.httpd, self.target)):
            threading.Thread(target=httpd.serve_forever, args=(0.02,), daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        for httpd in filter(None, (self.httpd, self.target)):
            httpd.shutdown()
            httpd.server_close()


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *args) -> None:  # quiet
        pass

    def do_POST(self) -> None:
        server: Server = self.server.owner
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        text = body["messages"][-1]["content"]
        image_id = next(p["text"] for p in text if p.get("type") == "text").split("#")[-1]
        with server.lock:
            server.requests += 1
            tries = server.seen[image_id] = server.seen.get(image_id, 0) + 1
        if getattr(self.server, "is_target", False):
            server.keys_at_target.append(self.headers.get("Authorization", ""))
        elif server.scenario == "redirect":
            self.send_response(307)
            self.send_header(
                "Location",
                f"http://127.0.0.1:{server.target.server_address[1]}/v1/chat/completions",
            )
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        time.sleep(server.latency_s)
        if server.scenario == "flaky" and tries == 1 and int(image_id) % 3 == 0:
            if int(image_id) % 2:
                self._send(429, b"{}", {"Retry-After": "1"})
            else:
                self._send(500, b"{}", {})
            return
        answer = json.dumps(
            {"choices": [{"message": {"role": "assistant", "content": f"caption {image_id}"}}]}
        ).encode()
        if server.scenario == "trickle" and image_id == "0":
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(answer) * 100))
            self.end_headers()
            try:
                for _ in range(len(answer) * 100):
                    self.wfile.write(b" ")
                    self.wfile.flush()
                    time.sleep(0.5)
            except OSError:
                pass
            return
        self._send(200, answer, {})

    def _send(self, status: int, payload: bytes, headers: dict) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(payload)


def _images(n: int) -> list[tuple[str, Image.Image]]:
    return [(str(i), Image.new("RGB", (32, 32), (i % 255, 40, 90))) for i in range(n)]


def ours(server: Server, images, concurrency: int) -> dict:
    """The project's client: caption_stream, a 5 s deadline per request, backoff from 0.5 s."""
    client = OpenAICaptioner(
        base_url=server.base_url,
        model="m",
        prompt=PROMPT,
        api_key=KEY,
        max_concurrency=concurrency,
        timeout_s=5,
        max_retries=3,
        backoff_s=0.5,
        deadline_s=5,
    )
    # the image id rides in the prompt so the server can tell the images apart
    client._body = lambda image, c=client: c._vision_body(f"{PROMPT} #{image.info['id']}", image)
    for image_id, image in images:
        image.info["id"] = image_id
    start, done, failed, error = time.perf_counter(), 0, 0, ""
    try:
        for _, caption in client.caption_stream(images):
            failed += isinstance(caption, CaptionFailure)
            done += not isinstance(caption, CaptionFailure)
    except Exception as exc:  # noqa: BLE001 - the scenario's outcome is the measurement
        error = f"{type(exc).__name__}: {str(exc)[:90]}"
    return {"s": time.perf_counter() - start, "ok": done, "failed": failed, "error": error}


def theirs(server: Server, images, concurrency: int, cut_s: float) -> dict:
    """The openai package's sync client in a pool of the same size; a run cut at ``cut_s``."""
    client = openai.OpenAI(base_url=server.base_url, api_key=KEY, max_retries=3, timeout=5.0)

    def one(item):
        image_id, _ = item
        content = [{"type": "text", "text": f"{PROMPT} #{image_id}"}]
        reply = client.chat.completions.create(
            model="m", max_tokens=300, messages=[{"role": "user", "content": content}]
        )
        return reply.choices[0].message.content

    start, error = time.perf_counter(), ""
    pool = ThreadPoolExecutor(concurrency)
    futures = [pool.submit(one, item) for item in images]
    finished, waiting = wait(futures, timeout=cut_s)
    done = sum(f.exception() is None for f in finished)
    if waiting:
        error = f"{len(waiting)} still waiting after {cut_s:.0f} s (cut)"
    elif failed := [f.exception() for f in finished if f.exception() is not None]:
        error = f"{type(failed[0]).__name__}: {str(failed[0])[:90]}"
    pool.shutdown(wait=False, cancel_futures=True)
    return {"s": time.perf_counter() - start, "ok": done, "failed": 0, "error": error}


def theirs_async(server: Server, images, concurrency: int) -> dict:
    client = openai.AsyncOpenAI(base_url=server.base_url, api_key=KEY, max_retries=3, timeout=5.0)
    gate = asyncio.Semaphore(concurrency)

    async def one(image_id):
        async with gate:
            content = [{"type": "text", "text": f"{PROMPT} #{image_id}"}]
            await client.chat.completions.create(
                model="m", max_tokens=300, messages=[{"role": "user", "content": content}]
            )

    async def run():
        await asyncio.gather(*(one(i) for i, _ in images))

    start = time.perf_counter()
    asyncio.run(run())
    return {"s": time.perf_counter() - start, "ok": len(images), "failed": 0, "error": ""}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=96)
    parser.add_argument("--latency-ms", type=float, default=40)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--only", nargs="+", default=SCENARIOS, choices=SCENARIOS)
    args = parser.parse_args()
    latency, n, width = args.latency_ms / 1000, args.images, args.concurrency
    if openai is None:
        print("the openai package is not importable: only the hand-written client runs")
    else:
        print(f"openai {openai.__version__} beside the hand-written client")
    print(f"{n} images, {args.latency_ms:.0f} ms a request, {width} in flight, 3 retries\n")
    print(f"{'scenario':<9} {'client':<13} {'s':>6} {'ok':>4} {'fail':>4} {'requests':>8}  note")
    for scenario in args.only:
        rows = {}
        sides = [("hand-written", lambda s: ours(s, _images(n), width))]
        if openai is not None:
            sides.append(("openai", lambda s: theirs(s, _images(n), width, cut_s=20)))
            if scenario == "clean":
                sides.append(("openai async", lambda s: theirs_async(s, _images(n), width)))
        for name, run in sides:
            with Server(scenario, latency) as server:
                row = run(server)
                note = row["error"]
                if scenario == "redirect":
                    sent = sum(KEY in k for k in server.keys_at_target)
                    note = f"{len(server.keys_at_target)} sent on, {sent} with the key; {note}"
                rows[name] = row
                print(
                    f"{scenario:<9} {name:<13} {row['s']:>6.2f} {row['ok']:>4} "
                    f"{row['failed']:>4} {server.requests:>8}  {note}"
                )
        if "openai" in rows and rows["openai"]["s"] > 0 and scenario in ("clean", "flaky"):
            print(
                f"{'':<9} ratio openai / hand-written: {rows['openai']['s'] / rows['hand-written']['s']:.2f}"
            )


if __name__ == "__main__":
    main()
