"""Faults: the real `bentoml serve` killed (SIGKILL: a crash, the answers in flight lost) and
started again on the same port in the middle of a `python -m clients predict --out` batch. The
batch must end with every input recorded exactly once, in order, with the answers of a run
without the fault: by the client's retries within the run, or else by running it again (resume).
"""

from __future__ import annotations

import json
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from clients.cli import main
from tests.serving_fixtures import Server, fixture_images

IMAGES = 160  # at 4 per request: 40 requests, about 1.5 s against the fixture model
KILL_AT = IMAGES // 4  # records written when the service is killed


class CountingTransport(httpx.HTTPTransport):
    """The real network, counting the requests that failed on it (and were retried)."""

    def __init__(self):
        super().__init__()
        self.failures = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        try:
            return super().handle_request(request)
        except httpx.TransportError:
            self.failures += 1
            raise


@pytest.fixture(scope="module")
def server(live_server):
    return live_server


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[str]:
    folder = tmp_path_factory.mktemp("images")
    paths = []
    for i, data in enumerate(fixture_images(IMAGES, classes=4)):
        (folder / f"img{i:03d}.jpg").write_bytes(data)
        paths.append(str(folder / f"img{i:03d}.jpg"))
    return paths


@pytest.fixture(scope="module")
def no_fault(server, images, tmp_path_factory) -> list[dict]:
    out = tmp_path_factory.mktemp("no-fault") / "results.jsonl"
    assert main(predict_args(server, images, out)) == 0
    return read_jsonl(out)


def predict_args(server: Server, images: list[str], out: Path, retries: int = 8) -> list[str]:
    # 8 retries with the client's backoff (0.5 s doubling, capped at 30 s) wait out a restart of
    # up to a minute; the service takes about 4 s to start on 2 cores.
    args = ["predict", *images, "--url", server.url, "--out", str(out), "--no-progress"]
    return [*args, "--batch-size", "4", "--concurrency", "2", "--retries", str(retries)]


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def restart_when(server: Server, out: Path, records: int) -> int:
    """Kill the service once `out` holds `records` records, then start it again; returns how
    many were written when it died."""
    deadline = time.monotonic() + 60
    while not out.exists() or len(out.read_bytes().splitlines()) < records:
        assert time.monotonic() < deadline, "the batch did not get going"
        time.sleep(0.005)
    server.stop(signal.SIGKILL)
    written = len(out.read_bytes().splitlines())
    server.start()
    return written


def assert_same_results(records: list[dict], expected: list[dict]) -> None:
    assert [r["input"] for r in records] == [r["input"] for r in expected]  # each once, in order
    for got, want in zip(records, expected, strict=True):
        assert [p["wnid"] for p in got["predictions"]] == [p["wnid"] for p in want["predictions"]]
        # Adaptive batching may group the images differently: the last float digit may differ.
        got_p = [p["probability"] for p in got["predictions"]]
        assert got_p == pytest.approx([p["probability"] for p in want["predictions"]], abs=1e-5)


def test_a_batch_rides_out_a_service_restart(server, images, no_fault, tmp_path):
    out = tmp_path / "results.jsonl"
    transport = CountingTransport()
    with ThreadPoolExecutor(1) as pool:
        batch = pool.submit(main, predict_args(server, images, out), transport)
        written = restart_when(server, out, KILL_AT)
        assert batch.result(timeout=120) == 0
    assert written < IMAGES  # the service died mid-batch...
    assert transport.failures > 0  # ...under requests in flight or about to be sent
    assert_same_results(read_jsonl(out), no_fault)


def test_a_batch_that_gives_up_resumes_after_the_restart(server, images, no_fault, tmp_path):
    out = tmp_path / "results.jsonl"
    args = predict_args(server, images, out, retries=0)  # the first failure stops the run
    with ThreadPoolExecutor(1) as pool:
        batch = pool.submit(main, args)
        restart_when(server, out, KILL_AT)
        assert batch.result(timeout=120) == 3  # the service could not be used
    stopped_at = len(read_jsonl(out))
    assert KILL_AT <= stopped_at < IMAGES
    assert main(args) == 0  # the same command again: only what is missing is sent
    assert_same_results(read_jsonl(out), no_fault)


def test_sigterm_under_load_answers_every_request_sent_before_it(tmp_path):
    """A graceful stop: every request that began before SIGTERM is answered 200; those after it
    are refused or cut off (the port is closing), never answered with a 5xx."""
    import threading

    from tests.serving_fixtures import write_model

    server = Server(write_model(tmp_path / "tiny.onnx", classes=4), tmp_path).start()
    data = fixture_images(1)[0]
    signalled, outcomes, stop = [None], [], threading.Event()

    def load():
        while not stop.is_set():
            began = time.monotonic()
            try:  # a new connection each time: Connection: close
                headers = {"content-type": "image/jpeg", "connection": "close"}
                r = httpx.post(f"{server.url}/classify", content=data, headers=headers, timeout=30)
                outcome = r.status_code
            except httpx.TransportError as e:
                outcome = type(e).__name__
                time.sleep(0.02)
            outcomes.append((signalled[0] is None or began < signalled[0], outcome))

    with ThreadPoolExecutor(8) as pool:
        for _ in range(8):
            pool.submit(load)
        time.sleep(1.5)
        signalled[0] = time.monotonic()
        server.stop(signal.SIGTERM)
        stop.set()
    before = [o for was_before, o in outcomes if was_before]
    after = [o for was_before, o in outcomes if not was_before]
    assert len(before) >= 20
    assert set(before) == {200}, before
    assert not [o for o in after if isinstance(o, int) and o >= 500], after
