"""Work done ahead in background threads, in order: reading images while the model runs, and the model on the next
batches while the records of the last are written."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


def chunks(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """`items` in lists of `size` (the last may be shorter)."""
    chunk: list[T] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def read_ahead(function: Callable[[T], R], items: Iterable[T], depth: int, workers: int = 1,
               name: str = "fer_hf-read") -> Iterator[R]:
    """`function(item)` for each item, in order, computed by background threads at most `depth` items ahead of
    the consumer (so memory stays bounded). One thread unless told: OpenCV's cascade is not safe to share between
    threads, and decoding and detection already run their heavy parts outside the GIL."""
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=name)
    queue: deque[Future[R]] = deque()
    iterator = iter(items)
    try:
        while True:
            try:
                item = next(iterator)
            except StopIteration:
                break
            except Exception:  # `items` itself failed: what was submitted before still comes out, then its error
                while queue:
                    yield queue.popleft().result()
                raise
            queue.append(pool.submit(function, item))
            if len(queue) > depth:
                yield queue.popleft().result()
        while queue:
            yield queue.popleft().result()
    finally:  # the consumer stopped early or failed: drop what was read ahead
        pool.shutdown(wait=True, cancel_futures=True)
