"""This service beside other servers on the same model, decode and engine, under the same load.

    python -m bench.peers [--servers this,litserve] [--duration 10] [--write BENCHMARKS.md]

Each server in turn: started, warmed up (2 s at concurrency 8), loaded by `hey` (Debian's
package) with the same multipart POST /classify (field `image`), then stopped. Every server
decodes with inference.preprocess.decode and predicts with inference.backend.open_backend (`auto`:
OpenVINO INT8 on a CPU), so the rows compare serving alone. Rows: a 64×64 val JPEG at
concurrency 1 on a fresh server, at 32, and at 1 again right after that burst; a 500×375 photo at
32 and a 4000×3000 one (~580 KB) at 8 (val images upscaled, bench/decode.py's `photo`).

- this: `bentoml serve` from the repo root (the in-process micro-batcher).
- litserve: bench/peer_servers/litserve_server.py in its own venv (`LITSERVE_PYTHON`, default
  ~/.cache/tin-peers/litserve/bin/python: `python3 -m venv` it and `pip install litserve openvino
  onnxruntime numpy pillow python-multipart`), batches of up to 32 with a 2 ms batching timeout.

Not in the test suite: minutes long and as noisy as the machine. Triton (PyTriton) is not here:
its server stub loads libpython3.12, and this machine has Python 3.11 only.
"""

from __future__ import annotations

import datetime
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from common.cli import ConfigError, Parser, fail

REPO = Path(__file__).resolve().parent.parent
BOUNDARY = "peersboundary9f2c"
LITSERVE_PYTHON = Path.home() / ".cache" / "tin-peers" / "litserve" / "bin" / "python"
# (row name, upload, concurrency)
ROWS = (
    ("c1 fresh, 64×64", "small", 1),
    ("c32, 64×64", "small", 32),
    ("c1 after the burst", "small", 1),
    ("c32, 500×375 photo", "medium", 32),
    ("c8, 4000×3000 photo", "large", 8),
)
SIZES = {"medium": (500, 375), "large": (4000, 3000)}


def multipart(jpeg: bytes) -> bytes:
    head = (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="image"; filename="a.jpg"\r\n'
        "Content-Type: image/jpeg\r\n\r\n"
    )
    return head.encode() + jpeg + f"\r\n--{BOUNDARY}--\r\n".encode()


def bodies(val_image: Path, folder: Path) -> dict[str, Path]:
    """The three request bodies as files, for hey's -D."""
    from bench.decode import photo

    uploads = {"small": val_image.read_bytes()}
    uploads |= {name: photo(val_image, size) for name, size in SIZES.items()}
    out = {}
    for name, jpeg in uploads.items():
        out[name] = folder / f"{name}.body"
        out[name].write_bytes(multipart(jpeg))
    return out


def parse_hey(text: str) -> dict:
    """req/s, p50 and p99 in ms, and the non-200 count from hey's summary."""
    rps = re.search(r"Requests/sec:\s+([\d.]+)", text)
    pct = {int(p): float(s) * 1000 for p, s in re.findall(r"(\d+)% in ([\d.]+) secs", text)}
    codes = {int(c): int(n) for c, n in re.findall(r"\[(\d+)\]\s+(\d+) responses", text)}
    failed = re.findall(r"^\s*\[(\d+)\]\s+(?:Get|Post) ", text, re.M)  # "Error distribution"
    errors = sum(n for c, n in codes.items() if c != 200) + sum(map(int, failed))
    if rps is None:
        raise ValueError(f"no Requests/sec in hey's output: {text[-300:]!r}")
    return {"rps": float(rps.group(1)), "p50": pct.get(50), "p99": pct.get(99), "errors": errors}


def hey(url: str, body: Path, concurrency: int, seconds: float) -> dict:
    command = ["hey", "-z", f"{seconds}s", "-c", str(concurrency), "-m", "POST", "-D", str(body),
               "-T", f"multipart/form-data; boundary={BOUNDARY}", url]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 120)
    return parse_hey(done.stdout)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(server: str, model: Path, port: int, log: Path) -> tuple[subprocess.Popen, str]:
    """The server's process (in its own group) and its readiness URL."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIN_")}
    if server == "this":
        command = [str(Path(sys.executable).parent / "bentoml"), "serve", "--port", str(port),
                   "--host", "127.0.0.1"]  # fmt: skip
        env["TIN_MODEL"], ready = str(model), f"http://127.0.0.1:{port}/readyz"
    else:
        python = Path(os.environ.get("LITSERVE_PYTHON", LITSERVE_PYTHON))
        if not python.is_file():
            raise ConfigError(f"no LitServe venv at {python}: see `python -m bench.peers --help`")
        command = [str(python), "-m", "bench.peer_servers.litserve_server", str(model), str(port)]
        env["PYTHONPATH"], ready = str(REPO), f"http://127.0.0.1:{port}/health"
    with log.open("w") as out:
        proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)  # fmt: skip
    return proc, ready


def wait_ready(proc: subprocess.Popen, url: str, log: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited:\n{log.read_text()[-2000:]}")
        try:
            if urllib.request.urlopen(url, timeout=2).status == 200:
                return
        except OSError:
            time.sleep(0.3)
    raise RuntimeError(f"the server was not ready in {timeout:.0f} s:\n{log.read_text()[-2000:]}")


def measure(server: str, model: Path, files: dict[str, Path], seconds: float, log: Path) -> list:
    port = free_port()
    proc, ready = start(server, model, port, log)
    try:
        wait_ready(proc, ready, log)
        url = f"http://127.0.0.1:{port}/classify"
        rows = []
        for name, upload, concurrency in ROWS:
            if name == "c32, 64×64":
                hey(url, files["small"], 8, 2)  # warm-up, after the fresh row
            rows.append((name, hey(url, files[upload], concurrency, seconds)))
        return rows
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def cell(r: dict) -> str:
    text = f"{r['rps']:.0f} ({r['p50']:.1f} ms)" if r["p50"] is not None else f"{r['rps']:.0f}"
    return text + (f" **{r['errors']} errors**" if r["errors"] else "")


def table(results: dict[str, list], machine: str, seconds: float) -> str:
    names = list(results)
    lines = [
        f"- machine: {machine}; {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC; "
        f"`hey -z {seconds:g}s`, req/s (p50)",
        "",
        "| row | " + " | ".join(names) + " |",
        "|---|" + "--:|" * len(names),
    ]
    for i, (row, _, _) in enumerate(ROWS):
        lines.append(f"| {row} | " + " | ".join(cell(results[n][i][1]) for n in names) + " |")
    return "\n".join(lines) + "\n"


def machine() -> str:
    model = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    return f"{os.cpu_count()} cores, {model or 'unknown CPU'}"


def write_section(path: Path, text: str) -> None:
    old = path.read_text() if path.is_file() else "# Benchmarks\n"
    heading = "## Serving peers"
    kept = re.sub(rf"\n{heading}\n.*?(?=\n## |\Z)", "", old, flags=re.S)
    path.write_text(kept.rstrip("\n") + f"\n\n{heading}\n\n{text}")


def main(argv: list[str] | None = None) -> int:
    ap = Parser(prog="python -m bench.peers", description=__doc__.split("\n\n")[0])
    ap.add_argument("--servers", default="this,litserve", help="comma-separated: this, litserve")
    ap.add_argument("--model", type=Path, default=REPO / "models" / "model.onnx")
    ap.add_argument("--image", type=Path, help="a 64×64 JPEG (default: a synthetic one)")
    ap.add_argument("--duration", type=float, default=10.0, help="seconds per row")
    ap.add_argument("--write", type=Path, help="replace the 'Serving peers' section of this file")
    args = ap.parse_args(argv)
    servers = args.servers.split(",")
    if unknown := set(servers) - {"this", "litserve"}:
        return fail(f"unknown server {sorted(unknown)[0]!r}; valid: this, litserve")
    if shutil.which("hey") is None:
        return fail("hey is not installed (apt-get install hey)")
    if not args.model.is_file():
        return fail(f"no model at {args.model}")
    with tempfile.TemporaryDirectory() as tmp:
        image = args.image or synthetic_jpeg(Path(tmp) / "small.jpg")
        files = bodies(image, Path(tmp))
        try:
            results = {
                s: measure(s, args.model, files, args.duration, Path(tmp) / f"{s}.log")
                for s in servers
            }
        except (ConfigError, RuntimeError) as e:
            return fail(e)
    text = table(results, machine(), args.duration)
    print(text)
    if args.write:
        write_section(args.write, text)
    return 0


def synthetic_jpeg(path: Path) -> Path:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), np.uint8)).save(path, quality=90)
    return path


if __name__ == "__main__":
    sys.exit(main())
