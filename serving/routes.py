"""The public HTTP API, as Starlette routes mounted on the BentoML service.

Why not BentoML's own @bentoml.api parameters for the uploads: BentoML parses and validates the
request before the method runs, so a broken upload never reaches code that could answer it well
(its PIL.Image parameter turns a truncated file into a 500) and a bad `top_k` gets BentoML's
error shape, not ours; it also has no request size limit. Here every request-level problem is a
4xx with {"error": {"code": ..., "message": ...}}; the model is still reached through BentoML's
adaptive batching (the inner service in serving/service.py).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable

import anyio.to_thread
import bentoml
import numpy as np
from bentoml.exceptions import ServiceUnavailable
from starlette.applications import Starlette
from starlette.datastructures import FormData, UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from export.contract import ModelCard
from serving.config import DEFAULT_TOP_K, MAX_TOP_K
from serving.preprocess import ImageError, decode

log = logging.getLogger("bentoml.tin")  # BentoML prints its own loggers

RAW_TYPES = ("image/", "application/octet-stream")  # a bare image as the body of /classify
FORM_TYPES = ("multipart/form-data", "application/x-www-form-urlencoded")
MAX_FORM_FILES = 10_000  # a guard for the parser only; TIN_MAX_BATCH_IMAGES is the real limit


class ApiError(Exception):
    """A request this API refuses: HTTP status, error code and a message for people."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def error_body(code: str, message: str) -> dict:
    return {"error": {"code": code, "message": message}}


def json_errors(handler: Callable[[Request], Awaitable[JSONResponse]]):
    """Answer ApiError with its status and anything unexpected with a JSON 500, never a trace."""

    async def wrapped(request: Request) -> JSONResponse:
        try:
            return await handler(request)
        except ApiError as e:
            return JSONResponse(error_body(e.code, e.message), status_code=e.status)
        except ClientDisconnect:
            # The client hung up before its body was in: no one to answer, and not a failure of
            # the service, which a 500 would count it as. 499 as nginx logs it.
            log.info("%s %s: the client hung up mid-request", request.method, request.url.path)
            message = "the client closed the connection before sending its body"
            return JSONResponse(error_body("client_disconnected", message), status_code=499)
        except ServiceUnavailable:  # batching queue too long, or the model process is down
            message = "the model is overloaded or unavailable; retry later"
            return JSONResponse(error_body("unavailable", message), status_code=503)
        except Exception:
            log.exception("%s %s failed", request.method, request.url.path)
            message = "unexpected server error; see the server log"
            return JSONResponse(error_body("internal_error", message), status_code=500)

    return wrapped


# --- request parsing ---------------------------------------------------------------------------


def size_limited(request: Request, limit: int) -> Request:
    """The same request, refused with 413 as soon as its body passes `limit` bytes: from the
    Content-Length header when there is one, while streaming when there is not."""
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
        message = await request.receive()
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


def parse_top_k(raw: str | None) -> int:
    if raw is None:
        return DEFAULT_TOP_K
    if not isinstance(raw, str):
        raise ApiError(400, "bad_top_k", "top_k must be a form field, not a file")
    # ASCII digits only: int() would also take "", " 5", "1_0" and other scripts' digits, and
    # raise on 5000 of them.
    if not re.fullmatch(r"-?[0-9]{1,9}", raw) or not 1 <= int(raw) <= MAX_TOP_K:
        message = f"top_k must be an integer between 1 and {MAX_TOP_K}, got {raw[:40]!r}"
        raise ApiError(400, "bad_top_k", message)
    return int(raw)


def form_top_k(form: FormData, request: Request) -> int:
    # A form field, or the query string (the only place for it with a raw image body). A bad
    # query value is refused even when the form overrides it: it is still a bad request.
    query = parse_top_k(request.query_params.get("top_k"))
    return parse_top_k(form["top_k"]) if "top_k" in form else query


def uploads(form: FormData, field: str) -> list[UploadFile]:
    values = form.getlist(field)
    if any(not isinstance(v, UploadFile) for v in values):
        raise ApiError(400, f"missing_{field}", f"form field {field!r} must be a file upload")
    return values


# --- model -------------------------------------------------------------------------------------


def top_k(probs: np.ndarray, k: int, card: ModelCard) -> list[dict]:
    """The k most probable classes, most probable first; ties keep class order."""
    order = np.argsort(-probs, kind="stable")[:k]
    return [
        {
            "rank": rank,
            "wnid": card.wnids[i],
            "label": card.names[i],
            "probability": round(float(probs[i]), 6),
        }
        for rank, i in enumerate(order, start=1)
    ]


async def decode_all(data: list[bytes], max_pixels: int) -> list[np.ndarray | ImageError]:
    """Decode off the event loop (a large JPEG takes tens of ms); each failure kept in place."""

    def work():
        out = []
        for d in data:
            try:
                out.append(decode(d, max_pixels))
            except ImageError as e:
                out.append(e)
        return out

    return await anyio.to_thread.run_sync(work)


# --- endpoints ---------------------------------------------------------------------------------


@json_errors
async def classify(request: Request) -> JSONResponse:
    svc = bentoml.get_current_service()
    request = size_limited(request, svc.settings.max_upload_bytes)
    if media_type(request).startswith(RAW_TYPES):
        k = parse_top_k(request.query_params.get("top_k"))
        data = await request.body()
    else:
        form = await read_form(request)
        k = form_top_k(form, request)
        files = uploads(form, "image")
        if not files:
            raise ApiError(400, "missing_image", "no file in form field 'image'")
        if len(files) > 1:
            raise ApiError(400, "too_many_images", "/classify takes one image; use /classify_batch")
        data = await files[0].read()
    (image,) = await decode_all([data], svc.settings.max_pixels)
    if isinstance(image, ImageError):
        raise ApiError(400, image.code, image.message)
    probs = await svc.probabilities(image[None])
    return JSONResponse({"model": svc.name, "predictions": top_k(probs[0], k, svc.card)})


@json_errors
async def classify_batch(request: Request) -> JSONResponse:
    svc = bentoml.get_current_service()
    limit = svc.settings.max_batch_images
    form = await read_form(size_limited(request, svc.settings.max_upload_bytes))
    k = form_top_k(form, request)
    files = uploads(form, "images")
    if not files:
        raise ApiError(400, "missing_images", "no file in form field 'images'")
    if len(files) > limit:
        raise ApiError(
            400, "too_many_images", f"{len(files)} images in one request; the limit is {limit}"
        )
    decoded = await decode_all([await f.read() for f in files], svc.settings.max_pixels)
    good = [i for i, d in enumerate(decoded) if not isinstance(d, ImageError)]
    probs = await svc.probabilities(np.stack([decoded[i] for i in good])) if good else []
    per_image = dict(zip(good, probs, strict=True))
    results = []
    for i, d in enumerate(decoded):
        if isinstance(d, ImageError):
            results.append({"index": i, "error": {"code": d.code, "message": d.message}})
        else:
            results.append({"index": i, "predictions": top_k(per_image[i], k, svc.card)})
    return JSONResponse({"model": svc.name, "results": results})


async def labels(request: Request) -> JSONResponse:
    card = bentoml.get_current_service().card
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
    svc = bentoml.get_current_service()
    card = svc.card
    return JSONResponse(
        {
            "name": svc.name,
            "preset": card.preset,
            "precision": card.precision,
            "weights": card.weights,  # how the file stores them ("fp16": half the file)
            "classes": len(card.wnids),
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


async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
    # 404/405 inside these routes (GET /classify...) in the same JSON shape as the rest.
    # Its headers too: a 405 must say what is allowed (Allow).
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "bad_request")
    body = error_body(code, str(exc.detail))
    return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)


async def docs(request: Request) -> JSONResponse:
    # BentoML routes /docs.json after this app, so this one answers: BentoML's own document
    # leaves out every route above (serving/openapi.py).
    return JSONResponse(bentoml.get_current_service().openapi())


app = Starlette(
    routes=[
        Route("/classify", classify, methods=["POST"]),
        Route("/classify_batch", classify_batch, methods=["POST"]),
        Route("/labels", labels, methods=["GET"]),
        Route("/model", model, methods=["GET"]),
        Route("/docs.json", docs, methods=["GET"]),
    ],
    exception_handlers={HTTPException: http_error},
)
