"""API keys, off unless configured: TIN_API_KEYS (comma-separated) and/or TIN_API_KEYS_FILE (one
key per line; blank lines and lines starting with # are skipped).

With keys, every request but the probes, the metrics and the demo page needs `Authorization:
Bearer KEY`; a missing or wrong key is a 401 {"error": {"code": "unauthorized", ...}} with
WWW-Authenticate. The page (/ui) stays open because a browser cannot send a header when it opens
a page: it holds no data, asks for the key when the API answers 401, and sends it itself.
It is an ASGI middleware on the Classifier service (bentoml.Service.add_asgi_middleware), so it
sits in front of everything that service answers: the @bentoml.api routes, the mounted Starlette
app, /docs.json, /schema.json, the Swagger UI at / and its static files. BentoML places it inside
its own metrics, tracing and access-log middlewares (_bentoml_impl/server/app.py
ServiceAppFactory.middlewares), so a refused request is still logged and counted, by path and
status only: BentoML's access log prints neither headers nor the query string.

Keys are compared with hmac.compare_digest against every configured key (no early exit, so the
time does not say which key, or how much of one, matched) and never logged.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
from pathlib import Path

from serving.config import ConfigError

log = logging.getLogger("bentoml.tin")

OPEN_PATHS = frozenset({"/livez", "/readyz", "/healthz", "/metrics", "/ui"})
REALM = "tiny-imagenet"


def api_keys(environ=os.environ) -> tuple[bytes, ...]:
    """The configured keys (empty: authentication off). A file that is set but unreadable, or
    a configuration that yields no key at all, stops the service rather than opening it."""
    keys = [k.strip() for k in environ.get("TIN_API_KEYS", "").split(",")]
    path = environ.get("TIN_API_KEYS_FILE", "").strip()
    if path:
        try:
            lines = Path(path).expanduser().read_text().splitlines()
        except OSError as e:
            raise ConfigError(f"TIN_API_KEYS_FILE={path!r} cannot be read: {e}") from None
        keys += [ln.strip() for ln in lines if not ln.strip().startswith("#")]
    keys = [k for k in keys if k]
    if path and not keys:
        raise ConfigError(f"TIN_API_KEYS_FILE={path!r} holds no key")
    return tuple(k.encode() for k in keys)


def key_matches(presented: bytes, keys: tuple[bytes, ...]) -> bool:
    """True if `presented` equals one of `keys`; every key is compared, whatever matched."""
    found = False
    for key in keys:
        found |= hmac.compare_digest(presented, key)
    return found


def bearer_token(headers: list[tuple[bytes, bytes]]) -> bytes | None:
    for name, value in headers:
        if name.lower() == b"authorization":
            scheme, _, token = value.partition(b" ")
            if scheme.lower() == b"bearer" and token.strip():
                return token.strip()
            return None
    return None


class ApiKeyMiddleware:
    """Refuses requests without a configured key; does nothing when `keys` is empty."""

    def __init__(self, app, keys: tuple[bytes, ...] = ()):
        self.app = app
        self.keys = keys

    async def __call__(self, scope, receive, send):
        if not self.keys or scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        if scope["path"] in OPEN_PATHS:
            return await self.app(scope, receive, send)
        token = bearer_token(scope.get("headers", []))
        if token is not None and key_matches(token, self.keys):
            return await self.app(scope, receive, send)
        if scope["type"] == "websocket":  # none today; close before accepting
            return await send({"type": "websocket.close", "code": 1008})
        await unauthorized(send, "missing" if token is None else "wrong")


async def unauthorized(send, why: str) -> None:
    message = (
        "this service needs an API key: send the header Authorization: Bearer <key>"
        if why == "missing"
        else "the API key is not valid"
    )
    body = json.dumps({"error": {"code": "unauthorized", "message": message}}).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"www-authenticate", f'Bearer realm="{REALM}"'.encode()),
    ]
    await send({"type": "http.response.start", "status": 401, "headers": headers})
    await send({"type": "http.response.body", "body": body})
