"""python -m bench.limits [--model models/model.onnx] [--overlays N]

The service's worst cases on a real `bentoml serve`: 8 concurrent /explain?format=png of one
40-megapixel JPEG (8000×5000, about 7 MB) with /readyz and /classify asked meanwhile, and the peak
resident memory of the server's processes; then 20,000 requests to made-up paths and the size of
/metrics after them; then 20,000 idle connections (as many as the open-file limit allows) and a
request after them. --overlays is TIN_MAX_OVERLAYS (default: the service's, 2). Prints each
figure. The measurements behind the README's limits (drawn at the upload's own size, one such
overlay took 4.6 GB; 8 at once had the worker killed).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import signal
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import psutil  # a dependency of BentoML
from PIL import Image

from bench.http import start_server, synthetic_jpegs
from common.cli import Parser


def forty_megapixels() -> bytes:
    """An 8000×5000 JPEG of gradients and noise: a large photo's size and cost to decode."""
    x = np.linspace(0, 255, 8000, dtype=np.float32)
    y = np.linspace(0, 255, 5000, dtype=np.float32)[:, None]
    noise = np.random.default_rng(0).normal(0, 8, (5000, 8000, 3)).astype(np.float32)
    rgb = (np.stack([x + 0 * y, y + 0 * x, (x + y) / 2], -1) + noise).clip(0, 255)
    buf = io.BytesIO()
    Image.fromarray(rgb.astype(np.uint8)).save(buf, "JPEG", quality=85)
    return buf.getvalue()


class PeakMemory:
    """The largest resident memory of any of `pid`'s processes, sampled every 50 ms."""

    def __init__(self, pid: int):
        root = psutil.Process(pid)
        self.procs, self.peak = [root, *root.children(recursive=True)], 0
        self.done = threading.Event()
        threading.Thread(target=self._sample, daemon=True).start()

    def _sample(self):
        while not self.done.is_set():
            rss = [p.memory_info().rss for p in self.procs if p.is_running()]
            self.peak = max([self.peak, *rss])
            time.sleep(0.05)


async def overlays(http: httpx.AsyncClient, photo: bytes, small: bytes) -> None:
    """8 overlays of the photo at once, and the probes a load balancer would send meanwhile."""
    start = time.monotonic()

    async def draw():
        r = await http.post("/explain?top_k=1&format=png", content=photo,
                            headers={"content-type": "image/jpeg"})  # fmt: skip
        return r.status_code, round(time.monotonic() - start, 2)

    async def meanwhile():
        seen = set()
        for _ in range(10):
            ready = await http.get("/readyz")
            answer = await http.post("/classify", content=small,
                                     headers={"content-type": "image/jpeg"})  # fmt: skip
            seen.add((ready.status_code, answer.status_code))
            await asyncio.sleep(0.3)
        return seen

    *drawn, seen = await asyncio.gather(*[draw() for _ in range(8)], meanwhile())
    print(f"8 × 40 MP overlays at once: (status, seconds) {sorted(drawn)}")
    print(f"/readyz and /classify meanwhile: {sorted(seen)}")


async def made_up_paths(http: httpx.AsyncClient, n: int = 20_000) -> None:
    start, at_once = time.monotonic(), asyncio.Semaphore(64)

    async def one(i):
        async with at_once:
            await http.get(f"/made-up-{i}")

    await asyncio.gather(*[one(i) for i in range(n)])
    print(f"{n:,} made-up paths in {time.monotonic() - start:.1f} s")
    start = time.monotonic()
    metrics = await http.get("/metrics")
    print(f"/metrics: {len(metrics.content):,} bytes in {time.monotonic() - start:.3f} s")


def idle_connections(url: str, small: bytes, wanted: int = 20_000) -> None:
    """Open `wanted` connections that send nothing (as many as this process's open-file limit
    allows), then ask /readyz and /classify on a new one: answered, within the header timeout,
    with the server's connection cap closing the idle ones it holds longest."""
    import resource
    import socket
    from urllib.parse import urlsplit

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    n = min(wanted, resource.getrlimit(resource.RLIMIT_NOFILE)[0] - 200)
    where = urlsplit(url)
    start, idle = time.monotonic(), []
    for _ in range(n):
        try:
            idle.append(socket.create_connection((where.hostname, where.port), timeout=10))
        except OSError as e:  # the server's backlog full, or this side out of ports
            print(f"connection {len(idle) + 1} failed: {e}")
            break
    print(f"{len(idle):,} idle connections opened in {time.monotonic() - start:.1f} s")
    start = time.monotonic()
    with httpx.Client(base_url=url, timeout=30) as http:
        ready = http.get("/readyz").status_code
        answer = http.post("/classify", content=small, headers={"content-type": "image/jpeg"})
    print(f"then /readyz {ready} and /classify {answer.status_code} in "
          f"{time.monotonic() - start:.2f} s")  # fmt: skip
    closed = 0
    for conn in idle:
        conn.settimeout(0.001)
        with contextlib.suppress(TimeoutError, OSError):
            closed += conn.recv(1) == b""
        conn.close()
    print(f"idle connections the server had closed by then: {closed:,}")


async def probe(url: str, pid: int) -> None:
    photo, small = forty_megapixels(), synthetic_jpegs(1)[0]
    print(f"the photo: {len(photo):,} bytes")
    memory = PeakMemory(pid)
    async with httpx.AsyncClient(base_url=url, timeout=120) as http:
        await overlays(http, photo, small)
        print(f"peak resident memory of a server process: {memory.peak / 2**20:.0f} MiB")
        memory.done.set()
        await made_up_paths(http)
        print(f"/readyz after: {(await http.get('/readyz')).status_code}")
    await asyncio.to_thread(idle_connections, url, small)


def main(argv: list[str] | None = None) -> int:
    p = Parser(prog="python -m bench.limits", description=__doc__.split("\n\n")[1])
    p.add_argument("--model", default="models/model.onnx", type=Path)
    p.add_argument("--overlays", type=int, help="TIN_MAX_OVERLAYS for the run")
    args = p.parse_args(argv)
    env = {"TIN_MAX_UPLOAD_MB": "20"}  # the photo is over the default 10
    if args.overlays is not None:
        env["TIN_MAX_OVERLAYS"] = str(args.overlays)
    if not args.model.is_file():
        p.error(f"no model at {args.model}")
    server, url = start_server(args.model, env)
    try:
        asyncio.run(probe(url, server.pid))
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(60)
    return 0


if __name__ == "__main__":
    sys.exit(main())
