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
"""

from __future__ import annotations

import asyncio
import io
import itertools
import operator
import os
import random
import time
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from tqdm import tqdm

DEFAULT_URL = "http://localhost:3000"
DEFAULT_TOP_K = 5
MAX_TOP_K = 200  # the service refuses more
# The service takes up to 64 images per request by default (TIN_MAX_BATCH_IMAGES) and GET /model
# may not say what it is set to: 32 stays under the default and fills one adaptive batch.
DEFAULT_BATCH_SIZE = 32
DEFAULT_CONCURRENCY = 4
# The service refuses bodies over 10 MiB (413); leave room for the multipart framing.
DEFAULT_MAX_REQUEST_BYTES = 8 * 1024 * 1024
DEFAULT_TIMEOUT = 60.0
DEFAULT_RETRIES = 5  # with the default backoff: about 15 s of outage survived
RETRY_STATUSES = frozenset({429, 503, 504})
# Errors that connecting or talking to the server can raise and that a new attempt may not
# (UnsupportedProtocol or LocalProtocolError are our bugs, not the network's).
RETRY_EXCEPTIONS = (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError)
# A multi-image request refused with these may have been refused for one of its images (too
# large, too many): it is split so that only the culprit fails. Not for codes no image causes.
SPLIT_STATUSES = frozenset({400, 413})
UNSPLITTABLE_CODES = frozenset({"bad_top_k", "unsupported_media_type"})


# --- results -----------------------------------------------------------------------------------


@dataclass(eq=False)
class ClientError(Exception):
    """A request or an image the service (or the client) refused; `message` is the server's.

    `code` is the server's error code (not_an_image, upload_too_large...) or the client's
    (connection_error, timeout, unreadable_file, bad_input...); `status` is the HTTP status of a
    refused request, None for an image refused inside a batch or when no answer came."""

    message: str
    code: str = "client_error"
    status: int | None = None

    def __post_init__(self):
        super().__init__(self.message)  # args, so that pickling and tracebacks work

    def __str__(self) -> str:
        where = f"HTTP {self.status} " if self.status is not None else ""
        return f"{self.message} [{where}{self.code}]"

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "status": self.status}


@dataclass(frozen=True)
class Prediction:
    rank: int
    wnid: str
    label: str
    probability: float


@dataclass(frozen=True)
class Result:
    """One input's answer: `predictions` (most probable first), or `error` when it failed.

    `index` is its position in the input, `input` the path it came from (or `<bytes #3>`)."""

    index: int
    input: str
    predictions: tuple[Prediction, ...] = ()
    error: ClientError | None = None
    model: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def top1(self) -> Prediction | None:
        return self.predictions[0] if self.predictions else None

    def to_dict(self) -> dict[str, Any]:
        record: dict[str, Any] = {"input": self.input}
        if self.error is not None:
            record["error"] = self.error.to_dict()
        else:
            record["model"] = self.model
            record["predictions"] = [vars(p) for p in self.predictions]
        return record


@dataclass(frozen=True)
class Label:
    index: int
    wnid: str
    label: str


@dataclass(frozen=True)
class ModelInfo:
    """GET /model; `raw` keeps every field, including those this client does not know."""

    name: str
    preset: str | None = None
    precision: str | None = None
    val_top1: float | None = None
    val_top5: float | None = None
    input: dict | None = None
    backend: dict | None = None
    versions: dict | None = None
    checkpoint_sha256: str | None = None
    raw: dict = field(default_factory=dict, repr=False)

    @classmethod
    def from_json(cls, body: dict) -> ModelInfo:
        known = {k: body.get(k) for k in cls.__dataclass_fields__ if k != "raw"}
        return cls(**known, raw=body)


# --- inputs ------------------------------------------------------------------------------------


def describe(image: Any, index: int) -> str:
    """How an input is named in results: its path, or its type and position."""
    if isinstance(image, str | os.PathLike):
        return os.fspath(image)
    return f"<{type(image).__name__} #{index}>"


def _pillow():
    try:
        from PIL import Image
    except ImportError:
        raise ImportError(
            "a PIL image or numpy array is sent as PNG, which needs Pillow: pip install pillow"
        ) from None
    return Image


def _is_pil_image(image: Any) -> bool:
    # By module name, so that checking never imports Pillow.
    return type(image).__module__.startswith("PIL.") and hasattr(image, "save")


def _is_array(image: Any) -> bool:
    return all(hasattr(image, a) for a in ("__array__", "dtype", "shape"))


def _png(im) -> bytes:
    # PNG holds these modes as they are (alpha included: the service composites it on white);
    # others (CMYK, YCbCr, F...) have no PNG form.
    if im.mode not in ("1", "L", "LA", "P", "RGB", "RGBA", "I;16"):
        im = im.convert("RGB")
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def array_to_png(array: Any) -> bytes:
    """An RGB(A) or grayscale uint8 array (H, W[, C]) as PNG bytes. RGB order, not OpenCV's BGR."""
    image_module = _pillow()
    import numpy as np  # present: the caller has a numpy array

    a = np.asarray(array)
    if a.dtype != np.uint8:
        raise ClientError(f"numpy images must be uint8 (0..255), got {a.dtype}", "bad_input")
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if not (a.ndim == 2 or (a.ndim == 3 and a.shape[2] in (3, 4))) or 0 in a.shape:
        raise ClientError(
            f"expected an array of shape (H, W), (H, W, 3) or (H, W, 4), got {a.shape}",
            "bad_input",
        )
    return _png(image_module.fromarray(np.ascontiguousarray(a)))


def image_bytes(image: Any) -> bytes:
    """The file to upload for one input. An input that cannot be one raises ClientError."""
    if isinstance(image, bytes | bytearray | memoryview):
        return bytes(image)
    if isinstance(image, str | os.PathLike):
        try:
            return Path(image).read_bytes()
        except OSError as e:
            raise ClientError(
                f"cannot read {image}: {e.strerror or e}", "unreadable_file"
            ) from None
    if _is_pil_image(image):
        _pillow()
        return _png(image)
    if _is_array(image):
        return array_to_png(image)
    raise ClientError(
        f"cannot classify a {type(image).__name__}: give a path, bytes, a PIL image or a numpy "
        "array",
        "unsupported_input",
    )


def _filename(name: str) -> str:
    # The service sniffs the format from the bytes; the name is only for its logs.
    return os.path.basename(name) if not name.startswith("<") else "image"


@dataclass
class _Item:
    index: int
    name: str
    data: bytes = b""
    error: ClientError | None = None


def _load(index: int, image: Any) -> _Item:
    name = describe(image, index)
    try:
        return _Item(index, name, data=image_bytes(image))
    except ClientError as e:  # this input's problem: an error result in its place
        return _Item(index, name, error=e)


class _Chunker:
    """Groups loaded items into requests of at most `batch_size` images and `max_bytes`."""

    def __init__(self, batch_size: int, max_bytes: int):
        self.batch_size, self.max_bytes = batch_size, max_bytes
        self.chunk: list[_Item] = []
        self.size = 0

    def add(self, item: _Item) -> list[_Item] | None:
        """Add one item; returns the chunk it closed, if any."""
        full = len(self.chunk) >= self.batch_size or self.size + len(item.data) > self.max_bytes
        closed = self.flush() if self.chunk and full else None
        self.chunk.append(item)
        self.size += len(item.data)
        return closed

    def flush(self) -> list[_Item] | None:
        chunk, self.chunk, self.size = self.chunk, [], 0
        return chunk or None


def _chunks(images: Iterable[Any], batch_size: int, max_bytes: int) -> Iterator[list[_Item]]:
    # Lazy: an image is read only when its chunk is about to be sent.
    chunker = _Chunker(batch_size, max_bytes)
    for index, image in enumerate(images):
        if (chunk := chunker.add(_load(index, image))) is not None:
            yield chunk
    if (chunk := chunker.flush()) is not None:
        yield chunk


async def _achunks(
    images: Iterable[Any] | AsyncIterable[Any], batch_size: int, max_bytes: int
) -> AsyncIterator[list[_Item]]:
    if not isinstance(images, AsyncIterable):
        for chunk in _chunks(images, batch_size, max_bytes):
            yield chunk
        return
    chunker = _Chunker(batch_size, max_bytes)
    index = 0
    async for image in images:
        if (chunk := chunker.add(_load(index, image))) is not None:
            yield chunk
        index += 1
    if (chunk := chunker.flush()) is not None:
        yield chunk


# --- responses ---------------------------------------------------------------------------------


def error_from_response(response: httpx.Response) -> ClientError:
    """The server's {"error": {"code", "message"}}, or what else the answer holds."""
    status = response.status_code
    try:
        body = response.json()
    except ValueError:
        body = None
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        code = str(error.get("code") or f"http_{status}")
        message = str(error.get("message") or response.reason_phrase)
    else:  # BentoML's own routes answer {"error": "..."}; a proxy may answer HTML
        code = f"http_{status}"
        message = str(error) if error else (response.text.strip()[:500] or response.reason_phrase)
    return ClientError(message, code, status)


def transport_error(exc: Exception, url: str) -> ClientError:
    code = "timeout" if isinstance(exc, httpx.TimeoutException) else "connection_error"
    return ClientError(f"{url}: {type(exc).__name__}: {exc}", code)


def _json(response: httpx.Response) -> dict:
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        message = f"{response.request.url.path} answered {response.text[:200]!r}, not JSON"
        raise ClientError(message, "bad_response", response.status_code)
    return body


def _predictions(raw: Any) -> tuple[Prediction, ...]:
    try:
        return tuple(
            Prediction(int(p["rank"]), str(p["wnid"]), str(p["label"]), float(p["probability"]))
            for p in raw
        )
    except (KeyError, TypeError, ValueError):
        raise ClientError(f"malformed predictions {raw!r:.200}", "bad_response") from None


def _batch_results(items: list[_Item], body: dict) -> dict[int, Result]:
    answers = body.get("results")
    if not isinstance(answers, list) or len(answers) != len(items):
        got = len(answers) if isinstance(answers, list) else "no"
        raise ClientError(f"{got} results for {len(items)} images", "bad_response")
    model = body.get("model")
    out = {}
    for position, answer in enumerate(answers):
        if not isinstance(answer, dict):
            raise ClientError(f"malformed result {answer!r:.200}", "bad_response")
        index = answer.get("index", position)  # the server says which image; else its place
        if not isinstance(index, int) or not 0 <= index < len(items):
            raise ClientError(f"result for image {index!r} of {len(items)}", "bad_response")
        item = items[index]
        if "error" in answer:
            e = (
                answer["error"]
                if isinstance(answer["error"], dict)
                else {"message": answer["error"]}
            )
            error = ClientError(str(e.get("message", e)), str(e.get("code", "bad_image")))
            out[item.index] = Result(item.index, item.name, error=error, model=model)
        else:
            preds = _predictions(answer.get("predictions"))
            out[item.index] = Result(item.index, item.name, preds, model=model)
    if len(out) != len(items):
        raise ClientError("the server answered some images twice and others not", "bad_response")
    return out


def _split(error: ClientError) -> bool:
    return error.status in SPLIT_STATUSES and error.code not in UNSPLITTABLE_CODES


def _item_results(items: list[_Item]) -> dict[int, Result]:
    return {it.index: Result(it.index, it.name, error=it.error) for it in items if it.error}


def _retry_after(response: httpx.Response) -> float | None:
    try:
        return max(0.0, float(response.headers.get("retry-after", "")))
    except ValueError:  # absent, or an HTTP date: fall back to our own backoff
        return None


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


def _check_top_k(top_k: int) -> int:
    # Checked here: a bad top_k would make the server refuse every batch.
    return _integer("top_k", top_k, 1, MAX_TOP_K)


def _positive(name: str, value: int) -> int:
    return _integer(name, value, 1)


def _progress(images: Any, progress: bool | None) -> tqdm:
    total = len(images) if hasattr(images, "__len__") else None
    # None: a bar only on a terminal (tqdm's own rule), so logs and pipes stay clean.
    return tqdm(
        total=total, unit="img", desc="classify", disable=None if progress is None else not progress
    )


# --- the clients -------------------------------------------------------------------------------


class _ClientBase:
    """What both clients share: settings, backoff and request building."""

    def __init__(
        self,
        url: str,
        timeout: float,
        retries: int,
        backoff: float,
        max_backoff: float,
        batch_size: int,
        concurrency: int,
        max_request_bytes: int,
    ):
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.retries = _integer("retries", retries, 0)
        self.backoff, self.max_backoff = backoff, max_backoff
        self.batch_size = _positive("batch_size", batch_size)
        self.concurrency = _positive("concurrency", concurrency)
        self.max_request_bytes = _positive("max_request_bytes", max_request_bytes)

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

    def options(self, batch_size: int | None, concurrency: int | None) -> tuple[int, int]:
        return (
            _positive("batch_size", batch_size or self.batch_size),
            _positive("concurrency", concurrency or self.concurrency),
        )

    @staticmethod
    def single_upload(image: Any) -> tuple[str, dict]:
        name = describe(image, 0)
        return name, {"image": (_filename(name), image_bytes(image), "application/octet-stream")}

    @staticmethod
    def batch_upload(items: list[_Item]) -> list:
        return [
            ("images", (_filename(it.name), it.data, "application/octet-stream")) for it in items
        ]


class TinyImageNetClient(_ClientBase):
    """Synchronous client of the service at `url`; use it as a context manager, or close() it.

    timeout      seconds for each of connecting, sending and waiting for an answer
    retries      new attempts after a connection error, timeout, 429, 503 or 504, waiting
                 backoff × 2^attempt (halved at random, at most max_backoff, or the server's
                 Retry-After) in between; 5 with backoff 0.5 rides out about 15 s of outage
    batch_size   images per /classify_batch request, at most max_request_bytes of them
    concurrency  requests in flight in classify_iter/classify_many (threads of one pool)
    transport    replaces the network (an httpx.MockTransport, or an app's test transport)
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
        transport: httpx.BaseTransport | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(
            url, timeout, retries, backoff, max_backoff, batch_size, concurrency, max_request_bytes
        )
        self._http = httpx.Client(
            base_url=self.url, timeout=timeout, transport=transport, headers=headers
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
                response = self._http.request(method, path, **kwargs)
            except RETRY_EXCEPTIONS as e:
                failure, response = transport_error(e, self.url + path), None
            else:
                if response.is_success:
                    return response
                failure = error_from_response(response)
            time.sleep(self.retry_delay(attempt, failure, response))

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
                raise ClientError(f"{self.url} not ready after {timeout:g} s", "not_ready")
            time.sleep(interval)

    def labels(self) -> list[Label]:
        body = _json(self._send("GET", "/labels"))
        return [Label(int(x["index"]), x["wnid"], x["label"]) for x in body["labels"]]

    def model_info(self) -> ModelInfo:
        return ModelInfo.from_json(_json(self._send("GET", "/model")))

    def classify(self, image: Any, top_k: int = DEFAULT_TOP_K) -> Result:
        """One image (path, bytes, PIL image or numpy array); a refusal raises ClientError."""
        data = {"top_k": str(_check_top_k(top_k))}
        name, files = self.single_upload(image)
        body = _json(self._send("POST", "/classify", files=files, data=data))
        return Result(0, name, _predictions(body.get("predictions")), model=body.get("model"))

    def classify_many(
        self,
        images: Iterable[Any],
        top_k: int = DEFAULT_TOP_K,
        batch_size: int | None = None,
        concurrency: int | None = None,
        progress: bool | None = None,
    ) -> list[Result]:
        """Every image's Result, in input order; see classify_iter."""
        return list(self.classify_iter(images, top_k, batch_size, concurrency, progress))

    def classify_iter(
        self,
        images: Iterable[Any],
        top_k: int = DEFAULT_TOP_K,
        batch_size: int | None = None,
        concurrency: int | None = None,
        progress: bool | None = None,
    ) -> Iterator[Result]:
        """Yield one Result per image, in input order, as soon as it and all before it are in.

        At most 2 × concurrency × batch_size images are held at once (concurrency requests in
        flight and as many ready to go), so `images` may be any iterable, of any length. A bad
        image gives an error Result in its place; ClientError is raised only when the service
        stays unreachable or refuses the request itself."""
        # Checked now, not at the first next(): the generator below starts only then.
        top_k = _check_top_k(top_k)
        batch_size, concurrency = self.options(batch_size, concurrency)
        return self._stream(images, top_k, batch_size, concurrency, progress)

    def _stream(
        self,
        images: Iterable[Any],
        top_k: int,
        batch_size: int,
        concurrency: int,
        progress: bool | None,
    ) -> Iterator[Result]:
        bar = _progress(images, progress)
        pool = ThreadPoolExecutor(concurrency, thread_name_prefix="tin-client")
        window: deque[Future[list[Result]]] = deque()
        try:
            for chunk in _chunks(images, batch_size, self.max_request_bytes):
                window.append(pool.submit(self._classify_chunk, chunk, top_k))
                # Hand on what is done at the head; wait only when the window is full.
                while window and (window[0].done() or len(window) >= 2 * concurrency):
                    yield from _emit(window.popleft().result(), bar)
            while window:
                yield from _emit(window.popleft().result(), bar)
        finally:
            # On an error or an abandoned iteration: drop queued chunks, don't wait for the rest.
            pool.shutdown(wait=False, cancel_futures=True)
            bar.close()

    def _classify_chunk(self, chunk: list[_Item], top_k: int) -> list[Result]:
        results = _item_results(chunk)
        todo = [it for it in chunk if it.error is None]
        if todo:
            results.update(self._classify_batch(todo, top_k))
        return [results[it.index] for it in chunk]

    def _classify_batch(self, items: list[_Item], top_k: int) -> dict[int, Result]:
        try:
            response = self._send(
                "POST",
                "/classify_batch",
                files=self.batch_upload(items),
                data={"top_k": str(top_k)},
            )
        except ClientError as e:
            if not _split(e):
                raise
            if len(items) == 1:
                return {items[0].index: Result(items[0].index, items[0].name, error=e)}
            half = len(items) // 2
            return self._classify_batch(items[:half], top_k) | self._classify_batch(
                items[half:], top_k
            )
        return _batch_results(items, _json(response))


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
        timeout: float = DEFAULT_TIMEOUT,
        retries: int = DEFAULT_RETRIES,
        backoff: float = 0.5,
        max_backoff: float = 30.0,
        batch_size: int = DEFAULT_BATCH_SIZE,
        concurrency: int = DEFAULT_CONCURRENCY,
        max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
        transport: httpx.AsyncBaseTransport | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(
            url, timeout, retries, backoff, max_backoff, batch_size, concurrency, max_request_bytes
        )
        self._http = httpx.AsyncClient(
            base_url=self.url, timeout=timeout, transport=transport, headers=headers
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
                response = await self._http.request(method, path, **kwargs)
            except RETRY_EXCEPTIONS as e:
                failure, response = transport_error(e, self.url + path), None
            else:
                if response.is_success:
                    return response
                failure = error_from_response(response)
            await asyncio.sleep(self.retry_delay(attempt, failure, response))

    async def ready(self) -> bool:
        try:
            return (await self._http.get("/readyz")).status_code == 200
        except httpx.HTTPError:
            return False

    async def wait_until_ready(self, timeout: float = 60.0, interval: float = 0.5) -> None:
        deadline = time.monotonic() + timeout
        while not await self.ready():
            if time.monotonic() > deadline:
                raise ClientError(f"{self.url} not ready after {timeout:g} s", "not_ready")
            await asyncio.sleep(interval)

    async def labels(self) -> list[Label]:
        body = _json(await self._send("GET", "/labels"))
        return [Label(int(x["index"]), x["wnid"], x["label"]) for x in body["labels"]]

    async def model_info(self) -> ModelInfo:
        return ModelInfo.from_json(_json(await self._send("GET", "/model")))

    async def classify(self, image: Any, top_k: int = DEFAULT_TOP_K) -> Result:
        data = {"top_k": str(_check_top_k(top_k))}
        name, files = self.single_upload(image)
        body = _json(await self._send("POST", "/classify", files=files, data=data))
        return Result(0, name, _predictions(body.get("predictions")), model=body.get("model"))

    async def classify_many(
        self,
        images: Iterable[Any] | AsyncIterable[Any],
        top_k: int = DEFAULT_TOP_K,
        batch_size: int | None = None,
        concurrency: int | None = None,
        progress: bool | None = None,
    ) -> list[Result]:
        iterator = self.classify_iter(images, top_k, batch_size, concurrency, progress)
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
    ) -> AsyncIterator[Result]:
        """As TinyImageNetClient.classify_iter (`async for`): in input order, at most
        `concurrency` requests in flight and 2 × concurrency chunks held."""
        top_k = _check_top_k(top_k)
        batch_size, concurrency = self.options(batch_size, concurrency)
        return self._stream(images, top_k, batch_size, concurrency, progress)

    async def _stream(
        self,
        images: Iterable[Any] | AsyncIterable[Any],
        top_k: int,
        batch_size: int,
        concurrency: int,
        progress: bool | None,
    ) -> AsyncIterator[Result]:
        slots = asyncio.Semaphore(concurrency)
        bar = _progress(images, progress)

        async def run(chunk: list[_Item]) -> list[Result]:
            async with slots:
                return await self._classify_chunk(chunk, top_k)

        window: deque[asyncio.Task[list[Result]]] = deque()
        try:
            async for chunk in _achunks(images, batch_size, self.max_request_bytes):
                window.append(asyncio.ensure_future(run(chunk)))
                await asyncio.sleep(0)  # let the new task start its request
                while window and (window[0].done() or len(window) >= 2 * concurrency):
                    for result in await window.popleft():
                        bar.update(1)
                        yield result
            while window:
                for result in await window.popleft():
                    bar.update(1)
                    yield result
        finally:
            for task in window:
                task.cancel()
            await asyncio.gather(*window, return_exceptions=True)
            bar.close()

    async def _classify_chunk(self, chunk: list[_Item], top_k: int) -> list[Result]:
        results = _item_results(chunk)
        todo = [it for it in chunk if it.error is None]
        if todo:
            results.update(await self._classify_batch(todo, top_k))
        return [results[it.index] for it in chunk]

    async def _classify_batch(self, items: list[_Item], top_k: int) -> dict[int, Result]:
        try:
            response = await self._send(
                "POST",
                "/classify_batch",
                files=self.batch_upload(items),
                data={"top_k": str(top_k)},
            )
        except ClientError as e:
            if not _split(e):
                raise
            if len(items) == 1:
                return {items[0].index: Result(items[0].index, items[0].name, error=e)}
            half = len(items) // 2
            first = await self._classify_batch(items[:half], top_k)
            return first | await self._classify_batch(items[half:], top_k)
        return _batch_results(items, _json(response))
