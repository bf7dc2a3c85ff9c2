"""CPU inference speed of an exported model: PyTorch eager, ONNX Runtime fp32 (and INT8), per batch.

    python -m serving.bench_inference [--model models/model.onnx] [--checkpoint CKPT]
        [--int8 INT8.onnx] [-b 1 8 64 256] [--seconds 10] [--write BENCHMARKS.md]

For each engine and batch size: warm-up calls (≥ 1 call and ≥ 1 s, untimed), then back-to-back
calls on the same random uint8 batch for ≥ `--seconds` and ≥ 5 calls. Latency p50/p99 are of one
batch call; img/s is batch ÷ the median call, so a stray slow call moves p99 and not the rate.
"of peak" = GFLOPs per image × img/s ÷ the peak GFLOP/s of a 2048×2048 fp32 matmul in torch,
measured at the start of the same run with the same threads: how much of what this machine
demonstrably reaches the network gets. GFLOPs count 2 per multiply-add of Conv2d and Linear
layers only (`training.models.count_macs`, as `python -m training.models --list` reports them).

The PyTorch row needs the training checkpoint (`--checkpoint`): the ONNX file's weights are
folded (batch norm into the convs), so the eager network cannot be rebuilt from it. It runs the
checkpoint's eval-mode network as `training.evaluate` does, in channels_last under
torch.inference_mode, from the same uint8 NHWC batch through `training.augment.normalize`.

Needs the train and export extras (torch, onnx, onnxruntime): the `make test` environment.
Run it on an otherwise idle machine: the load average is printed and written with the table.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import os
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

BATCHES = (1, 8, 64, 256)
MIN_CALLS = 5  # p99 of fewer calls is just their maximum; at batch 256 five calls take ~25 s
WARMUP_S = 1.0
PEAK_N = 2048  # 2·2048³ = 17.2 GFLOP a call: ~0.1 s at AVX2 rates, far beyond the caches
SIMD_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile")
TITLE = "# Benchmarks\n\nAppended by `make bench`, newest last; each section names its command.\n"


@dataclass(frozen=True)
class Row:
    engine: str
    batch: int
    calls: int
    p50_ms: float
    p99_ms: float
    images_per_s: float
    flop_share: float  # of the measured matmul peak


# --- arithmetic ----------------------------------------------------------------------------------


def flop_share(gflops_per_image: float, images_per_s: float, peak_gflops: float) -> float:
    """The share of the peak that `images_per_s` images of `gflops_per_image` each amount to."""
    if peak_gflops <= 0:
        raise ValueError(f"peak must be positive, got {peak_gflops} GFLOP/s")
    return gflops_per_image * images_per_s / peak_gflops


def summarize(engine: str, batch: int, seconds: list[float], gflops: float, peak: float) -> Row:
    """A table row from the durations (s) of single batch calls."""
    if not seconds:
        raise ValueError("no timed calls")
    ms = np.asarray(seconds) * 1000
    p50 = float(np.percentile(ms, 50))
    rate = batch / (p50 / 1000)
    return Row(engine, batch, len(ms), p50, float(np.percentile(ms, 99)), rate,
               flop_share(gflops, rate, peak))  # fmt: skip


def matmul_gflops(n: int, seconds: float) -> float:
    return 2 * n**3 / seconds / 1e9


# --- timing --------------------------------------------------------------------------------------


def time_calls(fn: Callable[[], object], seconds: float, min_calls: int = MIN_CALLS) -> list[float]:
    """Durations of back-to-back calls of `fn` after an untimed warm-up (first calls allocate and
    pick kernels for the shape)."""
    start = time.perf_counter()
    fn()
    while time.perf_counter() - start < WARMUP_S:
        fn()
    times = []
    start = time.perf_counter()
    while len(times) < min_calls or time.perf_counter() - start < seconds:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def peak_gflops(threads: int, seconds: float = 3.0, n: int = PEAK_N) -> float:
    """Median GFLOP/s of an n×n fp32 matmul in torch on `threads` threads."""
    import torch

    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    out = torch.empty(n, n)
    times = time_calls(lambda: torch.mm(a, b, out=out), seconds)
    return matmul_gflops(n, statistics.median(times))


# --- engines -------------------------------------------------------------------------------------


def model_gflops(model_config: dict) -> float:
    """GFLOPs of one 64×64 image: 2 × Conv2d and Linear multiply-adds (all blocks on)."""
    from training.models import ModelConfig, build_model, count_macs

    return 2 * count_macs(build_model(ModelConfig.from_dict(model_config))) / 1e9


def same_network(what: str, config: dict, expected: dict) -> None:
    """Every row of one table must be the same network: its GFLOPs are the model's."""
    from training.models import ModelConfig

    if ModelConfig.from_dict(config) != ModelConfig.from_dict(expected):
        raise ValueError(f"{what} is a different network from --model: {config} vs {expected}")


def torch_engine(checkpoint: Path, threads: int, expected: dict) -> Callable[[np.ndarray], object]:
    import torch

    from export.onnx_export import load_model
    from training.augment import normalize

    torch.set_num_threads(threads)
    model, ckpt = load_model(checkpoint)
    same_network(f"--checkpoint {checkpoint}", ckpt["config"]["model"], expected)
    model = model.to(memory_format=torch.channels_last)
    mean, std = (tuple(ckpt["preprocessing"][k]) for k in ("mean", "std"))

    def predict(images):
        # softmax too: the ONNX graph returns logits and probabilities.
        with torch.inference_mode():
            return model(normalize(torch.from_numpy(images), mean, std)).softmax(1)

    return predict


def onnx_engine(path: Path, threads: int, expected: dict) -> Callable[[np.ndarray], object]:
    from export import contract as C
    from export.onnx_export import read_card, session

    same_network(f"{path}", read_card(path).model_config, expected)
    sess = session(path, threads=threads)
    return lambda images: sess.run(None, {C.INPUT_NAME: images})


def measure(engine: str, predict, batches, seconds: float, gflops: float, peak: float) -> list[Row]:
    rows = []
    for batch in batches:
        images = random_batch(batch)
        times = time_calls(lambda images=images: predict(images), seconds)
        rows.append(summarize(engine, batch, times, gflops, peak))
        print(format_row(rows[-1]), flush=True)
    return rows


def random_batch(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 64, 64, 3), dtype=np.uint8)


# --- report --------------------------------------------------------------------------------------

COLUMNS = ("engine", "batch", "img/s", "p50 ms", "p99 ms", "calls", "of peak")
HEADER = f"| {' | '.join(COLUMNS)} |\n|---|{'--:|' * (len(COLUMNS) - 1)}"


def _ms(v: float) -> str:
    return f"{v:.1f}" if v >= 10 else f"{v:.2f}"


def format_row(r: Row) -> str:
    return (
        f"| {r.engine} | {r.batch} | {r.images_per_s:.1f} | {_ms(r.p50_ms)} | {_ms(r.p99_ms)} | "
        f"{r.calls} | {r.flop_share:.1%} |"
    )


def format_table(rows: list[Row]) -> str:
    return "\n".join([HEADER, *(format_row(r) for r in rows)])


def cpu_info(text: str) -> tuple[str, list[str]]:
    """The CPU's model name and which of SIMD_FLAGS it has, from /proc/cpuinfo's text."""
    model, flags = "unknown CPU", set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and model == "unknown CPU":
            model = value.strip()
        elif key.strip() == "flags" and not flags:
            flags = set(value.split())
    return model, [f for f in SIMD_FLAGS if f in flags]


def machine() -> str:
    try:
        model, simd = cpu_info(Path("/proc/cpuinfo").read_text())
    except OSError:
        model, simd = "unknown CPU", []
    return f"{model}, {os.cpu_count()} cores (os.cpu_count()), SIMD: {', '.join(simd) or '?'}"


def describe_model(path: Path, card) -> str:
    cfg = card.model_config
    net = f"{cfg.get('family', 'resnet')} {cfg.get('block')} {list(cfg.get('layers', []))}"
    return (
        f"`{path}` ({net}, stem {cfg.get('stem')}, unit {cfg.get('variant')}; weights stored "
        f"{card.weights}, compute {card.precision})"
    )


def report(*, when, command, model, gflops, peak, threads, rows, notes, load) -> str:
    import onnxruntime
    import torch

    lines = [
        f"## CPU inference, {when:%Y-%m-%d %H:%M} UTC",
        "",
        f"- command: `{command}`",
        f"- machine: {machine()}; load average (1 min) before / after: {load[0]:.2f} / "
        f"{load[1]:.2f}",
        f"- software: torch {torch.__version__}, onnxruntime {onnxruntime.__version__}, "
        f"Python {sys.version.split()[0]}; {threads} threads",
        f"- model: {model}: {gflops:.3f} GFLOPs per image (2 × Conv2d and Linear multiply-adds)",
        f"- peak: {peak:.1f} GFLOP/s, median of a {PEAK_N}×{PEAK_N} fp32 matmul in torch, "
        f'{threads} threads; "of peak" = GFLOPs per image × img/s ÷ peak',
        "- img/s = batch ÷ median call; p50/p99 of one batch call, after a warm-up",
        *(f"- {n}" for n in notes),
        "",
        format_table(rows),
        "",
    ]
    return "\n".join(lines)


def append(path: Path, text: str) -> None:
    """Add `text` at the end of `path`, starting the file with a title if it is new."""
    head = "" if path.exists() and path.stat().st_size else TITLE
    with path.open("a") as f:
        f.write(f"{head}\n{text}")


# --- CLI -----------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="python -m serving.bench_inference",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--model", type=Path, default=Path("models/model.onnx"), help="fp32 ONNX")
    ap.add_argument("--checkpoint", type=Path, help="training checkpoint: adds the PyTorch row")
    ap.add_argument("--int8", type=Path, help="an INT8 ONNX model of the same network: adds a row")
    ap.add_argument("-b", "--batch", type=int, nargs="+", default=list(BATCHES))
    ap.add_argument("--seconds", type=float, default=10.0, help="timed s per engine and batch")
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="default: all cores")
    ap.add_argument("--write", type=Path, metavar="MD", help="append the results to this file")
    args = ap.parse_args(argv)
    if min(args.batch) < 1:
        ap.error(f"batch sizes must be >= 1, got {args.batch}")
    if args.seconds <= 0:
        ap.error(f"--seconds must be positive, got {args.seconds}")
    if args.threads < 1:
        ap.error(f"--threads must be >= 1, got {args.threads}")
    for name in ("model", "checkpoint", "int8"):
        path = getattr(args, name)
        if path is not None and not path.is_file():
            ap.error(f"--{name}: no such file: {path}")
    return args


def plan(args: argparse.Namespace) -> tuple[list[tuple], list[str]]:
    """(engine name, engine factory, file) to measure, and notes on what is left out and why."""
    engines, notes = [], []
    if args.checkpoint:
        engines.append(("PyTorch eager fp32", torch_engine, args.checkpoint))
    else:
        notes.append(
            "PyTorch eager: skipped, no `--checkpoint` (the ONNX weights are folded, so the eager "
            "network cannot be rebuilt from the ONNX file)"
        )
    engines.append(("ONNX Runtime fp32", onnx_engine, args.model))
    if args.int8:
        engines.append(("ONNX Runtime INT8", onnx_engine, args.int8))
        notes.append('INT8: "of peak" counts its int8 multiply-adds against the fp32 peak')
    return engines, notes


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = shlex.join(["python", "-m", "serving.bench_inference", *(argv or sys.argv[1:])])
    from export.onnx_export import read_card

    try:
        card = read_card(args.model)  # ContractError: not one of our exports
        gflops = model_gflops(card.model_config)
        engines, notes = plan(args)
        for n in notes:
            print(f"# {n}")
        load = [os.getloadavg()[0]]
        if load[0] > 0.5:
            print(f"# warning: load average {load[0]:.2f}: something else is using the cores")
        peak = peak_gflops(args.threads)
        print(f"# {args.model}: {gflops:.3f} GFLOPs/image; matmul peak {peak:.1f} GFLOP/s, "
              f"{args.threads} threads")  # fmt: skip
        print(HEADER, flush=True)
        rows = []
        for engine, make, path in engines:
            predict = make(path, args.threads, card.model_config)
            rows += measure(engine, predict, args.batch, args.seconds, gflops, peak)
            # Let go of the model before the next engine: ONNX Runtime's pool threads spin
            # between runs and would compete with the next engine for the same cores.
            del predict
            gc.collect()
        load.append(os.getloadavg()[0])
    except ValueError as e:  # ContractError, CheckpointError, a different network
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.write:
        model = describe_model(args.model, card)
        when = datetime.datetime.now(datetime.UTC)
        append(args.write, report(when=when, command=command, model=model, gflops=gflops,
                                  peak=peak, threads=args.threads, rows=rows, notes=notes,
                                  load=load))  # fmt: skip
        print(f"# appended to {args.write}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
