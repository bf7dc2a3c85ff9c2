"""Python clients for the Tiny ImageNet service: one image, or thousands in order.

    from clients import TinyImageNetClient

    with TinyImageNetClient("http://localhost:3000") as client:
        client.classify("cat.jpg").top1           # Prediction(rank=1, wnid=..., label=..., ...)
        for result in client.classify_iter(paths):  # streams, in input order
            print(result.input, result.top1 if result.ok else result.error)

An image is a path, bytes, a PIL image or an RGB uint8 numpy array; the last two are sent as PNG
(Pillow is imported only then). Batches go to /classify_batch with a bounded number in flight;
connection errors, 429, 503 and 504 are retried with exponential backoff and jitter, a 400 never.
A bad image becomes a Result with an `error` in its place and the rest go on; a service that
stays unavailable past the retries raises ClientError.

As in httpx, `_ClientBase` holds the logic (settings, retry policy, how each request is built and
each answer read); `TinyImageNetClient` and `AsyncTinyImageNetClient` only do the I/O, one with
threads and the other with asyncio.
"""

from __future__ import annotations

import asyncio
import itertools
import operator
import os
import random
import time
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import httpx
from tqdm import tqdm

from clients.inputs import Item, achunks, chunks, describe, filename, image_bytes
from clients.results import (
    ClientError,
    Explanation,
    Label,
    ModelInfo,
    Result,
    batch_results,
    error_from_response,
    explanation,
    json_body,
    predictions,
    transport_error,
)

DEFAULT_URL = "http://localhost:3000"
DEFAULT_TOP_K = 5
DEFAULT_EXPLAIN_TOP_K = 3
MAX_TOP_K = 200  # the service refuses more
# The service takes up to 64 images per request by default (TIN_MAX_BATCH_IMAGES) and GET /model
# may not say what it is set to: 32 stays under the default and fills one engine call.
DEFAULT_BATCH_SIZE = 32
DEFAULT_CONCURRENCY = 4
# The service refuses bodies over 10 MiB (413); leave room for the multipart framing.
DEFAULT_MAX_REQUEST_BYTES = 8 * 1024 * 1024
DEFAULT_TIMEOUT = 60.0
DEFAULT_RETRIES = 5  # with the default backoff: about 15 s of outage survived
API_KEY_ENV = "TIN_API_KEY"  # the key sent when none is given, for a service that requires one
RETRY_STATUSES = frozenset({429, 503, 504})
# Errors that connecting or talking to the server can raise and that a new attempt may not
# (UnsupportedProtocol or LocalProtocolError are our bugs, not the network's).
RETRY_EXCEPTIONS = (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError)
# A multi-image request refused with these may have been refused for one of its images (too
# large, too many): it is split so that only the culprit fails. Not for codes no image causes.
SPLIT_STATUSES = frozenset({400, 413})
UNSPLITTABLE_CODES = frozenset(
    {"bad_top_k", "bad_min_confidence", "unsupported_media_type", "unauthorized"}
)


def _integer(name: str, value: Any, low: int, high: int | None = None) -> int:
    # operator.index: an int or a numpy integer, not a float or a bool-looking string.
    try:
        number = operator.index(value)
    except TypeError:
        number = None
    if number is None or isinstance(value, bool) or number < low or (high and number > high):
        span = f"between {low} and {high}" if high else f"at least {low}"
        raise ValueError(f"{name} must be an integer {span}, got {value!r}")
    return number


def check_top_k(top_k: int) -> int:
    # Checked here: a bad top_k would make the server refuse every batch.
    return _integer("top_k", top_k, 1, MAX_TOP_K)


def judging(min_confidence: float | None) -> dict:
    """The form field asking the service to judge its answers by `min_confidence` (a top-1
    probability, 0 to 1: below it an answer says confident=False); {} leaves the service's own
    default (TIN_MIN_CONFIDENCE, else no judgement)."""
    if min_confidence is None:
        return {}
    ok = isinstance(min_confidence, int | float) and not isinstance(min_confidence, bool)
    if not ok or not 0 <= min_confidence <= 1:
        raise ValueError(f"min_confidence must be a number from 0 to 1, got {min_confidence!r}")
    return {"min_confidence": repr(float(min_confidence))}


def _positive(name: str, value: int) -> int:
    return _integer(name, value, 1)


def _retry_after(response: httpx.Response) -> float | None:
    try:
        return max(0.0, float(response.headers.get("retry-after", "")))
    except ValueError:  # absent, or an HTTP date: fall back to our own backoff
        return None


def _progress(images: Any, progress: bool | None) -> tqdm:
    total = len(images) if hasattr(images, "__len__") else None
    # None: a bar only on a terminal (tqdm's own rule), so logs and pipes stay clean.
    return tqdm(
        total=total, unit="img", desc="classify", disable=None if progress is None else not progress
    )


@dataclass(frozen=True)
class _Job:
    """What a batch request is: its route, its form fields, and the kind of result it answers."""

    path: str
    data: dict
    kind: type = Result


def auth_headers(api_key: str | None) -> dict[str, str]:
    """The Authorization header for `api_key`, or for $TIN_API_KEY when it is None."""
    key = os.environ.get(API_KEY_ENV, "").strip() if api_key is None else api_key.strip()
    return {"Authorization": f"Bearer {key}"} if key else {}


class _ClientBase:
    """Settings, retry policy, and how every request is built and every answer read.

    url          the service, e.g. http://localhost:3000
    timeout      seconds for each of connecting, sending and waiting for an answer
    retries      new attempts after a connection error, timeout, 429, 503 or 504, waiting
                 backoff × 2^attempt (halved at random, at most max_backoff, or the server's
                 Retry-After) in between; 5 with backoff 0.5 rides out about 15 s of outage
    batch_size   images per /classify_batch request, at most max_request_bytes of them
    concurrency  requests in flight in classify_iter/classify_many
    api_key      sent as `Authorization: Bearer KEY` (default: $TIN_API_KEY, if set)
    transport    replaces the network (an httpx.MockTransport, or an app's test transport)
    headers      sent with every request
    """

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        retries: int = DEFAULT_RETRIES,
        backoff: float = 0.5,
        max_backoff: float = 30.0,
        batch_size: int = DEFAULT_BATCH_SIZE,
        concurrency: int = DEFAULT_CONCURRENCY,
        max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
        api_key: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.retries = _integer("retries", retries, 0)
        self.backoff, self.max_backoff = backoff, max_backoff
        self.batch_size = _positive("batch_size", batch_size)
        self.concurrency = _positive("concurrency", concurrency)
        self.max_request_bytes = _positive("max_request_bytes", max_request_bytes)
        self.headers = {**(headers or {}), **auth_headers(api_key)}

    # --- retries ---------------------------------------------------------------------------

    def delay(self, attempt: int, retry_after: float | None) -> float:
        """Exponential backoff with jitter: between half and all of backoff × 2^attempt, so that
        clients that failed together do not come back together; a Retry-After is honoured."""
        ceiling = min(self.max_backoff, self.backoff * 2**attempt)
        wait = random.uniform(ceiling / 2, ceiling)
        if retry_after is not None:
            wait = max(wait, min(retry_after, self.max_backoff))
        return wait

    def retry_delay(
        self, attempt: int, failure: ClientError, response: httpx.Response | None
    ) -> float:
        """Seconds to wait before attempt `attempt + 1`; raises `failure` where a new attempt
        cannot help (a refusal such as a 400) or the retries are spent. Both clients' `_send`."""
        if response is not None and response.status_code not in RETRY_STATUSES:
            raise failure
        if attempt >= self.retries:
            raise failure
        return self.delay(attempt, None if response is None else _retry_after(response))

    def outcome(self, attempt: int, path: str, response: httpx.Response | None, error=None):
        """(response, None) when `response` is a success, else (None, seconds to wait before the
        next attempt); raises ClientError when there is to be none. `error`: what the transport
        raised instead of answering."""
        if response is not None and response.is_success:
            return response, None
        if response is None:
            failure = transport_error(error, self.url + path)
        else:
            failure = error_from_response(response)
        return None, self.retry_delay(attempt, failure, response)

    # --- requests and answers --------------------------------------------------------------

    def options(self, batch_size: int | None, concurrency: int | None) -> tuple[int, int]:
        return (
            _positive("batch_size", batch_size or self.batch_size),
            _positive("concurrency", concurrency or self.concurrency),
        )

    @staticmethod
    def classify_request(image: Any, top_k: int, least: float | None = None) -> tuple[str, dict]:
        """(the input's name, the keyword arguments of POST /classify)."""
        data = {"top_k": str(check_top_k(top_k)), **judging(least)}
        name = describe(image, 0)
        files = {"image": (filename(name), image_bytes(image), "application/octet-stream")}
        return name, {"files": files, "data": data}

    @staticmethod
    def classify_answer(name: str, response: httpx.Response) -> Result:
        body = json_body(response)
        found = predictions(body.get("predictions"))
        sure = body.get("confident")
        return Result(
            0,
            name,
            found,
            model=body.get("model"),
            confident=sure if isinstance(sure, bool) else None,
        )

    @staticmethod
    def explain_params(top_k: int, cls: str | None, least: float | None = None) -> dict:
        """The form fields asking for the maps of the top_k classes, or of class `cls`."""
        if cls is not None:
            if not isinstance(cls, str) or not cls:
                raise ValueError(f"cls must be a wnid (GET /labels lists them), got {cls!r}")
            return {"class": cls, **judging(least)}
        return {"top_k": str(check_top_k(top_k)), **judging(least)}

    def explain_request(
        self, image: Any, top_k: int, cls: str | None, least: float | None = None
    ) -> tuple[str, dict]:
        """(the input's name, the keyword arguments of POST /explain)."""
        data = self.explain_params(top_k, cls, least)
        name = describe(image, 0)
        files = {"image": (filename(name), image_bytes(image), "application/octet-stream")}
        return name, {"files": files, "data": data}

    @staticmethod
    def explain_answer(name: str, response: httpx.Response, image: Any) -> Explanation:
        return explanation(name, json_body(response), image)

    @staticmethod
    def classify_job(top_k: int, least: float | None = None) -> _Job:
        return _Job("/classify_batch", {"top_k": str(check_top_k(top_k)), **judging(least)})

    def explain_job(self, top_k: int, cls: str | None, least: float | None = None) -> _Job:
        return _Job("/explain_batch", self.explain_params(top_k, cls, least), Explanation)

    @staticmethod
    def batch_request(items: list[Item], job: _Job) -> dict:
        """The keyword arguments of the batch request for `items`."""
        files = [("images", (filename(i.name), i.data, "application/octet-stream")) for i in items]
        return {"files": files, "data": job.data}

    @staticmethod
    def split(items: list[Item], error: ClientError) -> list[list[Item]]:
        """The halves to send again when a batch was refused, perhaps for one of its images, or
        [] when the refusal is final for these items; raises `error` where no image caused it."""
        if error.status not in SPLIT_STATUSES or error.code in UNSPLITTABLE_CODES:
            raise error
        half = len(items) // 2
        return [items[:half], items[half:]] if len(items) > 1 else []

    @staticmethod
    def refused(items: list[Item], error: ClientError, job: _Job) -> dict[int, Result]:
        return {it.index: job.kind(it.index, it.name, error=error) for it in items}

    @staticmethod
    def unsendable(chunk: list[Item], job: _Job) -> tuple[dict[int, Result], list[Item]]:
        """(error results of the items that could not be read, the items to send)."""
        failed = {i.index: job.kind(i.index, i.name, error=i.error) for i in chunk if i.error}
        return failed, [it for it in chunk if it.error is None]

    @staticmethod
    def labels_answer(response: httpx.Response) -> list[Label]:
        body = json_body(response)
        return [Label(int(x["index"]), x["wnid"], x["label"]) for x in body["labels"]]

    @staticmethod
    def model_answer(response: httpx.Response) -> ModelInfo:
        return ModelInfo.from_json(json_body(response))

    def not_ready(self, timeout: float) -> ClientError:
        return ClientError(f"{self.url} not ready after {timeout:g} s", "not_ready")


def _in_order(chunk: list[Item], results: dict[int, Result]) -> list[Result]:
    return [results[it.index] for it in chunk]


class TinyImageNetClient(_ClientBase):
    """Synchronous client of the service at `url`; use it as a context manager, or close() it.
    Options as in `_ClientBase`; `concurrency` requests run on threads of one pool."""

    def __init__(
        self, url: str = DEFAULT_URL, *, transport: httpx.BaseTransport | None = None, **options
    ):
        super().__init__(url, **options)
        self._http = httpx.Client(
            base_url=self.url, timeout=self.timeout, transport=transport, headers=self.headers
        )

    def __enter__(self) -> TinyImageNetClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _send(self, method: str, path: str, **kwargs) -> httpx.Response:
        """A 2xx answer, after retrying what may pass on a new attempt; else ClientError."""
        for attempt in itertools.count():
            try:
                response, error = self._http.request(method, path, **kwargs), None
            except RETRY_EXCEPTIONS as e:
                response, error = None, e
            ok, wait = self.outcome(attempt, path, response, error)
            if ok is not None:
                return ok
            time.sleep(wait)

    def ready(self) -> bool:
        """Whether the service answers /readyz with 200 (model loaded); never raises."""
        try:
            return self._http.get("/readyz").status_code == 200
        except httpx.HTTPError:
            return False

    def wait_until_ready(self, timeout: float = 60.0, interval: float = 0.5) -> None:
        deadline = time.monotonic() + timeout
        while not self.ready():
            if time.monotonic() > deadline:
                raise self.not_ready(timeout)
            time.sleep(interval)

    def labels(self) -> list[Label]:
        return self.labels_answer(self._send("GET", "/labels"))

    def model_info(self) -> ModelInfo:
        return self.model_answer(self._send("GET", "/model"))

    def classify(
        self, image: Any, top_k: int = DEFAULT_TOP_K, *, min_confidence: float | None = None
    ) -> Result:
        """One image (path, bytes, PIL image or numpy array); a refusal raises ClientError.
        `min_confidence`: the answer's `confident` is False when its top-1 probability is below
        it (the predictions are still there); None: the service's default."""
        name, request = self.classify_request(image, top_k, min_confidence)
        return self.classify_answer(name, self._send("POST", "/classify", **request))

    def classify_many(
        self,
        images: Iterable[Any],
        top_k: int = DEFAULT_TOP_K,
        batch_size: int | None = None,
        concurrency: int | None = None,
        progress: bool | None = None,
        min_confidence: float | None = None,
    ) -> list[Result]:
        """Every image's Result, in input order; see classify_iter."""
        return list(
            self.classify_iter(images, top_k, batch_size, concurrency, progress, min_confidence)
        )

    def classify_iter(
        self,
        images: Iterable[Any],
        top_k: int = DEFAULT_TOP_K,
        batch_size: int | None = None,
        concurrency: int | None = None,
        progress: bool | None = None,
        min_confidence: float | None = None,
    ) -> Iterator[Result]:
        """Yield one Result per image, in input order, as soon as it and all before it are in.

        At most 2 × concurrency × batch_size images are held at once (concurrency requests in
        flight and as many ready to go), so `images` may be any iterable, of any length. A bad
        image gives an error Result in its place; ClientError is raised only when the service
        stays unreachable or refuses the request itself."""
        # Checked now, not at the first next(): the generator below starts only then.
        job = self.classify_job(top_k, min_confidence)
        batch_size, concurrency = self.options(batch_size, concurrency)
        return self._stream(images, job, batch_size, concurrency, progress)

    def explain(
        self,
        image: Any,
        top_k: int = DEFAULT_EXPLAIN_TOP_K,
        cls: str | None = None,
        *,
        min_confidence: float | None = None,
    ) -> Explanation:
        """The activation maps of one image: of its top_k classes, or of the class `cls` (a
        wnid). `.predictions[i].map` is a numpy array; `.overlay()` draws one on the image."""
        name, request = self.explain_request(image, top_k, cls, min_confidence)
        return self.explain_answer(name, self._send("POST", "/explain", **request), image)

    def explain_iter(
        self,
        images: Iterable[Any],
        top_k: int = DEFAULT_EXPLAIN_TOP_K,
        cls: str | None = None,
        batch_size: int | None = None,
        concurrency: int | None = None,
        progress: bool | None = None,
        min_confidence: float | None = None,
    ) -> Iterator[Explanation]:
        """As classify_iter, through /explain_batch: one Explanation per image, in order."""
        job = self.explain_job(top_k, cls, min_confidence)
        batch_size, concurrency = self.options(batch_size, concurrency)
        return self._stream(images, job, batch_size, concurrency, progress)

    def _stream(self, images, job, batch_size, concurrency, progress) -> Iterator[Result]:
        bar = _progress(images, progress)
        pool = ThreadPoolExecutor(concurrency, thread_name_prefix="tin-client")
        window: deque[Future[list[Result]]] = deque()
        try:
            for chunk in chunks(images, batch_size, self.max_request_bytes):
                window.append(pool.submit(self._chunk, chunk, job))
                # Hand on what is done at the head; wait only when the window is full.
                while window and (window[0].done() or len(window) >= 2 * concurrency):
                    yield from _emit(window.popleft().result(), bar)
            while window:
                yield from _emit(window.popleft().result(), bar)
        finally:
            # On an error or an abandoned iteration: drop queued chunks, don't wait for the rest.
            pool.shutdown(wait=False, cancel_futures=True)
            bar.close()

    def _chunk(self, chunk: list[Item], job: _Job) -> list[Result]:
        results, todo = self.unsendable(chunk, job)
        if todo:
            results.update(self._batch(todo, job))
        return _in_order(chunk, results)

    def _batch(self, items: list[Item], job: _Job) -> dict[int, Result]:
        try:
            response = self._send("POST", job.path, **self.batch_request(items, job))
        except ClientError as e:
            halves = self.split(items, e)
            if not halves:
                return self.refused(items, e, job)
            return {k: v for half in halves for k, v in self._batch(half, job).items()}
        return batch_results(items, json_body(response), job.kind)


def _emit(results: list[Result], bar: tqdm) -> Iterator[Result]:
    for result in results:
        bar.update(1)
        yield result


class AsyncTinyImageNetClient(_ClientBase):
    """The asyncio twin of TinyImageNetClient: the same methods, awaited; classify_iter is an
    async generator and also takes an async iterable."""

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        **options,
    ):
        super().__init__(url, **options)
        self._http = httpx.AsyncClient(
            base_url=self.url, timeout=self.timeout, transport=transport, headers=self.headers
        )

    async def __aenter__(self) -> AsyncTinyImageNetClient:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _send(self, method: str, path: str, **kwargs) -> httpx.Response:
        for attempt in itertools.count():
            try:
                response, error = await self._http.request(method, path, **kwargs), None
            except RETRY_EXCEPTIONS as e:
                response, error = None, e
            ok, wait = self.outcome(attempt, path, response, error)
            if ok is not None:
                return ok
            await asyncio.sleep(wait)

    async def ready(self) -> bool:
        try:
            return (await self._http.get("/readyz")).status_code == 200
        except httpx.HTTPError:
            return False

    async def wait_until_ready(self, timeout: float = 60.0, interval: float = 0.5) -> None:
        deadline = time.monotonic() + timeout
        while not await self.ready():
            if time.monotonic() > deadline:
                raise self.not_ready(timeout)
            await asyncio.sleep(interval)

    async def labels(self) -> list[Label]:
        return self.labels_answer(await self._send("GET", "/labels"))

    async def model_info(self) -> ModelInfo:
        return self.model_answer(await self._send("GET", "/model"))

    async def classify(
        self, image: Any, top_k: int = DEFAULT_TOP_K, *, min_confidence: float | None = None
    ) -> Result:
        name, request = self.classify_request(image, top_k, min_confidence)
        return self.classify_answer(name, await self._send("POST", "/classify", **request))

    async def classify_many(
        self,
        images: Iterable[Any] | AsyncIterable[Any],
        top_k: int = DEFAULT_TOP_K,
        batch_size: int | None = None,
        concurrency: int | None = None,
        progress: bool | None = None,
        min_confidence: float | None = None,
    ) -> list[Result]:
        iterator = self.classify_iter(
            images, top_k, batch_size, concurrency, progress, min_confidence
        )
        try:
            return [r async for r in iterator]
        finally:
            await iterator.aclose()

    def classify_iter(
        self,
        images: Iterable[Any] | AsyncIterable[Any],
        top_k: int = DEFAULT_TOP_K,
        batch_size: int | None = None,
        concurrency: int | None = None,
        progress: bool | None = None,
        min_confidence: float | None = None,
    ) -> AsyncIterator[Result]:
        """As TinyImageNetClient.classify_iter (`async for`): in input order, at most
        `concurrency` requests in flight and 2 × concurrency chunks held."""
        job = self.classify_job(top_k, min_confidence)
        batch_size, concurrency = self.options(batch_size, concurrency)
        return self._stream(images, job, batch_size, concurrency, progress)

    async def explain(
        self,
        image: Any,
        top_k: int = DEFAULT_EXPLAIN_TOP_K,
        cls: str | None = None,
        *,
        min_confidence: float | None = None,
    ) -> Explanation:
        name, request = self.explain_request(image, top_k, cls, min_confidence)
        return self.explain_answer(name, await self._send("POST", "/explain", **request), image)

    def explain_iter(
        self,
        images: Iterable[Any] | AsyncIterable[Any],
        top_k: int = DEFAULT_EXPLAIN_TOP_K,
        cls: str | None = None,
        batch_size: int | None = None,
        concurrency: int | None = None,
        progress: bool | None = None,
        min_confidence: float | None = None,
    ) -> AsyncIterator[Explanation]:
        job = self.explain_job(top_k, cls, min_confidence)
        batch_size, concurrency = self.options(batch_size, concurrency)
        return self._stream(images, job, batch_size, concurrency, progress)

    async def _stream(self, images, job, batch_size, concurrency, progress):
        slots = asyncio.Semaphore(concurrency)
        bar = _progress(images, progress)

        async def run(chunk: list[Item]) -> list[Result]:
            async with slots:
                return await self._chunk(chunk, job)

        window: deque[asyncio.Task[list[Result]]] = deque()
        try:
            async for chunk in achunks(images, batch_size, self.max_request_bytes):
                window.append(asyncio.ensure_future(run(chunk)))
                await asyncio.sleep(0)  # let the new task start its request
                while window and (window[0].done() or len(window) >= 2 * concurrency):
                    for result in _emit(await window.popleft(), bar):
                        yield result
            while window:
                for result in _emit(await window.popleft(), bar):
                    yield result
        finally:
            for task in window:
                task.cancel()
            await asyncio.gather(*window, return_exceptions=True)
            bar.close()

    async def _chunk(self, chunk: list[Item], job: _Job) -> list[Result]:
        results, todo = self.unsendable(chunk, job)
        if todo:
            results.update(await self._batch(todo, job))
        return _in_order(chunk, results)

    async def _batch(self, items: list[Item], job: _Job) -> dict[int, Result]:
        try:
            response = await self._send("POST", job.path, **self.batch_request(items, job))
        except ClientError as e:
            halves = self.split(items, e)
            if not halves:
                return self.refused(items, e, job)
            out: dict[int, Result] = {}
            for half in halves:
                out.update(await self._batch(half, job))
            return out
        return batch_results(items, json_body(response), job.kind)
