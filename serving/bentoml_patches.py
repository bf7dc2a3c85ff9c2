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
   registered as the service's first middleware, turns it into a JSON 500 at once. Its 504
   is in this API's error shape too ({"error": {"code": "timeout", ...}}, not {"error": "..."}).
3. Bounded metric labels. BentoML's HTTPTrafficMetricsMiddleware
   (bentoml/_internal/server/http/instruments.py) labels every series with the raw request
   path: 20,000 requests to unique unknown paths took /metrics from 209 KB to 85 MB and its
   render from 0.07 s to 30 s. `bound_metric_paths(paths)` makes it label any other path
   "/(other)"; the request itself still goes on with its own path.
4. A header timeout. uvicorn 0.55 (which BentoML runs) arms its keep-alive timer only after a
   response: a connection that sends nothing, or half a request line, stays open for good, and
   about 20,000 of them exhausted the worker's file descriptors (`/readyz` stopped answering).
   `install()` arms a timer when a connection opens and when a request begins, cancelled when
   its headers are complete: past TIN_HEADER_TIMEOUT_S (10) seconds the connection is closed.
   For uvicorn's httptools protocol, the one the `serve` extra installs.
5. A metrics folder per server. BentoML keeps the prometheus multiprocess files in
   $BENTOML_HOME/prometheus_multiproc_dir and empties it when a server starts: a second
   `bentoml serve` on the machine wiped the first one's, whose /metrics then showed the other's
   numbers. `install()`, in the process that starts the server, points it at
   $BENTOML_HOME/prometheus_multiproc_dirs/PID instead, and removes those of servers gone.
6. The front page. BentoML answers `/` with its Swagger page ("None" as the version, "Contact
   BentoML Team", a Google Tag Manager script), which a person opening the service's address
   takes for the service. FrontDoor, a middleware, sends `GET /` to the demo page, /ui; the API
   document stays at /docs.json.
7. A drain before the stop. On SIGTERM uvicorn closes its listening socket at once: a client
   that had connected just before (still in the kernel's accept queue, on a busy machine) got a
   connection reset, never an answer (6 such requests in one run of the SIGTERM test under the
   whole suite's load). `install()` makes uvicorn go on accepting and answering for TIN_DRAIN_S
   (0.5) seconds after the signal, then stop as before: finish what is in flight, close.
   Meanwhile FrontDoor answers /readyz with 503, so a load balancer stops sending before the
   socket closes.
8. A connection cap. uvicorn holds every connection it accepts (its `limit_concurrency`
   answers 503 but still holds the connection): idle connections opened faster than the header
   timeout closes them use up the process's files, and then nothing is accepted. `install()`
   raises the soft open-file limit to the hard one and, past TIN_MAX_CONNECTIONS (default: that
   limit less 512), closes the connection that has waited longest for its request headers.
"""

from __future__ import annotations

import asyncio
import contextvars
import copy
import logging
import os
import threading

from bentoml._internal.server.http import instruments, traffic
from starlette.responses import JSONResponse, RedirectResponse

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
                message = f"not able to process the request in {self.timeout} seconds"
                body = error_body("timeout", message)
                await JSONResponse(body, status_code=504)(scope, receive, send)
        else:
            await fut  # wait for the future to finish
        finally:
            timer.cancel()


OTHER_PATH = "/(other)"
# Both of BentoML's HTTP metrics middlewares label by the raw path; the second one (its
# "runner" series) runs on a service's own app too.
METRICS_MIDDLEWARES = (
    instruments.HTTPTrafficMetricsMiddleware,
    instruments.RunnerTrafficMetricsMiddleware,
)
_metrics_calls = {cls: cls.__call__ for cls in METRICS_MIDDLEWARES}


def bound_metric_paths(paths) -> None:
    """Label BentoML's HTTP metrics by `paths` (the service's routes) and "/(other)" for the
    rest, so a client cannot grow /metrics with made-up paths (patch 3 above)."""
    known = frozenset(paths)
    for cls, original in _metrics_calls.items():
        cls.__call__ = _labelled(original, known)


def _labelled(original, known):
    async def labelled(self, scope, receive, send):
        path = scope.get("path", "")
        if not scope["type"].startswith("http") or path in known or path == "/metrics":
            return await original(self, scope, receive, send)
        if not self._is_setup:
            self._setup()
        inner = self.app

        async def with_its_path(s, r, se):
            await inner({**s, "path": path}, r, se)

        proxy = copy.copy(self)  # the same metrics, for this request a different app below
        proxy.app = with_its_path
        await original(proxy, {**scope, "path": OTHER_PATH}, receive, send)

    return labelled


def install(header_timeout_s: float, drain_s: float, max_connections: int | None = None) -> None:
    """Make BentoML build its apps with TimeoutMiddleware above (base_app.py imports the name
    from traffic.py when it builds an app, after serving/service.py is imported), and patches
    4, 5, 7 and 8 (TIN_HEADER_TIMEOUT_S, TIN_DRAIN_S, TIN_MAX_CONNECTIONS: serving/config.py)."""
    traffic.TimeoutMiddleware = TimeoutMiddleware
    header_timeout(header_timeout_s, connection_cap(max_connections))
    own_metrics_folder()
    drain_before_stop(drain_s)


def drain_before_stop(seconds: float) -> None:
    """Patch 7 above (idempotent)."""
    import uvicorn

    server = uvicorn.Server
    original = getattr(server, "_tin_shutdown", server.shutdown)
    server._tin_shutdown = original

    async def shutdown(self, sockets=None):
        STOPPING.set()  # /readyz: 503 from now on
        await asyncio.sleep(seconds)  # still listening: the accept queue empties, and is answered
        await original(self, sockets)

    server.shutdown = shutdown


def own_metrics_folder() -> None:
    """Patch 5 above. Only where no folder was chosen yet: a worker inherits its server's in
    PROMETHEUS_MULTIPROC_DIR (and a test may set its own)."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return
    import shutil
    from pathlib import Path

    import psutil  # a dependency of BentoML
    from bentoml._internal.configuration.containers import BentoMLContainer

    base = Path(BentoMLContainer.bentoml_home.get()) / "prometheus_multiproc_dirs"
    for old in base.glob("*"):
        if not (old.name.isdigit() and psutil.pid_exists(int(old.name))):
            shutil.rmtree(old, ignore_errors=True)
    BentoMLContainer.prometheus_multiproc_dir.set(str(base / str(os.getpid())))


WAITING: dict = {}  # patch 4 and 8: the connections whose request headers are awaited, oldest first
RESERVE_FILES = 512  # patch 8: files left to the process beyond its connections (model, logs)


def connection_cap(limit: int | None) -> int:
    """Patch 8: the soft open-file limit raised to the hard one (what any unprivileged process
    may do), and the most connections to hold: `limit`, else that limit less RESERVE_FILES."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):  # a sandbox may refuse: keep the soft limit
            pass
    return limit or max(64, soft - RESERVE_FILES)


def header_timeout(seconds: float, cap: int = 1_000_000) -> None:
    """Patches 4 and 8 above, on uvicorn's HttpToolsProtocol (idempotent)."""
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as P
    except ImportError:  # no httptools: uvicorn runs h11, which this does not cover
        return
    P._tin_cap = cap
    if getattr(P, "_tin_header_timeout", None) is not None:
        P._tin_header_timeout = seconds
        return
    P._tin_header_timeout = seconds
    P._tin_evicted, P._tin_warned = 0, 0.0
    made, lost = P.connection_made, P.connection_lost
    begin, complete = P.on_message_begin, P.on_headers_complete

    def arm(self):
        disarm(self)
        self._tin_header_timer = self.loop.call_later(self._tin_header_timeout, self._tin_expire)
        WAITING[self] = None

    def disarm(self):
        WAITING.pop(self, None)
        timer = getattr(self, "_tin_header_timer", None)
        if timer is not None:
            timer.cancel()
            self._tin_header_timer = None

    def expire(self):
        disarm(self)
        if not self.transport.is_closing():
            self.transport.close()

    def evict(self):
        """Over the cap: close the connection that has waited longest for its headers (or this
        new one, when every other is in a request), so that a flood of idle connections
        cannot use up the files and stop the service answering."""
        expire(next(iter(WAITING), self))
        P._tin_evicted += 1
        if self.loop.time() - P._tin_warned > 10:
            P._tin_warned = self.loop.time()
            log.warning("%d connections open, the limit (TIN_MAX_CONNECTIONS) is %d: closed the "
                        "ones idle longest (%d so far)", len(self.server_state.connections),
                        P._tin_cap, P._tin_evicted)  # fmt: skip

    def connection_made(self, transport):
        made(self, transport)
        if len(self.server_state.connections) > P._tin_cap:
            evict(self)
        if not transport.is_closing():
            arm(self)

    def connection_lost(self, exc):
        disarm(self)
        lost(self, exc)

    def on_message_begin(self):
        begin(self)
        arm(self)

    def on_headers_complete(self):
        disarm(self)
        complete(self)

    P._tin_expire = expire
    P.connection_made, P.connection_lost = connection_made, connection_lost
    P.on_message_begin, P.on_headers_complete = on_message_begin, on_headers_complete


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


STOPPING = threading.Event()  # set when the server has been told to stop (patch 7)


class FrontDoor:
    """`GET /` (or HEAD) → 307 to /ui (patch 6 above), and /readyz a 503 once the server is
    stopping (patch 7); everything else passes."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if scope["path"] == "/" and scope["method"] in ("GET", "HEAD"):
            root = scope.get("root_path", "")
            return await RedirectResponse(f"{root}/ui", status_code=307)(scope, receive, send)
        if scope["path"] == "/readyz" and STOPPING.is_set():
            body = error_body("stopping", "the service is stopping; send requests elsewhere")
            return await JSONResponse(body, status_code=503)(scope, receive, send)
        return await self.app(scope, receive, send)


async def _hang_up():
    return {"type": "http.disconnect"}
