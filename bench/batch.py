"""Batch prediction speed: the Ray Data job against the same backend in one plain process and
against the HTTP service, on the same images, the three taking turns in rounds.

    python -m bench.batch [--model models/model.onnx] [--images DIR] [-n 5000] [--rounds 3]
        [--write BENCHMARKS.md]

  plain  one process: inference.preprocess.decode + inference.backend.open_backend(...).predict in
         batches of 32: the floor a batch engine adds its costs to
  ray    `python -m batch DIR --out OUT` on an embedded local Ray, default actors and threads
  http   `bentoml serve` (started and warm before the clock starts), then
         `python -m clients predict DIR --out results.jsonl`

Every path runs the backend the service would choose here (TIN_BACKEND / TIN_PRECISION, else
auto). "whole" is the command's wall time (imports, Ray's start, the model's load); "work" leaves
the start out: plain's decode-and-predict loop, the Ray job's own pipeline time (actor start and
model load still inside), and for http the client's run (the server's start is printed apart).
Images: the first N JPEGs under --images, else N synthetic 64×64 JPEGs.
"""

from __future__ import annotations

import datetime
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.http import start_server
from common.cli import Parser, fail

REPO = Path(__file__).resolve().parent.parent
PLAIN = """
import json, sys, time
from pathlib import Path
import numpy as np
from inference.backend import open_backend
from serving.config import settings
from inference.preprocess import decode
s = settings()
paths = sorted(Path(sys.argv[1]).iterdir())
backend = open_backend(sys.argv[2], s.backend, s.precision, threads=s.threads)
t = time.perf_counter()
for i in range(0, len(paths), 32):
    backend.predict(np.stack([decode(p.read_bytes()) for p in paths[i : i + 32]]))
print(json.dumps({"work": time.perf_counter() - t, "backend": backend.info["chosen"]}))
"""


def run(cmd: list[str], **kwargs) -> tuple[float, str]:
    t = time.perf_counter()
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, **kwargs)
    if done.returncode != 0:
        raise RuntimeError(f"{shlex.join(cmd)} failed:\n{done.stderr[-2000:]}")
    return time.perf_counter() - t, done.stdout


def plain(images: Path, model: Path, n: int) -> dict:
    whole, out = run([sys.executable, "-c", PLAIN, str(images), str(model)])
    r = json.loads(out.strip().splitlines()[-1])
    return {"whole": n / whole, "work": n / r["work"]}


def ray(images: Path, model: Path, n: int) -> dict:
    out = Path(tempfile.mkdtemp(prefix="bench-batch-"))
    try:
        cmd = [sys.executable, "-m", "batch", str(images), "--out", str(out), "--model", str(model)]
        whole, stdout = run(cmd)
        r = json.loads(stdout.strip().splitlines()[-1])
    finally:
        shutil.rmtree(out)
    if r["written"] != n:
        raise RuntimeError(f"the Ray job wrote {r['written']} rows for {n} images")
    return {"whole": n / whole, "work": n / r["pipeline_seconds"]}


def http(images: Path, url: str, n: int) -> dict:
    out = Path(tempfile.mkdtemp(prefix="bench-batch-")) / "results.jsonl"
    try:
        cmd = [sys.executable, "-m", "clients", "predict", str(images), "--out", str(out)]
        whole, _ = run([*cmd, "--url", url, "--no-progress"])
        lines = len(out.read_text().splitlines())
    finally:
        shutil.rmtree(out.parent)
    if lines != n:
        raise RuntimeError(f"the client wrote {lines} records for {n} images")
    return {"whole": n / whole, "work": n / whole}


def images_folder(source: Path | None, n: int, folder: Path) -> int:
    """Copy (or make) `n` JPEGs into `folder`; returns how many there are."""
    if source is not None:
        files = sorted(p for p in source.rglob("*") if p.suffix.lower() in (".jpeg", ".jpg"))
        for i, p in enumerate(files[:n]):
            shutil.copyfile(p, folder / f"{i:06d}.jpg")
    else:
        from bench.http import synthetic_jpegs

        pool = synthetic_jpegs(64)
        for i in range(n):
            (folder / f"{i:06d}.jpg").write_bytes(pool[i % len(pool)])
    return len(list(folder.iterdir()))


def measure(images: Path, model: Path, n: int, rounds: int) -> dict:
    """{path: [{"whole", "work"} per round]}."""
    server, url = start_server(model)
    try:
        results = {"plain": [], "ray": [], "http": []}
        for r in range(rounds):
            for name, fn in (("plain", plain), ("ray", ray), ("http", http)):
                res = fn(images, url if name == "http" else model, n)
                results[name].append(res)
                print(json.dumps({"round": r + 1, "path": name, **res}), flush=True)
    finally:
        import signal

        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)
    return results


def table(results: dict) -> str:
    med = {k: {m: statistics.median(x[m] for x in v) for m in ("whole", "work")}
           for k, v in results.items()}  # fmt: skip
    rows = ["| path | img/s, whole | of plain | img/s, work | of plain |", "|---|--:|--:|--:|--:|"]
    for k, v in med.items():
        rows.append(
            f"| {k} | {v['whole']:.1f} | {v['whole'] / med['plain']['whole']:.0%} | "
            f"{v['work']:.1f} | {v['work'] / med['plain']['work']:.0%} |"
        )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    p = Parser(prog="python -m bench.batch", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, default=REPO / "models/model.onnx")
    p.add_argument("--images", type=Path, help="a folder of JPEGs (default: synthetic ones)")
    p.add_argument("-n", type=int, default=5000, help="images per run")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--write", type=Path, metavar="MD", help="append the results to this file")
    args = p.parse_args(argv)
    if args.n < 1 or args.rounds < 1:
        p.error("-n and --rounds must be at least 1")
    if not args.model.is_file():
        return fail(f"no model at {args.model}")
    if args.images is not None and not args.images.is_dir():
        return fail(f"--images: no such folder: {args.images}")
    with tempfile.TemporaryDirectory(prefix="bench-batch-images-") as tmp:
        n = images_folder(args.images, args.n, Path(tmp))
        results = measure(Path(tmp), args.model.resolve(), n, args.rounds)
    text = table(results)
    print(text)
    if args.write:
        from bench.inference import append, machine

        argv = sys.argv[1:] if argv is None else argv
        head = [
            f"## Batch prediction, {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC",
            "",
            f"- command: `python -m bench.batch {shlex.join(argv)}`",
            f"- machine: {machine()}; {n} images, {args.rounds} rounds (medians), the paths "
            "taking turns; backend as the service chooses it (TIN_BACKEND, else auto)",
            '- "whole": the command\'s wall time; "work": without the start (plain: the loop; '
            "ray: Ray Data's execution; http: the client, the server started before)",
            "",
        ]
        append(args.write, "\n".join([*head, text, ""]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
