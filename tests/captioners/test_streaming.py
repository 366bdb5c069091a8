"""The chat client's thread pool (captioners/streaming.py): how many requests a server that
refuses everything receives before the first-failures guard stops the stream."""

from __future__ import annotations

import threading
import time

import pytest

from vlv_pipeline.captioners import CaptionFailure
from vlv_pipeline.captioners.streaming import stream


class Refused(Exception):
    pass


@pytest.mark.parametrize("max_concurrency", [1, 2, 4])
def test_the_guard_stops_before_workers_run_ahead_of_its_count(max_concurrency):
    """Refusals, one of them slow: a worker that has answered must not take another queued
    image before the stream has counted its answer, so at most guard + max_concurrency - 1
    are sent (with a queue of 2 x max_concurrency, the other workers ran ahead of the count
    while the slow one was out: 6 requests for a guard of 3 and 2 workers)."""
    sent: list[str] = []
    lock = threading.Lock()

    def work(image_id, image, cancel):
        with lock:
            sent.append(image_id)
        if len(sent) == 3:  # one slow refusal: the other workers answer on meanwhile
            time.sleep(0.05)
        return CaptionFailure("HTTP 400: incorrect API key")

    items = ((f"img{i}", None) for i in range(200))
    for _ in range(5):
        sent.clear()
        with pytest.raises(Refused):
            list(
                stream(
                    items,
                    work,
                    max_concurrency=max_concurrency,
                    guard=3,
                    guard_error=lambda held: Refused(len(held)),
                )
            )
        assert 3 <= len(sent) <= 3 + max_concurrency - 1, sent


def test_after_the_first_caption_the_queue_fills_again():
    """Once a caption has arrived the guard is satisfied: failures are the images' own and
    are yielded, every image is answered once, in any order."""
    answered: list[str] = []
    lock = threading.Lock()

    def work(image_id, image, cancel):
        with lock:
            answered.append(image_id)
        return "a caption" if image_id == "img0" else CaptionFailure("refused")

    out = dict(
        stream(
            ((f"img{i}", None) for i in range(30)),
            work,
            max_concurrency=2,
            guard=3,
            guard_error=lambda held: Refused(len(held)),
        )
    )
    assert sorted(answered) == sorted(out) and len(out) == 30
    assert out["img0"] == "a caption"
