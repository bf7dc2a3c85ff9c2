"""This service beside LitServe and Triton on the same model, decode and engine, under one load.

    python -m bench.peers [--servers this,litserve,triton] [--duration 15] [--write BENCHMARKS.md]
    bash scripts/peers_setup.sh   # first: hey, and the peers' venvs outside the work tree

One server at a time: started, ready, warmed up (2 s at concurrency 8), loaded by `hey` (Debian's
package) row by row, stopped (its process group), and its ports seen free before the next.
Every server decodes with inference.preprocess.decode and predicts with
inference.backend.open_backend (`auto`: OpenVINO INT8, models/model.int8.xml, on a CPU), so the
rows compare the serving around one decode and one engine.

What each server receives. Triton's HTTP front speaks the KServe v2 inference protocol, which
carries tensors, not multipart uploads, so every server is sent the JPEG file itself as the
body, the same bytes for all three:
- this (`bentoml serve` from the repo root, TIN_MODEL=models/model.onnx; its in-process
  micro-batcher): POST /classify, Content-Type image/jpeg (its raw-body form of /classify;
  browsers and clients/ send multipart, which costs it a form parse more);
- litserve (bench/peer_servers/litserve_server.py, LitServe in $PEERS_HOME/litserve-venv;
  batches of up to 32, 2 ms batching timeout): POST /classify, Content-Type image/jpeg;
- triton (bench/peer_servers/triton_server.py, PyTriton 0.7 in $PEERS_HOME/triton-venv, a
  Python 3.12 one; dynamic batching up to 32, 2 ms queue delay): POST
  /v2/models/classify/infer, Content-Type application/octet-stream, a binary-tensor request
  built once: a JSON header naming one BYTES tensor `image` of shape [1, 1] (its length in the
  Inference-Header-Content-Length header), then the tensor, the JPEG's 4-byte little-endian
  length and the JPEG. The model decodes the bytes in Python like the others.
Each answers the top 5 as JSON (their own shapes).

Rows (`hey -z SECONDS -c N`): a 64×64 JPEG (the first image in $TINY_IMAGENET_VAL_IMAGES, else a
synthetic one) at concurrency 1 on the fresh server, then at 32, then at 1 right after a 10 s
burst at 32 (and, with --after-burst-wait, this service at 1 again that long after); the same
image upscaled to 500×375 at 32 and to 4000×3000 (quality 90, about 0.5 MB) at 8. A cell with
non-200 answers or requests without an answer is flagged. Not in the test suite: minutes long
and as noisy as the machine (the client shares its cores with the server).
PEERS_HOME defaults to ~/.cache/tin-peers; LITSERVE_PYTHON and TRITON_PYTHON override the venvs.
"""

from __future__ import annotations

import datetime
import io
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from bench.inference import machine  # the CPU's name and SIMD features (VNNI, AMX)
from common.cli import ConfigError, Parser, fail

REPO = Path(__file__).resolve().parent.parent
PEERS_HOME = Path(os.environ.get("PEERS_HOME", Path.home() / ".cache" / "tin-peers"))
WARMUP = (8, 2.0)  # concurrency, seconds
BURST = (32, 10.0)
SIZES = {"medium": (500, 375), "large": (4000, 3000)}
LOGS = Path(tempfile.gettempdir()) / "tin-peers"  # each server's output, kept after the run


TRITON_READY = "/v2/models/classify/ready"  # the model's, not the server's: it loads after


@dataclass(frozen=True)
class Server:
    name: str
    title: str
    route: str
    ready: str
    ports: int  # consecutive ports it listens on, the first its HTTP port


SERVERS = {
    s.name: s
    for s in (
        Server("this", "this service", "/classify", "/readyz", 1),
        Server("litserve", "LitServe", "/classify", "/health", 1),
        Server("triton", "Triton (PyTriton)", "/v2/models/classify/infer", TRITON_READY, 3),
    )
}


@dataclass(frozen=True)
class Row:
    key: str
    title: str
    upload: str  # small | medium | large
    concurrency: int
    p99: bool = True


ROWS = (
    Row("fresh", "c1 fresh, 64×64", "small", 1, p99=False),
    Row("c32", "c32, 64×64", "small", 32),
    Row("after", "c1 after a 10 s c32 burst", "small", 1, p99=False),
    Row("later", "c1 {wait:g} s after that", "small", 1, p99=False),
    Row("medium", "c32, 500×375", "medium", 32),
    Row("large", "c8, 4000×3000", "large", 8),
)


def plan(server: str, after_burst_wait: float | None) -> list[tuple]:
    """A server's steps in order: ("row", Row), ("burst",) or ("sleep", seconds)."""
    steps = []
    for row in ROWS:
        if row.key == "after":
            steps.append(("burst",))
        if row.key == "later":
            if not after_burst_wait or server != "this":
                continue
            steps.append(("sleep", after_burst_wait))
        steps.append(("row", row))
    return steps


# --- uploads and request bodies --------------------------------------------------------------


def jpeg(image, quality: int = 90) -> bytes:
    out = io.BytesIO()
    image.save(out, "JPEG", quality=quality)
    return out.getvalue()


def small_jpeg(val_images: str | None) -> bytes:
    """The 64×64 upload: the first JPEG in the val folder (re-encoded only if not 64×64), else
    smooth synthetic noise, about a val image's size."""
    import numpy as np
    from PIL import Image

    if not val_images:
        rng = np.random.default_rng(0)
        small = Image.fromarray(rng.integers(0, 256, (8, 8, 3), np.uint8))
        return jpeg(small.resize((64, 64), Image.Resampling.BICUBIC))
    files = sorted(p for p in Path(val_images).glob("*") if p.suffix.lower() in (".jpeg", ".jpg"))
    if not files:
        raise ConfigError(f"no .JPEG file in TINY_IMAGENET_VAL_IMAGES={val_images}")
    data = files[0].read_bytes()
    im = Image.open(io.BytesIO(data))
    return data if im.size == (64, 64) else jpeg(im.convert("RGB").resize((64, 64)))


def uploads(small: bytes) -> dict[str, bytes]:
    """The 64×64 JPEG and its bicubic upscales to the photo sizes (quality 90)."""
    from PIL import Image

    im = Image.open(io.BytesIO(small)).convert("RGB")
    out = {"small": small}
    for name, size in SIZES.items():
        out[name] = jpeg(im.resize(size, Image.Resampling.BICUBIC))
    return out


OUTPUTS = ("index", "probability")  # Triton's model's, asked for as JSON


def kserve_body(image: bytes) -> tuple[bytes, int]:
    """A KServe v2 binary-tensor request carrying `image` as one BYTES element, and the length
    of its JSON header (for Inference-Header-Content-Length)."""
    tensor = struct.pack("<I", len(image)) + image
    image_tensor = {"name": "image", "shape": [1, 1], "datatype": "BYTES"}
    header = {
        "inputs": [{**image_tensor, "parameters": {"binary_data_size": len(tensor)}}],
        "outputs": [{"name": n, "parameters": {"binary_data": False}} for n in OUTPUTS],
    }
    head = json.dumps(header, separators=(",", ":")).encode()
    return head + tensor, len(head)


def request(server: str, image: bytes) -> tuple[bytes, str, list[str]]:
    """(body, content type, extra headers) that `server` is sent for `image`."""
    if server == "triton":
        body, head = kserve_body(image)
        return body, "application/octet-stream", [f"Inference-Header-Content-Length: {head}"]
    return image, "image/jpeg", []


# --- hey -------------------------------------------------------------------------------------


def hey_command(url: str, body: Path, kind: str, headers: list[str], c: int, s: float) -> list:
    command = ["hey", "-z", f"{s:g}s", "-c", str(c), "-m", "POST", "-D", str(body), "-T", kind]
    for h in headers:
        command += ["-H", h]
    return [*command, url]


def parse_hey(text: str) -> dict:
    """req/s (of all answers), p50 and p99 in ms, and the failures: non-200 answers from the
    status code distribution plus requests with no answer from the error distribution."""
    rps = re.search(r"Requests/sec:\s+([\d.]+)", text)
    if rps is None:
        raise ValueError(f"no Requests/sec in hey's output: {text[-300:]!r}")
    found = re.findall(r"(\d+)%+ in ([\d.]+) secs", text)
    pct = {int(p): round(float(s) * 1000, 1) for p, s in found}
    codes = {int(c): int(n) for c, n in re.findall(r"\[(\d+)\]\s+(\d+) responses", text)}
    failed = re.findall(r"^\s*\[(\d+)\]\s+(?:Get|Post) ", text, re.M)
    errors = sum(n for c, n in codes.items() if c != 200) + sum(map(int, failed))
    rate = round(float(rps.group(1)), 1)
    return {"rps": rate, "p50": pct.get(50), "p99": pct.get(99), "errors": errors}


def hey(command: list, seconds: float) -> dict:
    done = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 90)
    return parse_hey(done.stdout + done.stderr)


# --- servers ---------------------------------------------------------------------------------


def peer_python(server: str) -> Path:
    override = os.environ.get(f"{server.upper()}_PYTHON")
    return Path(override) if override else PEERS_HOME / f"{server}-venv" / "bin" / "python"


def command_for(server: str, model: Path, port: int) -> tuple[list, dict]:
    """The server's command line and environment (no TIN_ settings but the model)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIN_")}
    if server == "this":
        bentoml = Path(sys.executable).parent / "bentoml"
        env["TIN_MODEL"] = str(model)
        return [str(bentoml), "serve", "--host", "127.0.0.1", "--port", str(port)], env
    python = peer_python(server)
    if not python.is_file():
        raise FileNotFoundError(f"no {server} venv at {python} (bash scripts/peers_setup.sh)")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    module = f"bench.peer_servers.{server}_server"
    return [str(python), "-m", module, str(model), str(port)], env


def port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_ports(n: int) -> int:
    """The first of n consecutive free ports."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = s.getsockname()[1]
        if base + n < 65536 and all(port_free(base + i) for i in range(n)):
            return base


def wait_ready(proc: subprocess.Popen, url: str, log: Path, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"exited with status {proc.returncode} (log: {log})")
        try:
            if urllib.request.urlopen(url, timeout=2).status == 200:
                return
        except OSError:
            time.sleep(0.3)
    raise RuntimeError(f"not ready in {timeout:.0f} s (log: {log})")


def stop(proc: subprocess.Popen, base: int, ports: int) -> None:
    """End the server's process group, then wait until its ports are free."""
    for sig, wait in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=wait)
            break
        except subprocess.TimeoutExpired:
            continue
    deadline = time.monotonic() + 30
    while not all(port_free(base + i) for i in range(ports)):
        if time.monotonic() > deadline:
            raise RuntimeError(f"ports {base}..{base + ports - 1} still in use after the stop")
        time.sleep(0.5)


def measure(name: str, model: Path, images: dict, args, folder: Path) -> dict:
    """One server's results: {"status": "ok", "rows": {key: stats}} or a status saying why
    it was not run or failed."""
    server = SERVERS[name]
    base = free_ports(server.ports)
    LOGS.mkdir(parents=True, exist_ok=True)
    log = LOGS / f"{name}.log"
    try:
        command, env = command_for(name, model, base)
    except FileNotFoundError as e:
        return {"status": f"not run: {e}", "rows": {}}
    files = {}
    for upload, image in images.items():
        body, kind, headers = request(name, image)
        files[upload] = (folder / f"{name}-{upload}.body", kind, headers)
        files[upload][0].write_bytes(body)
    url = f"http://127.0.0.1:{base}"

    def load(upload: str, concurrency: int, seconds: float) -> dict:
        path, kind, headers = files[upload]
        command = hey_command(url + server.route, path, kind, headers, concurrency, seconds)
        return hey(command, seconds)

    print(f"# {server.title}: {' '.join(command)} (log {log})", file=sys.stderr, flush=True)
    with log.open("w") as out:
        proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)  # fmt: skip
    rows = {}
    try:
        wait_ready(proc, url + server.ready, log)
        load("small", *WARMUP)
        for step in plan(name, args.after_burst_wait):
            if step[0] == "burst":
                load("small", *BURST)
            elif step[0] == "sleep":
                time.sleep(step[1])
            else:
                row = step[1]
                rows[row.key] = load(row.upload, row.concurrency, args.duration)
                print(f"#   {row.key}: {rows[row.key]}", file=sys.stderr, flush=True)
    except (RuntimeError, ValueError, subprocess.TimeoutExpired) as e:
        tail = log.read_text(errors="replace").strip().splitlines()[-20:]
        print("\n".join(tail), file=sys.stderr)
        return {"status": f"failed: {e}", "rows": rows}
    finally:
        stop(proc, base, server.ports)
    return {"status": "ok", "rows": rows}


# --- the report ------------------------------------------------------------------------------


def cell(r: dict | None, row: Row) -> str:
    if r is None:
        return "—"
    text = f"{r['rps']:.0f}/s"
    if r["p50"] is not None:
        text += f", p50 {r['p50']:.1f}"
    if row.p99 and r["p99"] is not None:
        text += f", p99 {r['p99']:.0f}"
    return (f"**{r['errors']} errors** " if r["errors"] else "") + text


def table(results: dict[str, dict], after_burst_wait: float | None) -> str:
    """Servers as rows, measurements as columns, and each server's failures in all."""
    rows = [r for r in ROWS if r.key != "later" or after_burst_wait]
    titles = [r.title.format(wait=after_burst_wait or 0) for r in rows]
    lines = [
        "| server | " + " | ".join(titles) + " | errors |",
        "|---|" + "--:|" * (len(rows) + 1),
    ]
    for name, result in results.items():
        title = SERVERS[name].title
        if not result["rows"]:
            lines.append(f"| {title} | {result['status']} |" + " |" * len(rows))
            continue
        cells = [cell(result["rows"].get(r.key), r) for r in rows]
        errors = sum(r["errors"] for r in result["rows"].values())
        if result["status"] != "ok":
            cells[-1] += f" ({result['status']})"
        lines.append(f"| {title} | " + " | ".join(cells) + f" | {errors} |")
    return "\n".join(lines) + "\n"


def section(results: dict, args, images: dict, engine: str, when: datetime.datetime) -> str:
    sizes = ", ".join(f"{n} {len(b) / 1000:.1f} kB" for n, b in images.items())
    return (
        f"- {when:%Y-%m-%d %H:%M} UTC; machine: {machine()}, load "
        f"average {args.load:.2f} at the start\n"
        f"- `hey -z {args.duration:g}s -c N` a cell, after {WARMUP[1]:g} s at c{WARMUP[0]}; "
        "req/s, p50 and p99 in ms; errors: non-200 answers and requests without one\n"
        f"- every server: inference.preprocess.decode and open_backend auto ({engine}); the same "
        f"JPEG bytes ({sizes}) as an image/jpeg body to POST /classify (this service, "
        "LitServe) or inside a KServe v2 binary-tensor request (Triton); see bench/peers.py\n"
        "\n" + table(results, args.after_burst_wait)
    )


def write_section(path: Path, text: str, heading: str = "## Serving peers") -> None:
    """Replace the section under `heading` (up to the next `## `) in place, or append one."""
    old = path.read_text() if path.is_file() else "# Benchmarks\n"
    block = f"{heading}\n\n{text.rstrip()}\n"
    pattern = re.compile(rf"^{re.escape(heading)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(old):
        new = pattern.sub(lambda m: block + ("\n" if m.end() < len(old) else ""), old, count=1)
    else:
        new = old.rstrip("\n") + "\n\n" + block
    path.write_text(new)


def engine_of(model: Path) -> str:
    try:
        from inference.backend import choose

        c = choose(model)
        return f"{c.engine} {c.precision}, {c.path.name}"
    except Exception as e:
        return f"unknown: {e}"


def main(argv: list[str] | None = None) -> int:
    ap = Parser(prog="python -m bench.peers", description=__doc__.split("\n\n")[0])
    ap.add_argument("--servers", default="this,litserve,triton",
                    help=f"comma-separated, in order: {', '.join(SERVERS)}")  # fmt: skip
    ap.add_argument("--model", type=Path, default=REPO / "models" / "model.onnx")
    ap.add_argument("--image", type=Path, help="the 64×64 JPEG (default: see the module doc)")
    ap.add_argument("--duration", type=float, default=15.0, help="seconds per cell")
    ap.add_argument("--after-burst-wait", type=float, nargs="?", const=60.0, metavar="S",
                    help="this service at c1 again S (60) seconds after the burst")  # fmt: skip
    ap.add_argument("--write", type=Path, help="replace the 'Serving peers' section of this file")
    args = ap.parse_args(argv)
    servers = args.servers.split(",")
    if unknown := [s for s in servers if s not in SERVERS]:
        return fail(f"unknown server {unknown[0]!r}; valid: {', '.join(SERVERS)}")
    if args.duration <= 0 or (args.after_burst_wait is not None and args.after_burst_wait <= 0):
        return fail("--duration and --after-burst-wait must be positive")
    if not args.model.is_file():
        return fail(f"no model at {args.model}")
    if shutil.which("hey") is None:
        return fail("hey is not installed: bash scripts/peers_setup.sh (or apt-get install hey)")
    try:
        small = (
            args.image.read_bytes()
            if args.image
            else small_jpeg(os.environ.get("TINY_IMAGENET_VAL_IMAGES"))
        )
        images = uploads(small)
    except (ConfigError, OSError) as e:
        return fail(e)
    args.load = os.getloadavg()[0]
    when = datetime.datetime.now(datetime.UTC)
    model = args.model.resolve()
    with tempfile.TemporaryDirectory(prefix="peers-") as tmp:
        results = {s: measure(s, model, images, args, Path(tmp)) for s in servers}
    text = section(results, args, images, engine_of(model), when)
    print(text, end="")
    if args.write:
        write_section(args.write, text)
    return 1 if any(r["status"].startswith("failed") for r in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
