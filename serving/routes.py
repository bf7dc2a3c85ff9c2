"""The public HTTP API, as Starlette routes mounted on the BentoML service.

Why not BentoML's own @bentoml.api parameters for the uploads: BentoML parses and validates the
request before the method runs, so a broken upload never reaches code that could answer it well
(its PIL.Image parameter turns a truncated file into a 500) and a bad `top_k` gets BentoML's
error shape, not ours; it also has no request size limit. Here every request-level problem is a
4xx with {"error": {"code": ..., "message": ...}}; the model is reached through the service's
micro-batcher (inference/batcher.py).
"""

from __future__ import annotations

import asyncio
import base64
import difflib
import functools
import hashlib
import logging
import re
from collections.abc import Awaitable, Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import anyio.to_thread
import numpy as np
from starlette.applications import Starlette
from starlette.datastructures import FormData, UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from inference.answers import Ask, confident, explanation, multipart_mixed, png_parts, top_k
from inference.batcher import Overloaded
from inference.preprocess import (
    ImageError,
    is_small,
    model_input,
    open_for_overlay,
    open_reduced,
)
from serving.config import DEFAULT_EXPLAIN_TOP_K, DEFAULT_TOP_K, MAX_TOP_K

log = logging.getLogger("bentoml.tin")  # BentoML prints its own loggers

RAW_TYPES = ("image/", "application/octet-stream")  # a bare image as the body of /classify
FORM_TYPES = ("multipart/form-data", "application/x-www-form-urlencoded")
MAX_FORM_FILES = 10_000  # a guard for the parser only; TIN_MAX_BATCH_IMAGES is the real limit


class ApiError(Exception):
    """A request this API refuses: HTTP status, error code and a message for people."""

    def __init__(self, status: int, code: str, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.headers = headers


def error_body(code: str, message: str) -> dict:
    return {"error": {"code": code, "message": message}}


REFUSALS = (ApiError, Overloaded)


def refusal(e: ApiError | Overloaded) -> JSONResponse:
    """The answer to a refused request, for the mounted routes and the native APIs alike."""
    if isinstance(e, Overloaded):  # the batching queue is too long (inference/batcher.py)
        message = "the model is overloaded or unavailable; retry later"
        body = error_body("unavailable", message)
        return JSONResponse(body, status_code=503, headers={"Retry-After": "1"})
    return JSONResponse(error_body(e.code, e.message), status_code=e.status, headers=e.headers)


class Slots:
    """At most `n` of an expensive kind of work at once (drawing PNG overlays); past that a
    request is refused at once with 503 and Retry-After rather than queued, so that a burst of
    them cannot hold the CPUs, or the memory, that every other request needs. One event loop
    takes and gives back the slots: no lock."""

    def __init__(self, n: int, what: str):
        self.free, self.what = n, what

    @contextmanager
    def take(self):
        if self.free <= 0:
            message = f"too many {self.what} in progress; retry in a moment"
            raise ApiError(503, "busy", message, {"Retry-After": "1"})
        self.free -= 1
        try:
            yield
        finally:
            self.free += 1


def json_errors(handler: Callable[[Request], Awaitable[JSONResponse]]):
    """Answer a refusal as `refusal` does and anything unexpected with a JSON 500, never a trace."""

    async def wrapped(request: Request) -> JSONResponse:
        try:
            return await handler(request)
        except REFUSALS as e:
            return refusal(e)
        except ClientDisconnect:
            # The client hung up before its body was in: no one to answer, and not a failure of
            # the service, which a 500 would count it as. 499 as nginx logs it.
            log.info("%s %s: the client hung up mid-request", request.method, request.url.path)
            message = "the client closed the connection before sending its body"
            return JSONResponse(error_body("client_disconnected", message), status_code=499)
        except Exception:
            log.exception("%s %s failed", request.method, request.url.path)
            message = "unexpected server error; see the server log"
            return JSONResponse(error_body("internal_error", message), status_code=500)

    return wrapped


def service(request: Request):
    """The service these routes answer for (serving/service.py's Classifier: its settings, card
    and model), handed to the app when the service starts (`app.state.service`), not looked up
    through BentoML."""
    return request.app.state.service


# --- request parsing ---------------------------------------------------------------------------


def body_timeout(seconds: float) -> ApiError:
    # A client sending its upload a byte at a time held its connection (and a slot of the
    # server) until BentoML's 120 s timeout: a pause of TIN_BODY_TIMEOUT_S is a 408.
    return ApiError(408, "body_timeout", f"the request body stopped coming for {seconds:g} s")


def size_limited(request: Request, limit: int, idle_s: float) -> Request:
    """The same request, refused with 413 as soon as its body passes `limit` bytes (from the
    Content-Length header when there is one, while streaming when there is not), and with 408
    when the body stops coming for `idle_s` seconds."""
    too_large = ApiError(
        413, "upload_too_large", f"the request body is over the limit of {limit:,} bytes"
    )
    length = request.headers.get("content-length")
    if length is not None:
        if not length.isdigit():
            raise ApiError(400, "bad_request", f"invalid Content-Length {length!r}")
        if int(length) > limit:
            raise too_large
    received = 0

    async def receive():
        nonlocal received
        try:
            message = await asyncio.wait_for(request.receive(), idle_s)
        except TimeoutError:
            raise body_timeout(idle_s) from None
        received += len(message.get("body", b""))
        if received > limit:
            raise too_large
        return message

    return Request(request.scope, receive)


def media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


async def read_form(request: Request) -> FormData:
    # A urlencoded form cannot carry a file, but parsing it lets the answer say what is missing.
    if media_type(request) not in FORM_TYPES:
        raise ApiError(
            415,
            "unsupported_media_type",
            f"expected multipart/form-data, got {media_type(request) or 'no Content-Type'}",
        )
    try:
        return await request.form(max_files=MAX_FORM_FILES, max_fields=100)
    except (MultiPartException, HTTPException) as e:  # Starlette raises the latter in an app
        detail = getattr(e, "message", None) or getattr(e, "detail", str(e))
        raise ApiError(400, "bad_multipart", f"malformed multipart body: {detail}") from None


def parse_top_k(raw: str | None, default: int = DEFAULT_TOP_K) -> int:
    if raw is None:
        return default
    if not isinstance(raw, str):
        raise ApiError(400, "bad_top_k", "top_k must be a form field, not a file")
    # ASCII digits only: int() would also take "", " 5", "1_0" and other scripts' digits, and
    # raise on 5000 of them.
    if not re.fullmatch(r"-?[0-9]{1,9}", raw) or not 1 <= int(raw) <= MAX_TOP_K:
        message = f"top_k must be an integer between 1 and {MAX_TOP_K}, got {raw[:40]!r}"
        raise ApiError(400, "bad_top_k", message)
    return int(raw)


def form_top_k(form: FormData | dict, request: Request, default: int = DEFAULT_TOP_K) -> int:
    # A form field, or the query string (the only place for it with a raw image body). A bad
    # query value is refused even when the form overrides it: it is still a bad request.
    query = parse_top_k(request.query_params.get("top_k"), default)
    return parse_top_k(form["top_k"], default) if "top_k" in form else query


# A decimal as JSON writes it (0.5, .5, 1, 5e-1): no sign, nan, inf or other scripts' digits.
CONFIDENCE = re.compile(r"[0-9]{0,20}(\.[0-9]{0,20})?([eE][-+]?[0-9]{1,3})?")


def parse_min_confidence(raw: str | None, default: float | None) -> float | None:
    """A probability, 0 to 1: below it the answer says "confident": false (and still lists the
    top k). None (not asked, no TIN_MIN_CONFIDENCE): no judgement, "confident": null."""
    if raw is None:
        return default
    if not isinstance(raw, str):
        raise ApiError(400, "bad_min_confidence", "min_confidence must be a form field")
    number = CONFIDENCE.fullmatch(raw) and any(c.isdigit() for c in raw.partition("e")[0])
    if not number or not 0 <= float(raw) <= 1:
        message = f"min_confidence must be a probability between 0 and 1, got {raw[:40]!r}"
        raise ApiError(400, "bad_min_confidence", message)
    return float(raw)


def form_min_confidence(form: FormData | dict, request: Request, default: float | None):
    query = parse_min_confidence(request.query_params.get("min_confidence"), default)
    if "min_confidence" in form:
        return parse_min_confidence(form["min_confidence"], default)
    return query


def field(form: FormData | dict, request: Request, name: str) -> str | None:
    """A text parameter from the form, else the query string; a file there is refused."""
    value = form.get(name, request.query_params.get(name))
    if value is not None and not isinstance(value, str):
        raise ApiError(400, f"bad_{name}", f"{name} must be a form field, not a file")
    return value


def explain_ask(form: FormData | dict, request: Request, card) -> Ask:
    """top_k (default 3) or class=WNID, not both; an unknown class is refused with how to get
    the valid ones."""
    wnid = field(form, request, "class")
    if wnid is None:
        return Ask(top_k=form_top_k(form, request, DEFAULT_EXPLAIN_TOP_K))
    if "top_k" in form or "top_k" in request.query_params:
        raise ApiError(400, "conflicting_parameters", "give top_k or class, not both")
    return class_ask(wnid, card)


def class_ask(wnid: str, card) -> Ask:
    """Ask for the one class `wnid`, or the class whose label it is (`tabby`, any case, when one
    label is); anything else is refused with the nearest labels and how to get the valid ones."""
    if wnid in card.wnids:
        return Ask(wnid=wnid)
    named = [w for w, n in zip(card.wnids, card.names, strict=True) if n.lower() == wnid.lower()]
    if len(named) == 1:
        return Ask(wnid=named[0])
    if named:
        message = f"{len(named)} classes are labelled {wnid[:40]!r}: give one wnid of {named}"
        raise ApiError(400, "ambiguous_class", message)
    near = difflib.get_close_matches(wnid.lower(), [n.lower() for n in card.names], n=3)
    hint = f"; did you mean {', '.join(repr(n) for n in near)}?" if near else ""
    message = (
        f"unknown class {wnid[:40]!r}: give a wnid or a label of the model's {len(card.wnids)} "
        f"classes (GET /labels lists them){hint}"
    )
    raise ApiError(400, "unknown_class", message)


def check_count(n: int, limit: int) -> None:
    """A batch request holds at most `limit` images (TIN_MAX_BATCH_IMAGES)."""
    if n > limit:
        raise ApiError(400, "too_many_images", f"{n} images in one request; the limit is {limit}")


def explain_format(form: FormData | dict, request: Request) -> str:
    value = field(form, request, "format") or "json"
    if value not in ("json", "png"):
        raise ApiError(400, "bad_format", f"format must be json or png, got {value[:40]!r}")
    return value


def uploads(form: FormData, field: str) -> list[UploadFile]:
    values = form.getlist(field)
    if any(not isinstance(v, UploadFile) for v in values):
        raise ApiError(400, f"missing_{field}", f"form field {field!r} must be a file upload")
    return values


# --- the model ----------------------------------------------------------------------------------


@dataclass
class Decoded:
    """One usable upload: the model's input, the upload's (width, height) as displayed, and the
    upright image itself where an answer draws on it."""

    array: np.ndarray
    size: tuple[int, int]
    image: object = None


async def decode_all(data: list[bytes], max_pixels: int, keep: bool = False):
    """Decode off the event loop (a large JPEG takes tens of ms; one small upload is decoded in
    place, see inference.preprocess.is_small); each failure (an ImageError)
    kept in its place. `keep`: the upright images to draw on too, at most OVERLAY_MAX_SIDE a
    side."""

    def work():
        out = []
        for d in data:
            try:
                rgb, size = open_reduced(d, max_pixels)  # the model sees what /classify sees
                shown = open_for_overlay(d, max_pixels) if keep else None  # to draw on
                out.append(Decoded(model_input(rgb), size, shown))
            except ImageError as e:
                out.append(e)
        return out

    # One small upload: cheaper here than a thread hop. A batch goes to the thread whatever its
    # images, so the loop never blocks for more than one small decode.
    if not keep and len(data) == 1 and is_small(data[0]):
        return work()
    return await anyio.to_thread.run_sync(work)


def _usable(decoded: list) -> tuple[list[int], np.ndarray | None]:
    good = [i for i, d in enumerate(decoded) if not isinstance(d, ImageError)]
    return good, np.stack([decoded[i].array for i in good]) if good else None


def _error(i: int, e: ImageError) -> dict:
    return {"index": i, "error": {"code": e.code, "message": e.message}}


async def classify_one(svc, data: bytes, k: int, least: float | None = None) -> dict:
    """One upload's answer body; ApiError (400) if it is not a usable image. Shared by the
    mounted /classify and the native /api/classify (serving/native.py). `least`: the
    min_confidence the answer is judged by (None: not judged)."""
    (image,) = await decode_all([data], svc.settings.max_pixels)
    if isinstance(image, ImageError):
        raise ApiError(400, image.code, image.message)
    probs = await svc.probabilities(image.array[None])
    return {
        "model": svc.name,
        "min_confidence": least,
        "confident": confident(probs[0], least),
        "predictions": top_k(probs[0], k, svc.card),
    }


async def classify_many(svc, data: list[bytes], k: int, least: float | None = None) -> dict:
    """Several uploads' answer body, in order; an unusable one gets an error in its place."""
    decoded = await decode_all(data, svc.settings.max_pixels)
    good, batch = _usable(decoded)
    probs = dict(zip(good, await svc.probabilities(batch), strict=True)) if good else {}
    results = [
        _error(i, d)
        if isinstance(d, ImageError)
        else {
            "index": i,
            "confident": confident(probs[i], least),
            "predictions": top_k(probs[i], k, svc.card),
        }
        for i, d in enumerate(decoded)
    ]
    return {"model": svc.name, "min_confidence": least, "results": results}


def _needs_maps(svc) -> None:
    if not svc.card.cam_size:
        message = f"model {svc.name} has no activation maps: export it again with this version"
        raise ApiError(501, "no_activation_maps", message)


async def explain_one(
    svc, data: bytes, ask: Ask, keep: bool = False, least: float | None = None
) -> tuple[dict, object]:
    """One upload's explanation body (and its upright image where `keep`); ApiError (400) if
    it is not a usable image."""
    _needs_maps(svc)
    (image,) = await decode_all([data], svc.settings.max_pixels, keep)
    if isinstance(image, ImageError):
        raise ApiError(400, image.code, image.message)
    probs, logits, cam = await svc.explanations(image.array[None])
    body = {
        "model": svc.name,
        "min_confidence": least,
        "confident": confident(probs[0], least),
        "map_size": list(cam.shape[-2:]),
        "image_size": list(image.size),
        "predictions": explanation(probs[0], logits[0], cam[0], svc.card, ask),
    }
    return body, image.image


async def explain_many(svc, data: list[bytes], ask: Ask, least: float | None = None) -> dict:
    """Several uploads' explanations, in order; an unusable one gets an error in its place."""
    _needs_maps(svc)
    decoded = await decode_all(data, svc.settings.max_pixels)
    good, batch = _usable(decoded)
    outputs = {}
    if good:
        probs, logits, cam = await svc.explanations(batch)
        outputs = {i: (probs[n], logits[n], cam[n]) for n, i in enumerate(good)}
    results = []
    for i, d in enumerate(decoded):
        if isinstance(d, ImageError):
            results.append(_error(i, d))
        else:
            classes = explanation(*outputs[i], svc.card, ask)
            sure = confident(outputs[i][0], least)
            results.append(
                {"index": i, "confident": sure, "image_size": list(d.size), "predictions": classes}
            )
    return {
        "model": svc.name,
        "min_confidence": least,
        "map_size": list(svc.card.cam_size or ()),
        "results": results,
    }


# --- endpoints ---------------------------------------------------------------------------------


QUERY = {
    "/classify": ("top_k", "min_confidence"),
    "/explain": ("top_k", "class", "format", "min_confidence"),
}


def check_query(request: Request, route: str) -> None:
    """Refuse a query parameter the route does not take: a misspelt `clas=` or `topk=` would
    otherwise be ignored, and the answer would not be what was asked for."""
    valid = QUERY[route.removesuffix("_batch")]
    unknown = sorted(set(request.query_params) - set(valid))
    if unknown:
        message = f"unknown query parameter {unknown[0][:40]!r}; {route} takes {', '.join(valid)}"
        raise ApiError(400, "unknown_parameter", message)


async def one_upload(request: Request, svc, route: str) -> tuple[FormData | dict, bytes]:
    """(the form, or {} for a raw image body, whose parameters are in the query string; the
    image's bytes) of a one-image request."""
    check_query(request, route)
    s = svc.settings
    request = size_limited(request, s.max_upload_bytes, s.body_timeout_s)
    if media_type(request).startswith(RAW_TYPES):
        return {}, await request.body()
    form = await read_form(request)
    files = uploads(form, "image")
    if not files:
        raise ApiError(400, "missing_image", "no file in form field 'image'")
    if len(files) > 1:
        raise ApiError(400, "too_many_images", f"{route} takes one image; use {route}_batch")
    return form, await files[0].read()


async def many_uploads(request: Request, svc, route: str) -> tuple[FormData, list[bytes]]:
    """(the form, the images' bytes in order) of a batch request."""
    check_query(request, route)
    limit = svc.settings.max_batch_images
    s = svc.settings
    form = await read_form(size_limited(request, s.max_upload_bytes, s.body_timeout_s))
    files = uploads(form, "images")
    if not files:
        raise ApiError(400, "missing_images", "no file in form field 'images'")
    check_count(len(files), limit)
    return form, [await f.read() for f in files]


@json_errors
async def classify(request: Request) -> JSONResponse:
    svc = service(request)
    form, data = await one_upload(request, svc, "/classify")
    least = form_min_confidence(form, request, svc.settings.min_confidence)
    return JSONResponse(await classify_one(svc, data, form_top_k(form, request), least))


@json_errors
async def classify_batch(request: Request) -> JSONResponse:
    svc = service(request)
    form, data = await many_uploads(request, svc, "/classify_batch")
    least = form_min_confidence(form, request, svc.settings.min_confidence)
    return JSONResponse(await classify_many(svc, data, form_top_k(form, request), least))


@json_errors
async def explain(request: Request) -> Response:
    """The activation maps of the top_k classes (default 3) or of class=WNID: JSON, or with
    format=png the maps drawn over the image, one PNG per class (a multipart/mixed answer when
    there are several)."""
    svc = service(request)
    form, data = await one_upload(request, svc, "/explain")
    ask, fmt = explain_ask(form, request, svc.card), explain_format(form, request)
    least = form_min_confidence(form, request, svc.settings.min_confidence)
    if fmt == "json":
        body, _ = await explain_one(svc, data, ask, least=least)
        return JSONResponse(body)
    with svc.overlays.take():
        body, image = await explain_one(svc, data, ask, keep=True, least=least)
        parts = await anyio.to_thread.run_sync(png_parts, image, body["predictions"])
    if len(parts) == 1:
        _, png, headers = parts[0]
        return Response(png, media_type="image/png", headers=headers)
    content, kind = multipart_mixed(parts)
    return Response(content, headers={"Content-Type": kind})


@json_errors
async def explain_batch(request: Request) -> JSONResponse:
    """/explain for several images, in order, as JSON; an unusable one gets an error in place."""
    svc = service(request)
    form, data = await many_uploads(request, svc, "/explain_batch")
    ask = explain_ask(form, request, svc.card)
    if explain_format(form, request) != "json":
        raise ApiError(400, "bad_format", "/explain_batch answers JSON; use /explain for PNGs")
    least = form_min_confidence(form, request, svc.settings.min_confidence)
    return JSONResponse(await explain_many(svc, data, ask, least))


async def labels(request: Request) -> JSONResponse:
    card = service(request).card
    return JSONResponse(
        {
            "labels": [
                {"index": i, "wnid": w, "label": n}
                for i, (w, n) in enumerate(zip(card.wnids, card.names, strict=True))
            ]
        }
    )


@json_errors
async def model(request: Request) -> JSONResponse:
    svc = service(request)
    card = svc.card
    return JSONResponse(
        {
            "name": svc.name,
            "preset": card.preset,
            "precision": card.precision,
            "weights": card.weights,  # how the file stores them ("fp16": half the file)
            "classes": len(card.wnids),
            "model_config": card.model_config,
            "gflops": card.gflops,
            "cam_size": card.cam_size,
            "tta": card.tta,
            "calibration": calibration_summary(card.calibration),
            "min_confidence": svc.settings.min_confidence,
            "val_top1": card.val_top1,
            "val_top5": card.val_top5,
            "val_images": card.val_images,
            "input": card.input,
            "backend": await svc.backend_info(),
            "versions": card.versions,
            "checkpoint_sha256": card.checkpoint_sha256,
            "exported_at": card.exported_at,
            "limits": {
                "max_upload_bytes": svc.settings.max_upload_bytes,
                "max_batch_images": svc.settings.max_batch_images,
                "max_pixels": svc.settings.max_pixels,
                "max_top_k": MAX_TOP_K,
            },
        }
    )


def calibration_summary(record: dict | None) -> dict | None:
    """What /model says of the probabilities: the temperature in the graph, ECE and NLL before
    and after on the val images it was not fitted on, and the min_confidence for each top-1."""
    if not record:
        return None
    keep = ("ece", "nll", "brier", "top1", "mean_confidence", "images")
    return {
        "method": record.get("method"),
        "temperature": record.get("temperature"),
        "before": {k: record.get("before", {}).get(k) for k in keep},
        "after": {k: record.get("after", {}).get(k) for k in keep},
        "selective": record.get("selective", []),
    }


async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
    # 404/405 inside these routes (GET /classify...) in the same JSON shape as the rest.
    # Its headers too: a 405 must say what is allowed (Allow).
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "bad_request")
    body = error_body(code, str(exc.detail))
    return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)


UI = Path(__file__).with_name("ui") / "index.html"


def content_security_policy(html: str) -> str:
    """A policy that lets exactly the page's own inline <script> and <style> run (by hash, no
    'unsafe-inline') and allows no request beyond its own origin (blob: for the preview of the
    dropped image, data: for the empty favicon)."""

    def hashes(tag: str) -> str:
        bodies = re.findall(rf"<{tag}>(.*?)</{tag}>", html, flags=re.S)
        digests = (base64.b64encode(hashlib.sha256(b.encode()).digest()).decode() for b in bodies)
        return " ".join(f"'sha256-{d}'" for d in digests)

    return (
        f"default-src 'none'; script-src {hashes('script')}; style-src {hashes('style')}; "
        "img-src blob: data:; connect-src 'self'; base-uri 'none'; form-action 'none'; "
        "frame-ancestors 'none'"
    )


@functools.cache
def _page() -> tuple[str, dict]:
    """The page and its headers, read and hashed once per process."""
    html = UI.read_text()
    return html, {"Content-Security-Policy": content_security_policy(html)}


async def ui(request: Request) -> HTMLResponse:
    """The demo page: drop an image, see the top 5 and where the model looked."""
    html, headers = _page()
    return HTMLResponse(html, headers=headers)


async def docs(request: Request) -> JSONResponse:
    # BentoML routes /docs.json after this app, so this one answers: BentoML's own document
    # leaves out every route above (serving/openapi.py).
    return JSONResponse(service(request).openapi())


app = Starlette(
    routes=[
        Route("/classify", classify, methods=["POST"]),
        Route("/classify_batch", classify_batch, methods=["POST"]),
        Route("/explain", explain, methods=["POST"]),
        Route("/explain_batch", explain_batch, methods=["POST"]),
        Route("/ui", ui, methods=["GET"]),
        Route("/labels", labels, methods=["GET"]),
        Route("/model", model, methods=["GET"]),
        Route("/docs.json", docs, methods=["GET"]),
    ],
    exception_handlers={HTTPException: http_error},
)
