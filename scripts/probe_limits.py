"""The service's worst cases, measured on a real `bentoml serve` of models/model.onnx (port 3777):
8 concurrent /explain?format=png of one 40-megapixel JPEG (8000×5000, 7 MB) with /readyz and a
/classify asked meanwhile, the peak RSS of the server's processes, then 20,000 requests to unique
made-up paths and the size of /metrics after them.

    .venv/bin/python scripts/probe_limits.py [TIN_MAX_OVERLAYS]   # default 2; needs psutil

The val image for /classify: ~/tin/tiny-imagenet-200/val/images/val_0.JPEG. Prints its figures.
"""

import asyncio
import io
import os
import subprocess
import sys
import threading
import time

import httpx
import numpy as np
import psutil
from PIL import Image

URL = "http://127.0.0.1:3777"
VAL_JPEG = open(os.path.expanduser("~/tin/tiny-imagenet-200/val/images/val_0.JPEG"), "rb").read()  # noqa: SIM115
x = np.linspace(0, 255, 8000, dtype=np.float32)
y = np.linspace(0, 255, 5000, dtype=np.float32)[:, None]
rng = np.random.default_rng(0)
rgb = (
    (np.stack([x + 0 * y, y + 0 * x, (x + y) / 2], -1) + rng.normal(0, 8, (5000, 8000, 3)))
    .clip(0, 255)
    .astype(np.uint8)
)
buf = io.BytesIO()
Image.fromarray(rgb).save(buf, "JPEG", quality=85)
data = buf.getvalue()
del rgb
print("40 MP JPEG bytes", len(data))
server = subprocess.Popen(
    ["/work/main/.venv/bin/bentoml", "serve", "--host", "127.0.0.1", "--port", "3777"],
    cwd="/work/main",
    env={
        **os.environ,
        "TIN_MAX_UPLOAD_MB": "20",
        "TIN_MAX_OVERLAYS": sys.argv[1] if len(sys.argv) > 1 else "2",
    },
    stdout=subprocess.DEVNULL,
    stderr=subprocess.DEVNULL,
)
for _ in range(120):
    try:
        if httpx.get(URL + "/readyz").status_code == 200:
            break
    except Exception:
        pass
    time.sleep(1)
procs = [p for p in psutil.Process(server.pid).children(recursive=True)] + [
    psutil.Process(server.pid)
]
peak = {"rss": 0}
stop = False


def sample():
    while not stop:
        total = max(p.memory_info().rss for p in procs if p.is_running())
        peak["rss"] = max(peak["rss"], total)
        time.sleep(0.05)


threading.Thread(target=sample, daemon=True).start()


async def main():
    async with httpx.AsyncClient(base_url=URL, timeout=120) as c:
        t = time.monotonic()

        async def one():
            r = await c.post(
                "/explain?top_k=1&format=png", content=data, headers={"content-type": "image/jpeg"}
            )
            return r.status_code, time.monotonic() - t

        async def ready():
            out = []
            for _ in range(10):
                r = await c.get("/readyz")
                r2 = await c.post(
                    "/classify",
                    content=VAL_JPEG,
                    headers={"content-type": "image/jpeg"},
                )
                out.append((r.status_code, r2.status_code))
                await asyncio.sleep(0.3)
            return out

        res = await asyncio.gather(*[one() for _ in range(8)], ready())
        print("8 x 40 MP png:", sorted(res[:8]), "readyz/classify meanwhile:", set(res[8]))
        print("peak RSS of the server's processes (MiB):", peak["rss"] // 2**20)
        t = time.monotonic()
        sem = asyncio.Semaphore(64)

        async def junk(i):
            async with sem:
                await c.get(f"/x{i}")

        await asyncio.gather(*[junk(i) for i in range(20000)])
        print("20,000 unique paths in", round(time.monotonic() - t, 1), "s")
        t = time.monotonic()
        m = await c.get("/metrics")
        print("/metrics bytes", len(m.content), "render s", round(time.monotonic() - t, 3))
        print("readyz", (await c.get("/readyz")).status_code)


asyncio.run(main())
stop = True
server.terminate()
server.wait(30)
