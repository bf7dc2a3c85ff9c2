"""BentoML-native APIs next to the mounted routes: typed results for bentoml.SyncHTTPClient,
AsyncHTTPClient and bentoml.depends(url=...), with the same error contract as serving/routes.py.

The @bentoml.api methods live on serving/service.py's Classifier under /api/ (NATIVE_PREFIX):
BentoML registers its API routes before the mounted app, so an API on /classify would shadow the
mounted route and change what today's curl forms get. What BentoML 1.4.39 does by itself, and
what this module changes:

- a file parameter is `pathlib.Path` (multipart, written to a request temp file), not
  `PIL.Image`, whose decoder turns a broken file into a 500; the bytes go through
  inference/preprocess.py `decode`, as on the mounted routes.
- a refusal made in the method is returned as a starlette JSONResponse (BentoML sends a
  returned Response as it is, _bentoml_impl/server/app.py `api_endpoint`); raising a
  BentoMLException would answer `[{"error": "..."}]` (a one-element list, app.py
  `api_endpoint_wrapper`).
- NativeErrors, an ASGI middleware on these routes, answers what BentoML would get wrong or
  answer in its own shape: a body over TIN_MAX_UPLOAD_MB (BentoML has no limit) is a 413; a
  body that is not a form is a 415; a file field sent as text is a 400 (BentoML would download
  it as a URL, _bentoml_impl/serde.py MultipartSerde.ensure_file, and answer a 500 for anything
  else); a part the API does not take (`-F file=@a.jpg`) is a 400 unknown_parameter, as on the
  mounted routes (BentoML answered it with a 500); BentoML's own refusals (a missing or mistyped
  parameter: 400 {"error": "1 validation error for Input", "detail": [...]}; 404; 405) are
  rewritten to {"error": {"code", "message"}}, with the codes of the mounted routes
  (missing_image, bad_top_k...).
"""

from __future__ import annotations

import asyncio
import functools
import json

from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException
from starlette.requests import Request
from starlette.responses import JSONResponse

from serving.routes import REFUSALS, body_timeout, error_body, refusal

NATIVE_PREFIX = "/api/"
FORM_TYPES = ("multipart/form-data", "application/x-www-form-urlencoded")


def api_errors(func):
    """Answer ApiError (and an unavailable model) from an @bentoml.api method with our JSON
    body; BentoML returns a Response from the method as it is. functools.wraps keeps the
    signature BentoML reads the parameters from."""

    @functools.wraps(func)
    async def wrapped(*args, **kwargs):
        try:
            return await func(*args, **kwargs)
        except REFUSALS as e:
            return refusal(e)

    return wrapped


# --- the middleware ----------------------------------------------------------------------------


def _validation_message(body: dict) -> tuple[str, str]:
    """BentoML's pydantic 400 → our code and message: missing_<field> or bad_<field>, the
    codes the mounted routes use (missing_image, missing_images, bad_top_k)."""
    details = body.get("detail") if isinstance(body, dict) else None
    if not isinstance(details, list) or not details:
        return "bad_request", str(body.get("error", "bad request"))[:300]
    first = details[0]
    field = str((first.get("loc") or ["request"])[0])
    kind = "missing" if first.get("type") == "missing" else "bad"
    text = "; ".join(
        f"{'.'.join(map(str, d.get('loc') or ['body']))}: {d.get('msg', '')}" for d in details[:5]
    )
    return f"{kind}_{field}", text


OTHER_ERRORS = {
    404: ("not_found", "no such route (GET /docs.json lists them)"),
    405: ("method_not_allowed", "this API takes POST"),
    413: ("upload_too_large", "the request body is over the limit"),
    415: ("unsupported_media_type", "send multipart/form-data"),
    503: ("unavailable", "the model is overloaded or unavailable; retry later"),
}


def _ours(status: int, raw: bytes) -> bytes:
    """The body to send instead of BentoML's error body `raw`."""
    try:
        body = json.loads(raw)
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        return raw  # already ours (a Response returned by an API method)
    if status == 400 and isinstance(body, dict):
        code, message = _validation_message(body)
    elif status in OTHER_ERRORS:
        code, message = OTHER_ERRORS[status]
    elif status >= 500:
        code, message = "internal_error", "unexpected server error; see the server log"
    else:
        code, message = "bad_request", "the request was refused"
    return json.dumps(error_body(code, message)).encode()


class NativeErrors:
    """ASGI middleware for the NATIVE_PREFIX routes: the upload size limit, no text in a file
    field, and BentoML's error bodies rewritten to {"error": {"code", "message"}}."""

    def __init__(
        self,
        app,
        max_upload_bytes: int,
        body_timeout_s: float,
        routes: dict[str, tuple[tuple, tuple]],
    ):
        self.app = app
        self.limit, self.idle_s = max_upload_bytes, body_timeout_s
        self.routes = routes  # each @bentoml.api route: (its file parameters, all its parameters)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if not scope["path"].startswith(NATIVE_PREFIX):
            # BentoML's own plain-text 404 and 405 for a path no route takes (/clasify) in our
            # shape too; our routes' refusals pass through as they are.
            return await self.app(scope, receive, _rewriting(send))
        if scope["method"] != "POST" or scope["path"] not in self.routes:
            # BentoML's 404, or its 405 (with Allow), in our shape
            return await self.app(scope, receive, _rewriting(send))
        request = Request(scope, receive)
        length = request.headers.get("content-length", "")
        if length.isdigit() and int(length) > self.limit:
            return await self._refuse(scope, send, 413, "upload_too_large", self._too_large())
        try:
            body = await self._read(receive)
        except TimeoutError:
            late = body_timeout(self.idle_s)
            return await self._refuse(scope, send, late.status, late.code, late.message)
        if body is None:
            return await self._refuse(scope, send, 413, "upload_too_large", self._too_large())
        refusal = await self._check_form(scope, body, self.routes[scope["path"]])
        if refusal is not None:
            return await self._refuse(scope, send, *refusal)
        await self.app(scope, _replay(body, receive), _rewriting(send))

    def _too_large(self) -> str:
        return f"the request body is over the limit of {self.limit:,} bytes"

    async def _read(self, receive) -> bytes | None:
        """The whole body, or None past the limit (chunked uploads have no Content-Length)."""
        chunks, size = [], 0
        while True:
            message = await asyncio.wait_for(receive(), self.idle_s)  # as the mounted routes
            if message["type"] == "http.disconnect":
                break
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.limit:
                return None
            if not message.get("more_body", False):
                break
        return b"".join(chunks)

    async def _check_form(self, scope, body: bytes, spec) -> tuple[int, str, str] | None:
        """Only a form can carry the files; a file field sent as text would be fetched as a URL
        by BentoML, and a part it does not know is a 500 there: refuse all three here, as
        serving/routes.py `read_form` and `check_query` do."""
        fields, known = spec
        request = Request(scope, _replay(body))
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind not in FORM_TYPES:
            return (
                415,
                "unsupported_media_type",
                f"expected multipart/form-data, got {kind or 'no Content-Type'}",
            )
        try:
            async with request.form(max_files=10_000, max_fields=100) as form:
                unknown = sorted(set(form.keys()) - set(known))
                if unknown:
                    route = scope["path"]
                    takes = ", ".join(known)
                    message = f"unknown form field {unknown[0][:40]!r}; {route} takes {takes}"
                    return 400, "unknown_parameter", message
                for field in fields:
                    if any(not isinstance(v, UploadFile) for v in form.getlist(field)):
                        return (
                            400,
                            f"missing_{field}",
                            f"form field {field!r} must be a file upload",
                        )
        except (MultiPartException, HTTPException) as e:  # Starlette raises the latter in an app
            detail = getattr(e, "message", None) or getattr(e, "detail", str(e))
            return 400, "bad_multipart", f"malformed multipart body: {detail}"
        return None

    async def _refuse(self, scope, send, status: int, code: str, message: str) -> None:
        response = JSONResponse(error_body(code, message), status_code=status)
        await response(scope, _replay(b""), send)


def _replay(body: bytes, then=None):
    """An ASGI `receive` that gives `body` once, then waits on `then` (the real one, which
    reports the client's disconnect) or reports a disconnect."""
    sent = False

    async def receive():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await then() if then is not None else {"type": "http.disconnect"}

    return receive


def _rewriting(send):
    """`send` with error responses' bodies (small JSON) replaced by ours."""
    start = None
    chunks: list[bytes] = []

    async def wrapped(message):
        nonlocal start
        if message["type"] == "http.response.start" and message["status"] >= 400:
            start = message
            return
        if start is None:
            return await send(message)
        if message["type"] != "http.response.body":
            return await send(message)
        chunks.append(message.get("body", b""))
        if message.get("more_body", False):
            return
        body = _ours(start["status"], b"".join(chunks))
        headers = [(k, v) for k, v in start["headers"] if k.lower() != b"content-length"]
        headers = [(k, v) for k, v in headers if k.lower() != b"content-type"]
        headers += [(b"content-length", str(len(body)).encode())]
        headers += [(b"content-type", b"application/json")]
        await send({**start, "headers": headers})
        await send({"type": "http.response.body", "body": body, "more_body": False})

    return wrapped
