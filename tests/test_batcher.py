"""The in-process micro-batcher (inference/batcher.py): what runs together, in what order, and
what a flood or a failing engine gets. A fake engine records each call; nothing is timed."""

import asyncio
import threading

import numpy as np
import pytest

from inference.batcher import Batcher, Overloaded, engine_thread


class Engine:
    """Doubles the images' first pixel; records the batch sizes; `hold` keeps a call running
    until released, so that requests pile up behind it."""

    def __init__(self, hold: bool = False, fail_on: int | None = None):
        self.calls: list[int] = []
        self.gate = threading.Event()
        if not hold:
            self.gate.set()
        self.started = threading.Event()
        self.fail_on = fail_on

    def __call__(self, images: np.ndarray):
        self.calls.append(len(images))
        self.started.set()
        self.gate.wait(10)
        if self.fail_on is not None and len(self.calls) == self.fail_on:
            raise RuntimeError("engine failed")
        first = images[:, 0, 0, 0].astype(np.float32)
        return first * 2, first + 1


def images(*values: int) -> np.ndarray:
    x = np.zeros((len(values), 64, 64, 3), np.uint8)
    x[:, 0, 0, 0] = values
    return x


def make(engine, max_batch=8, max_wait_s=60.0) -> Batcher:
    return Batcher(engine, max_batch, max_wait_s, engine_thread())


def test_a_lone_request_runs_at_once_and_gets_its_own_rows():
    engine = Engine()
    batcher = make(engine)
    doubled, plus_one = asyncio.run(batcher(images(3, 5)))
    assert engine.calls == [2]
    assert doubled.tolist() == [6, 10]
    assert plus_one.tolist() == [4, 6]


async def _pile_up(engine: Engine, batcher: Batcher, requests: list[np.ndarray]):
    first = asyncio.ensure_future(batcher(images(1)))
    await asyncio.get_running_loop().run_in_executor(None, engine.started.wait, 10)
    rest = [asyncio.ensure_future(batcher(r)) for r in requests]
    await asyncio.sleep(0)  # all queued while the engine is busy
    engine.gate.set()
    return await first, await asyncio.gather(*rest)


def test_requests_queued_while_the_engine_is_busy_go_as_one_call():
    engine = Engine(hold=True)
    batcher = make(engine)
    first, rest = asyncio.run(_pile_up(engine, batcher, [images(10), images(20, 30), images(40)]))
    assert engine.calls == [1, 4]  # no waiting for more, then everything queued at once
    assert first[0].tolist() == [2]
    assert [r[0].tolist() for r in rest] == [[20], [40, 60], [80]]
    assert batcher.batches == 2
    assert batcher.images == 5


def test_a_call_holds_at_most_max_batch_images_and_a_large_request_is_split_in_order():
    engine = Engine(hold=True)
    batcher = make(engine, max_batch=4)
    big = images(*range(10, 20))  # 10 images: calls of 4, 4, 2
    _first, (out,) = asyncio.run(_pile_up(engine, batcher, [big]))
    assert engine.calls == [1, 4, 4, 2]
    assert out[0].tolist() == [2 * v for v in range(10, 20)]


def test_a_request_that_would_wait_too_long_is_refused_and_the_rest_still_run():
    engine = Engine(hold=True)
    batcher = make(engine, max_wait_s=0.5)
    batcher.seconds_per_image = 0.1  # as measured on earlier calls

    async def flood():
        first = asyncio.ensure_future(batcher(images(1)))
        await asyncio.get_running_loop().run_in_executor(None, engine.started.wait, 10)
        queued = asyncio.ensure_future(batcher(images(2, 3, 4)))  # 0.3 s expected: accepted
        await asyncio.sleep(0)
        with pytest.raises(Overloaded, match="3 images are queued ahead"):
            await batcher(images(5, 6, 7))  # 0.6 s expected: refused
        engine.gate.set()
        return await first, await queued

    _first, queued = asyncio.run(flood())
    assert queued[0].tolist() == [4, 6, 8]
    assert engine.calls == [1, 3]


def test_an_engine_failure_reaches_the_requests_of_that_call_only():
    engine = Engine(fail_on=1)
    batcher = make(engine)

    async def two():
        with pytest.raises(RuntimeError, match="engine failed"):
            await batcher(images(1))
        return await batcher(images(2))

    assert asyncio.run(two())[0].tolist() == [4]


def test_a_request_whose_client_left_is_not_run():
    engine = Engine(hold=True)
    batcher = make(engine)

    async def cancel_one():
        first = asyncio.ensure_future(batcher(images(1)))
        await asyncio.get_running_loop().run_in_executor(None, engine.started.wait, 10)
        gone = asyncio.ensure_future(batcher(images(7, 7)))
        kept = asyncio.ensure_future(batcher(images(9)))
        await asyncio.sleep(0)
        gone.cancel()
        engine.gate.set()
        await first
        return await kept

    assert asyncio.run(cancel_one())[0].tolist() == [18]
    assert engine.calls == [1, 1]
