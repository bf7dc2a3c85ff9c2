"""Latency and throughput of a running service, at several concurrency levels.

    python -m bench.http --url http://127.0.0.1:3000 [--images DIR] [-c 1 8 32] [-d 20]
    python -m bench.http --serve models/model.onnx ...   # start `bentoml serve` for the run

Each of C threads keeps one HTTP/1.1 connection and sends POST /classify (or /classify_batch
with --batch N) back to back for the duration; latency is per request, throughput counts
images. "merged" is the mean number of requests the service merged into one engine call (its
histogram in /metrics); with --batch N each of them carries N images.
With --serve, after the HTTP levels (the service idle), the same model's raw backend
(inference.backend.open_backend, as the service builds it) is timed in this process at each level's
mean model batch: "vs raw" is HTTP img/s over raw img/s at that batch, taken in the same run.
Runs in the `serve` environment; the client shares the machine's cores with the server, as a
client on the same host does.
"""

from __future__ import annotations

import http.client
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
from PIL import Image

from common.cli import ConfigError, Parser, fail

REPO = Path(__file__).resolve().parent.parent
BOUNDARY = "benchboundary7MA4YWxkTrZu0gW"
LOG = Path(os.environ.get("TMPDIR", "/tmp")) / "serving-bench-server.log"


def synthetic_jpegs(n: int = 64) -> list[bytes]:
    """64×64 JPEGs of smooth noise, about the size of Tiny ImageNet's (2–3 kB)."""
    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        small = rng.integers(0, 256, (8, 8, 3), np.uint8)
        im = Image.fromarray(small).resize((64, 64), Image.Resampling.BICUBIC)
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def folder_images(folder: Path, n: int = 256) -> list[bytes]:
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".jpeg", ".jpg", ".png"))
    if not files:
        raise ConfigError(f"no .jpeg/.jpg/.png under {folder}")
    return [p.read_bytes() for p in files[:n]]


def multipart(field: str, images: list[bytes]) -> bytes:
    parts = []
    for i, data in enumerate(images):
        head = (
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{field}"; '
            f'filename="{i}.jpg"\r\nContent-Type: image/jpeg\r\n\r\n'
        )
        parts.append(head.encode() + data + b"\r\n")
    return b"".join(parts) + f"--{BOUNDARY}--\r\n".encode()


def bodies(images: list[bytes], batch: int, endpoint: str = "classify") -> tuple[str, list[bytes]]:
    """The path (/classify, /explain or their _batch forms, default parameters: top-5
    predictions, the top-3 classes' maps as JSON) and the prepared request bodies, so the loop
    only sends."""
    if batch <= 1:
        return f"/{endpoint}", [multipart("image", [d]) for d in images]
    groups = [images[i : i + batch] for i in range(0, len(images) - batch + 1, batch)]
    return f"/{endpoint}_batch", [multipart("images", g) for g in groups or [images[:batch]]]


def worker(host, port, path, payloads, stop, results, offset):
    conn = http.client.HTTPConnection(host, port, timeout=120)
    headers = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}
    i = offset
    while not stop.is_set():
        body = payloads[i % len(payloads)]
        i += 1
        t0 = time.perf_counter()
        try:
            conn.request("POST", path, body=body, headers=headers)
            resp = conn.getresponse()
            resp.read()
            ok = resp.status == 200
        except (OSError, http.client.HTTPException):
            conn.close()
            conn = http.client.HTTPConnection(host, port, timeout=120)
            ok = False
        results.append((time.perf_counter() - t0, ok))
    conn.close()


def batch_histogram(url: str) -> tuple[float, float]:
    """(sum, count) of the requests per engine call so far (this service's histogram, or
    BentoML's adaptive batching's for a service that uses it)."""
    text = urllib.request.urlopen(f"{url}/metrics", timeout=10).read().decode()
    total = {"sum": 0.0, "count": 0.0}
    pattern = r"^\w*(?:adaptive_batch_size|tin_engine_batch_requests)_(sum|count)\{[^}]*\} (\S+)$"
    for kind, value in re.findall(pattern, text, re.M):
        total[kind] += float(value)
    return total["sum"], total["count"]


def run_level(url, path, payloads, per_request, concurrency, duration, warmup):
    parts = urlsplit(url)
    stop, results = threading.Event(), []
    threads = [
        threading.Thread(
            target=worker,
            args=(parts.hostname, parts.port or 80, path, payloads, stop, results, k * 7),
            daemon=True,
        )
        for k in range(concurrency)
    ]
    for t in threads:
        t.start()
    time.sleep(warmup)
    results.clear()  # warm-up requests do not count
    hist0 = batch_histogram(url)
    t0 = time.perf_counter()
    time.sleep(duration)
    done = list(results)
    elapsed = time.perf_counter() - t0
    hist1 = batch_histogram(url)
    stop.set()
    for t in threads:
        t.join()
    lat = np.array([s for s, ok in done if ok]) * 1000
    batches = hist1[1] - hist0[1]
    return {
        "concurrency": concurrency,
        "requests": len(done),
        "errors": sum(not ok for _, ok in done),
        "images_per_s": round(len(lat) * per_request / elapsed, 1),
        "requests_per_s": round(len(lat) / elapsed, 1),
        "p50_ms": round(float(np.percentile(lat, 50)), 1) if len(lat) else None,
        "p90_ms": round(float(np.percentile(lat, 90)), 1) if len(lat) else None,
        "p99_ms": round(float(np.percentile(lat, 99)), 1) if len(lat) else None,
        "requests_per_model_call": round((hist1[0] - hist0[0]) / batches, 1) if batches else None,
        # The 1-minute load average, this run's server and client included: a much higher value
        # than in other runs means something else was competing for the cores.
        "load1": round(os.getloadavg()[0], 2),
    }


def raw_rate(model: Path, batch: int, seconds: float = 5.0) -> float:
    """img/s of the service's backend alone on `batch` images per call (after a warm-up), as
    TIN_BACKEND and TIN_PRECISION choose it for the service."""
    from inference.backend import open_backend  # onnxruntime: only where --serve runs a model
    from serving.config import settings

    s = settings()
    backend = open_backend(model, s.backend, s.precision, max_batch=batch, threads=s.threads)
    x = np.zeros((batch, 64, 64, 3), np.uint8)
    backend.predict(x)
    calls, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        backend.predict(x)
        calls += 1
    return calls * batch / (time.perf_counter() - t0)


def add_raw_ratios(rows: list[dict], model: Path, per_request: int) -> None:
    """Each row's "vs raw": its img/s over the backend's at its mean model batch, in place."""
    raw = {}
    for r in rows:
        merged = r["requests_per_model_call"]
        if merged is None:
            continue
        batch = max(1, round(merged * per_request))
        if batch not in raw:
            raw[batch] = raw_rate(model, batch)
        r["model_batch"], r["raw_images_per_s"] = batch, round(raw[batch], 1)
        r["vs_raw"] = round(r["images_per_s"] / raw[batch], 2)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: Path, env: dict | None = None) -> tuple[subprocess.Popen, str]:
    """`bentoml serve` on `model` (and the settings in `env`) on a free port, once ready."""
    port = free_port()
    env = {**os.environ, "TIN_MODEL": str(model.resolve()), **(env or {})}
    bentoml = Path(sys.executable).parent / "bentoml"
    cmd = [str(bentoml), "serve", "--host", "127.0.0.1", "--port", str(port)]
    log = open(LOG, "w")  # noqa: SIM115 (the server outlives this function)
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    print(f"# bentoml serve {model} on port {port}, log in {LOG}")
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if urllib.request.urlopen(f"{url}/readyz", timeout=2).status == 200:
                return proc, url
        except OSError:
            time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGTERM)
    raise SystemExit("bentoml serve did not become ready")


def print_row(r: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(r), flush=True)
        return
    print(
        f"{r['route']:<15} {r['concurrency']:>4} {r['requests']:>6} {r['errors']:>4} "
        f"{r['images_per_s']:>7} {r['p50_ms']!s:>7} {r['p90_ms']!s:>7} "
        f"{r['p99_ms']!s:>7} {r['requests_per_model_call']!s:>6} {r['load1']:>5}",
        flush=True,
    )


def print_raw(rows: list[dict], as_json: bool) -> None:
    if as_json:
        for r in rows:
            keys = ("route", "concurrency", "model_batch", "raw_images_per_s", "vs_raw")
            print(json.dumps({k: r.get(k) for k in keys}))
        return
    print(f"{'route':<15} {'conc':>4} {'model batch':>11} {'raw img/s':>9} {'vs raw':>6}")
    for r in rows:
        if "vs_raw" in r:
            print(
                f"{r['route']:<15} {r['concurrency']:>4} {r['model_batch']:>11} "
                f"{r['raw_images_per_s']:>9} {r['vs_raw']:>6}"
            )


def main(argv: list[str] | None = None) -> int:
    ap = Parser(prog="python -m bench.http", description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", default="http://127.0.0.1:3000")
    ap.add_argument("--serve", type=Path, help="start `bentoml serve` on this model for the run")
    ap.add_argument("--images", type=Path, help="folder of JPEG/PNG files (default: synthetic)")
    ap.add_argument("-c", "--concurrency", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("-d", "--duration", type=float, default=20.0, help="seconds per level")
    ap.add_argument("--warmup", type=float, default=3.0, help="seconds per level, not counted")
    ap.add_argument(
        "--batch", type=int, default=1, help="images per request (>1: the _batch route)"
    )
    ap.add_argument("--endpoint", nargs="+", choices=("classify", "explain"), default=["classify"],
                    help="several: each level runs each in turn, side by side")  # fmt: skip
    ap.add_argument("--json", action="store_true", help="print JSON lines instead of a table")
    args = ap.parse_args(argv)
    if min(args.concurrency) < 1 or args.batch < 1 or args.duration <= 0:
        ap.error("concurrency and batch must be >= 1 and the duration positive")
    try:
        images = folder_images(args.images) if args.images else synthetic_jpegs()
    except ConfigError as e:
        return fail(e)
    requests = {e: bodies(images, args.batch, e) for e in args.endpoint}
    proc = None
    if args.serve:
        proc, args.url = start_server(args.serve)
    try:
        info = json.loads(urllib.request.urlopen(f"{args.url}/model", timeout=30).read())
        backend = info["backend"]
        print(
            f"# {args.url} {'+'.join(path for path, _ in requests.values())}: model "
            f"{info['name']} ({backend['engine']} {backend['precision']}, {backend['file']}), "
            f"{args.batch} image(s)/request, {len(images)} distinct images, "
            f"{os.cpu_count()} cores, {args.duration:g} s per level"
        )
        if not args.json:
            print(
                f"{'route':<15} {'conc':>4} {'reqs':>6} {'errs':>4} {'img/s':>7} {'p50 ms':>7} "
                f"{'p90 ms':>7} {'p99 ms':>7} {'merged':>6} {'load':>5}"
            )
        rows = []
        for c in args.concurrency:
            for path, payloads in requests.values():  # the routes take turns at each level
                r = run_level(args.url, path, payloads, args.batch, c, args.duration, args.warmup)
                rows.append({"route": path, **r})
                print_row(rows[-1], args.json)
        if args.serve:
            add_raw_ratios(rows, args.serve, args.batch)
            print_raw(rows, args.json)
    finally:
        if proc is not None:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
