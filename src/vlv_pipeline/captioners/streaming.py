"""The chat client's thread pool: items in, answers out as they arrive.

``stream`` runs ``work(item_id, item, cancel)`` for each item on a ``ThreadPoolExecutor`` of
``max_concurrency`` workers, with at most ``2 * max_concurrency`` items taken from the input
at a time (so the input may be a generator over a large set), and yields ``(item_id,
result)`` in the order the answers arrive. A worker's exception (other than ``Cancelled``)
stops the stream: no queued item is sent, ``cancel`` is set so that waiting retries are
dropped, the answers to the requests in flight are yielded, and the exception is raised.
``guard`` (``stop_after_first_failures``, 0 off) holds back the first failures until a
result arrives, and stops the stream with ``guard_error(held)`` when the first ``guard``
answers are all failures (``openai_chat`` module docstring); until then no item waits in the
queue (at most ``max_concurrency`` taken), so at most ``guard + max_concurrency - 1`` items
are ever sent to a server that refuses them all.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any, TypeVar

from vlv_pipeline.captioners import CaptionFailure
from vlv_pipeline.captioners.failures import Cancelled
from vlv_pipeline.captioners.transport import THREAD_NAME_PREFIX

R = TypeVar("R")


def stream(
    items: Iterable[tuple[str, Any]],
    work: Callable[[str, Any, threading.Event], R | CaptionFailure],
    *,
    max_concurrency: int,
    guard: int,
    guard_error: Callable[[list[tuple[str, CaptionFailure]]], BaseException],
) -> Iterator[tuple[str, R | CaptionFailure]]:
    """Yield ``(item_id, result)`` of ``work`` for each item as it arrives (module
    docstring)."""
    source = iter(items)
    held: list[tuple[str, CaptionFailure]] = []  # failures before the first caption
    captioned = False
    cancel = threading.Event()
    pool = ThreadPoolExecutor(max_workers=max_concurrency, thread_name_prefix=THREAD_NAME_PREFIX)
    pending: dict[Future[R | CaptionFailure], str] = {}
    fatal: BaseException | None = None
    try:
        exhausted = False
        while True:
            # once a worker has failed for good (cancel set), take no more images. Until the
            # guard has seen a caption, nothing waits in the queue: a worker that answers
            # cannot start another image before this loop has counted its answer, so a
            # guard that fires leaves at most max_concurrency - 1 requests in flight
            window = max_concurrency if guard and not captioned else 2 * max_concurrency
            while not exhausted and len(pending) < window and not cancel.is_set():
                try:
                    image_id, image = next(source)
                except StopIteration:
                    exhausted = True
                    break
                pending[pool.submit(_run, work, image_id, image, cancel)] = image_id
            if not pending:
                break
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                image_id = pending.pop(future)
                if future.cancelled():
                    continue
                exc = future.exception()
                if exc is None:
                    result = future.result()
                    if not guard or captioned:
                        yield image_id, result
                    elif not isinstance(result, CaptionFailure):
                        if fatal is None:  # the key works: the failures are the images'
                            captioned = True
                            yield from held
                            held.clear()
                        yield image_id, result
                    elif fatal is None:
                        held.append((image_id, result))
                        if len(held) >= guard:
                            # every answer so far failed: the setting's fault, not the
                            # images'; stop as for a bad key (below), yielding none of them
                            fatal = guard_error(held)
                            cancel.set()
                            for queued in [f for f in pending if f.cancel()]:
                                del pending[queued]
                    # else: the stream is stopping; a failure in flight is not yielded
                elif not isinstance(exc, Cancelled) and fatal is None:
                    # stop: the queued images are never sent, the requests in flight
                    # are waited for and their answers yielded (they are paid for)
                    fatal = exc
                    for queued in [f for f in pending if f.cancel()]:
                        del pending[queued]
        if fatal is not None:
            raise fatal
        yield from held  # fewer answers than the guard, all failures: the images' own
    finally:
        # done, failed, or the caller stopped early: stop retries now, drop what has not
        # started, and do not wait for requests in flight (at most deadline_s each)
        cancel.set()
        for future in pending:
            future.cancel()
        pool.shutdown(wait=False, cancel_futures=True)


def _run(
    work: Callable[[str, Any, threading.Event], R | CaptionFailure],
    image_id: str,
    image: Any,
    cancel: threading.Event,
) -> R | CaptionFailure:
    try:
        return work(image_id, image, cancel)
    except Cancelled:
        raise
    except BaseException:
        # stop the other workers before this future completes, so that no worker takes
        # another queued image in the moment before the caller sees this error
        cancel.set()
        raise
