"""serving/bentoml_patches.py: each patch does its job, and each is still needed (a test of
BentoML's own behaviour that fails once upstream changes it)."""

from __future__ import annotations

import asyncio
import contextvars

from serving import bentoml_patches as patches

REQUEST = contextvars.ContextVar("request")


class Marker:
    """Stands for a request's state (its span, its context) held in a contextvar."""


def scope():
    return {"type": "http", "method": "POST", "path": "/classify", "headers": []}


async def call(middleware) -> list[dict]:
    sent = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    await middleware(scope(), receive, send)
    return sent


async def answer(scope, receive, send):
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


def test_a_finished_request_leaves_no_timer_holding_its_state():
    async def main():
        REQUEST.set(Marker())  # what BentoML's outer middlewares set before the timeout's
        sent = await call(patches.TimeoutMiddleware(answer, timeout=120))
        return sent, list(asyncio.get_running_loop()._scheduled)

    sent, timers = asyncio.run(main())
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]
    assert all(h.cancelled() for h in timers)  # BentoML's own leaves one, due in 120 s
    # nor does a cancelled handle, until the loop drops it, keep the request's context
    assert not any(REQUEST in h._context for h in timers)


def test_a_slow_request_still_gets_504():
    async def slow(scope, receive, send):
        await asyncio.sleep(10)

    sent = asyncio.run(call(patches.TimeoutMiddleware(slow, timeout=0.05)))
    assert sent[0]["status"] == 504


def test_bentomls_own_timer_still_outlives_the_request():
    """The reason for TimeoutMiddleware; when BentoML fixes it, this fails: drop the patch."""

    async def main():
        REQUEST.set(Marker())
        await call(patches._Original(answer, timeout=120))
        return list(asyncio.get_running_loop()._scheduled)

    timers = asyncio.run(main())
    assert any(not h.cancelled() and REQUEST in h._context for h in timers)


def test_install_replaces_bentomls_class():
    from bentoml._internal.server.http import traffic as bentoml_traffic

    patches.install(header_timeout_s=10, drain_s=0.5)
    assert bentoml_traffic.TimeoutMiddleware is patches.TimeoutMiddleware


async def fails(scope, receive, send):
    raise RuntimeError("a middleware's bug")


def test_an_exception_before_any_answer_is_a_json_500_at_once():
    sent = asyncio.run(call(patches.TimeoutMiddleware(patches.ServerErrors(fails), timeout=60)))
    assert sent[0]["status"] == 500
    assert b'"internal_error"' in sent[1]["body"]


def test_bentomls_timeout_still_turns_an_exception_into_a_wait_and_no_answer():
    """The reason for ServerErrors; when BentoML answers or raises the app's failure, this
    fails."""

    async def main():
        start = asyncio.get_running_loop().time()
        sent = await call(patches._Original(fails, timeout=0.2))
        return sent, asyncio.get_running_loop().time() - start

    sent, waited = asyncio.run(main())
    assert sent == []
    assert waited >= 0.2


def test_bentomls_client_still_refuses_a_file_object_that_bytes_upload_fixes():
    """The reason for clients/bentoml_upload.py; when BentoML's client takes any binary file
    object, this fails: drop BytesUpload."""
    import io

    import pytest
    from _bentoml_impl.client.base import ClientFileManager

    from clients.bentoml_upload import BytesUpload

    with pytest.raises(AssertionError):
        ClientFileManager().get_file(io.BytesIO(b"jpeg"))
    name, file, kind = ClientFileManager().get_file(BytesUpload(b"jpeg", "cat.jpg"))
    assert (name, file.read(), kind) == ("cat.jpg", b"jpeg", "image/jpeg")


def test_bentomls_metrics_still_label_by_the_raw_path():
    """Patch 3: upstream labels HTTP metrics by scope["path"], unbounded; drop
    bound_metric_paths once it labels by route."""
    import inspect

    from serving import bentoml_patches

    for original in bentoml_patches._metrics_calls.values():
        source = inspect.getsource(original)
        assert 'endpoint = scope["path"]' in source
        assert "endpoint=endpoint" in source


def test_a_connection_that_never_finishes_its_headers_is_closed(live_server):
    """Patch 4 on a real `bentoml serve`: silence, and half a request line, are hung up on after
    TIN_HEADER_TIMEOUT_S (10 s), while a normal request is answered meanwhile."""
    import socket
    import time
    from urllib.parse import urlsplit

    import httpx

    where = urlsplit(live_server.url)
    silent = socket.create_connection((where.hostname, where.port), timeout=30)
    half = socket.create_connection((where.hostname, where.port), timeout=30)
    half.sendall(b"GET /readyz HT")
    # And a body that stops coming, on each surface: a 408 after TIN_BODY_TIMEOUT_S (10 s).
    slow = []
    for path in ("/classify", "/api/classify"):
        conn = socket.create_connection((where.hostname, where.port), timeout=30)
        head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n"
        conn.sendall((head + "Content-Type: multipart/form-data; boundary=b\r\n\r\n--b").encode())
        slow.append(conn)
    start = time.monotonic()
    assert httpx.get(f"{live_server.url}/readyz", timeout=10).status_code == 200
    for conn in (silent, half):
        assert conn.recv(1024) == b""  # closed by the server, not by our 30 s timeout
        conn.close()
    for conn in slow:
        answer = ""
        while '"body_timeout"' not in answer and (chunk := conn.recv(4096)):
            answer += chunk.decode()
        assert answer.startswith("HTTP/1.1 408"), answer
        assert '"body_timeout"' in answer
        conn.close()
    assert time.monotonic() - start < 20


def test_made_up_paths_share_one_metrics_label(live_server):
    """Patch 3 on a real `bentoml serve` (its /metrics reads the multiprocess folder)."""
    import httpx

    from tests.abuse import GOOD_JPEG

    with httpx.Client(base_url=live_server.url, timeout=30) as http:
        for i in range(300):
            assert http.get(f"/made-up-{i}").status_code == 404
        r = http.post("/classify", files={"image": ("x.jpg", GOOD_JPEG)})
        assert r.status_code == 200
        text = http.get("/metrics").text
    assert "/made-up-" not in text
    assert 'endpoint="/(other)"' in text
    assert 'endpoint="/classify"' in text
    assert len(text) < 200_000  # 300 paths labelled one by one would add about 1 MB


def test_bentoml_still_empties_the_metrics_folder_a_server_starts_with(tmp_path):
    """Patch 5: upstream wipes a non-empty multiprocess folder at start; drop own_metrics_folder
    once each server gets its own."""
    from bentoml.serving import ensure_prometheus_dir

    (tmp_path / "counter_1.db").write_bytes(b"another server's numbers")
    assert ensure_prometheus_dir(str(tmp_path)) == str(tmp_path)
    assert list(tmp_path.iterdir()) == []


def workers_folders(pid: int) -> set:
    """PROMETHEUS_MULTIPROC_DIR of each process under `pid` still running (BentoML starts
    short-lived helpers too, which may be gone by the time they are read)."""
    import psutil

    found = set()
    for p in psutil.Process(pid).children(recursive=True):
        try:
            found.add(p.environ().get("PROMETHEUS_MULTIPROC_DIR"))
        except (psutil.NoSuchProcess, FileNotFoundError):
            continue
    return found


def test_two_servers_on_one_machine_keep_their_own_metrics(tmp_path, monkeypatch):
    import httpx

    from tests.serving_fixtures import Server, write_model

    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    model = write_model(tmp_path / "tiny.onnx", classes=4)
    home = str(tmp_path / "home")
    first, second = Server(model, tmp_path), Server(model, tmp_path)
    for s in (first, second):
        s.env["BENTOML_HOME"] = home
        s.env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    with first:
        for _ in range(5):
            httpx.get(f"{first.url}/labels")
        with second:
            folders = {s: workers_folders(s.proc.pid) for s in (first, second)}
            text = httpx.get(f"{first.url}/metrics").text
    assert folders[first].isdisjoint(folders[second])
    counted = (
        line
        for line in text.splitlines()
        if line.startswith("bentoml_service_request_total") and 'endpoint="/labels"' in line
    )
    assert next(counted).endswith(" 5.0")  # the first server's own count, not wiped


def test_readyz_is_a_503_once_the_server_is_stopping():
    from starlette.responses import JSONResponse
    from starlette.testclient import TestClient

    from serving import bentoml_patches

    async def app(scope, receive, send):
        await JSONResponse({"ok": True})(scope, receive, send)

    client = TestClient(bentoml_patches.FrontDoor(app))
    assert client.get("/readyz").status_code == 200
    bentoml_patches.STOPPING.set()
    try:
        r = client.get("/readyz")
        assert (r.status_code, r.json()["error"]["code"]) == (503, "stopping")
        assert client.get("/labels").status_code == 200  # the rest is still answered
    finally:
        bentoml_patches.STOPPING.clear()


def test_past_the_connection_cap_the_connections_idle_longest_are_closed():
    """Patch 8 on uvicorn itself (httptools, as the serve extra runs it), with a cap of 8: after
    20 idle connections a request is still answered, and the oldest idle ones were closed."""
    import socket
    import threading
    import time

    import httpx
    import uvicorn

    async def app(scope, receive, send):
        if scope["type"] == "http":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"ok"})

    listener = socket.create_server(("127.0.0.1", 0), backlog=128)
    address = listener.getsockname()
    config = uvicorn.Config(app, http="httptools", lifespan="off", log_level="error")
    server = uvicorn.Server(config)
    patches.header_timeout(30, cap=8)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.02)
        idle = [socket.create_connection(address, timeout=10) for _ in range(20)]
        r = httpx.get(f"http://{address[0]}:{address[1]}/", timeout=10)  # accepted after them
        assert (r.status_code, r.text) == (200, "ok")
        closed = []
        for conn in idle:
            conn.settimeout(0.2)
            try:
                closed.append(conn.recv(1) == b"")
            except TimeoutError:  # still open: nothing to read
                closed.append(False)
            conn.close()
        # 8 held: 7 idle ones and the request's; the 13 that waited longest were closed.
        assert closed == [True] * 13 + [False] * 7
    finally:
        patches.header_timeout(10, cap=1_000_000)
        server.should_exit = True
        thread.join(10)
        patches.STOPPING.clear()  # its stop ran patch 7 here: /readyz in this process says 503


def test_a_request_past_its_deadline_never_reaches_the_engine():
    """The 504 cancels the request, and the micro-batcher drops a cancelled request from its
    queue: the engine, busy when the deadline passed, never runs it afterwards."""
    import threading

    import numpy as np

    from inference.batcher import Batcher, engine_thread

    calls, gate, started = [], threading.Event(), threading.Event()

    def run(images):
        calls.append(len(images))
        started.set()
        gate.wait(10)
        return (images[:, 0, 0, 0],)

    batcher = Batcher(run, 8, 60.0, engine_thread())

    async def app(scope, receive, send):
        await batcher(np.zeros((3, 64, 64, 3), np.uint8))
        await send({"type": "http.response.start", "status": 200, "headers": []})

    async def main():
        busy = asyncio.ensure_future(batcher(np.zeros((1, 64, 64, 3), np.uint8)))
        await asyncio.get_running_loop().run_in_executor(None, started.wait, 10)
        sent = await call(patches.TimeoutMiddleware(app, timeout=0.2))
        gate.set()
        await busy
        await asyncio.sleep(0.1)  # were it still queued, the engine would take it now
        return sent

    sent = asyncio.run(main())
    assert sent[0]["status"] == 504
    assert b'"timeout"' in sent[1]["body"]
    assert calls == [1]
