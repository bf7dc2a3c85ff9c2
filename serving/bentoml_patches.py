"""Where this service works around BentoML 1.4.39, in one place. Each patch names what it fixes;
tests/test_bentoml_patches.py holds, for each, a test that shows the upstream behaviour and
fails once BentoML changes it (then drop the patch). BentoML's client has one more, on the
client's side (the client must not import the server): clients/bentoml_upload.py.

1. TimeoutMiddleware, the request timeout without its memory cost. BentoML 1.4.39's
   (bentoml/_internal/server/http/traffic.py, on every service with `traffic.timeout`) arms
   `loop.call_later(timeout, ...)` for each request and never cancels it. The timer handle holds
   a copy of the request's contextvars (its OpenTelemetry span and what hangs on it) for the
   whole timeout after the answer has gone: with 120 s, every request of the last two minutes
   stays in memory (~6 kB of Python objects each), rising and falling with the request rate, and
   the heap keeps the high-water mark. Measured: HTTP worker 325 MiB at 87 requests/s and 181 MiB
   at 24/s, against 148 and 145 MiB with this middleware. `install()` swaps in the same
   middleware with the timer cancelled when the request ends and armed in an empty context, so a
   cancelled handle, until the event loop drops it, holds nothing either.
2. ServerErrors, an answer for an exception. The same TimeoutMiddleware waits for a first `send`
   and never looks at the app's own failure: an exception raised below it (in a middleware,
   before any answer) hangs the request until the timeout, and then nothing answers it (the
   504 is sent only if the app can still be cancelled). ServerErrors,
   registered as the service's first middleware, turns it into a JSON 500 at once.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging

from bentoml._internal.server.http import traffic
from starlette.responses import JSONResponse

from serving.routes import error_body

log = logging.getLogger("bentoml.tin")  # BentoML prints its own loggers

_Original = traffic.TimeoutMiddleware


class TimeoutMiddleware(_Original):
    """BentoML's TimeoutMiddleware (same answers: a 504 after `timeout` seconds without a first
    `send`), with its timer cancelled when the request ends."""

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        loop = asyncio.get_running_loop()
        waiter = loop.create_future()
        timer = loop.call_later(
            self.timeout, self._set_timer_out, waiter, context=contextvars.Context()
        )

        async def _send(message) -> None:
            if not waiter.done():
                waiter.set_result(None)
            await send(message)

        fut = asyncio.ensure_future(self.app(scope, receive, _send), loop=loop)
        try:
            await waiter
        except TimeoutError:
            if fut.cancel():
                body = {"error": f"Not able to process the request in {self.timeout} seconds"}
                await JSONResponse(body, status_code=504)(scope, receive, send)
        else:
            await fut  # wait for the future to finish
        finally:
            timer.cancel()


def install() -> None:
    """Make BentoML build its apps with TimeoutMiddleware above (base_app.py imports the name
    from traffic.py when it builds an app, after serving/service.py is imported)."""
    traffic.TimeoutMiddleware = TimeoutMiddleware


class ServerErrors:
    """Turns an exception raised inside the service's middlewares (or anything below them that
    has not answered yet) into a JSON 500, not a hang until BentoML's timeout (patch 2 above).
    Register it first."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = False

        async def tracking(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracking)
        except Exception:
            log.exception("%s %s failed", scope.get("method"), scope.get("path"))
            if started:
                raise
            message = "unexpected server error; see the server log"
            await JSONResponse(error_body("internal_error", message), status_code=500)(
                scope, _hang_up, send
            )


async def _hang_up():
    return {"type": "http.disconnect"}
