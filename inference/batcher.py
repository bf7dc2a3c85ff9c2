"""Micro-batching in the process that parses the requests.

Requests queue; whenever the engine is free, everything queued (up to `max_batch` images) goes to
it as one call, run on one engine thread off the event loop. There is no fixed or learned wait:
with a short queue a request runs at once, and under load the batches grow by themselves, since
requests pile up while the engine is busy. Measured against the BentoML setup it replaces (a
model service in its own process behind adaptive batching): that setup paid an HTTP hop per call
and learned a batching wait from bursts that it kept: one client's p50 went from 10.9 ms fresh
to 56 ms after a burst, against 5.6 and 6.9 ms here (2 AMD EPYC cores; BENCHMARKS.md, "before
and after the in-process micro-batcher").

The bound that keeps a flood from queueing forever: a request whose expected wait (the images
ahead of it × the measured seconds per image) is over `max_wait_s` is refused with Overloaded,
which the service answers as a 503.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

Run = Callable[[np.ndarray], Sequence[np.ndarray]]


class Overloaded(RuntimeError):
    """The queue is so long that the request would wait more than the limit."""


class Batcher:
    """`await batcher(images)` → the engine's outputs for those images, run together with
    whatever other requests are queued. `run` takes uint8 (N, 64, 64, 3) and returns a tuple of
    arrays with N rows each."""

    def __init__(
        self,
        run: Run,
        max_batch: int,
        max_wait_s: float,
        engine: ThreadPoolExecutor,
        observe: Callable[[int, int], None] | None = None,
    ):
        self.run, self.max_batch, self.max_wait_s = run, max_batch, max_wait_s
        self.observe = observe  # (requests, images) of each engine call: the service's metrics
        self.engine = engine  # one thread, shared by every Batcher of one model
        self.pending: deque[tuple[np.ndarray, asyncio.Future]] = deque()
        self.queued = 0  # images waiting, not counting the batch on the engine
        self.seconds_per_image = 0.0  # a running mean, from the batches run so far
        self.worker: asyncio.Task | None = None
        self.batches = self.images = 0  # for the service's metrics and the tests

    async def __call__(self, images: np.ndarray) -> tuple[np.ndarray, ...]:
        wait = (self.queued + len(images)) * self.seconds_per_image
        if wait > self.max_wait_s:
            raise Overloaded(
                f"{self.queued} images are queued ahead (about {wait:.1f} s); the limit is "
                f"{self.max_wait_s:.1f} s"
            )
        loop = asyncio.get_running_loop()
        # A request larger than one engine call goes as several, each queued in turn.
        parts = [images[i : i + self.max_batch] for i in range(0, len(images), self.max_batch)]
        futures = [loop.create_future() for _ in parts]
        for part, future in zip(parts, futures, strict=True):
            self.pending.append((part, future))
            self.queued += len(part)
        if self.worker is None or self.worker.done():
            self.worker = loop.create_task(self._drain())
        outputs = await asyncio.gather(*futures)
        return tuple(np.concatenate(column) for column in zip(*outputs, strict=True))

    def _take(self) -> list[tuple[np.ndarray, asyncio.Future]]:
        """The requests of the next engine call: queue order, up to max_batch images."""
        taken, size = [], 0
        while self.pending and size + len(self.pending[0][0]) <= self.max_batch:
            part, future = self.pending.popleft()
            self.queued -= len(part)
            if not future.done():  # a request whose client left is dropped, not run
                taken.append((part, future))
                size += len(part)
        return taken

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        while self.pending:
            taken = self._take()
            if not taken:
                continue
            batch = np.concatenate([part for part, _ in taken])
            start = loop.time()
            try:
                outputs = await loop.run_in_executor(self.engine, self.run, batch)
            except Exception as e:  # the engine failed: every request of this call learns why
                for _, future in taken:
                    if not future.done():
                        future.set_exception(e)
                continue
            self._account(len(batch), loop.time() - start)
            if self.observe is not None:
                self.observe(len(taken), len(batch))
            offset = 0
            for part, future in taken:
                rows = slice(offset, offset + len(part))
                offset += len(part)
                if not future.done():
                    future.set_result(tuple(o[rows] for o in outputs))

    def _account(self, n: int, seconds: float) -> None:
        self.batches += 1
        self.images += n
        mean = seconds / n
        old = self.seconds_per_image
        self.seconds_per_image = mean if self.batches == 1 else 0.9 * old + 0.1 * mean


def engine_thread() -> ThreadPoolExecutor:
    """The one thread the engine runs on: one call at a time uses every core (the engines are
    configured so), and two at once would only split them."""
    return ThreadPoolExecutor(max_workers=1, thread_name_prefix="engine")
