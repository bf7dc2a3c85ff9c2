"""CPU inference speed of an exported model on every engine × precision the service can run
(ONNX Runtime fp32 and INT8, OpenVINO fp32, bf16 and INT8; PyTorch eager with the checkpoint).

    python -m bench.inference [--model models/model.onnx] [--checkpoint CKPT]
        [--engines onnxruntime:fp32 openvino:int8 ...] [-b 1 8 32 256] [--seconds 12]
        [--rounds 3] [--write MD]

Each engine is the service's own backend (inference/backend.py, as TIN_BACKEND and TIN_PRECISION
pick it), on the model's forms beside --model (NAME.int8.onnx, NAME.int8.xml); a form that is
not there is left out with a note.

The engines take turns: `--rounds` rounds, each of which times every engine at every batch size
for `--seconds` ÷ rounds (and ≥ 2 calls), after an untimed warm-up (≥ 1 call and ≥ 1 s), on the
same random uint8 batch. Why rounds: on the 2-core VM this was written on, the machine's speed
drifted by up to a third over minutes with nothing else running (neighbours on the host; ONNX
Runtime at batch 8 gave 57 img/s in one run and 38 in the next), so measuring one engine after
the other would compare the drift as much as the engines. Latency p50/p99 are of one batch
call over all rounds; img/s is batch ÷ that median call, so a stray slow call moves p99 and not
the rate; "rounds" gives the lowest and highest img/s of the single rounds, the spread to expect
on a rerun.
"of peak" = GFLOPs per image × img/s ÷ peak, where peak is the fastest call of a 2048×2048 matmul
in torch in the engine's precision (fp32, bf16, int8 by torch._int_mm; GOP/s for int8) on the
same threads, over 3 s at the start and 3 s at the end of the run. The
fastest call and not the median: the median of six 3-s windows in a row ranged from 132 to 167
GFLOP/s here, their fastest calls from 134 to 176 (the drift again). GFLOPs count 2 per
multiply-add of Conv2d and Linear layers only, as the export writes them into the model card
(`training.summary.count_macs`, as `python -m training.summary --list` reports them).

The PyTorch row needs the training checkpoint (`--checkpoint`): the ONNX file's weights are
folded (batch norm into the convs), so the eager network cannot be rebuilt from it. It runs the
checkpoint's eval-mode network as `training.evaluate` does, in channels_last under
torch.inference_mode, from the same uint8 NHWC batch through `training.augment.normalize`.

Needs the train and export extras (torch, onnx, onnxruntime): the `make test` environment.
Run it on an otherwise idle machine: it measures how busy other processes keep the cores before
and during the run (from /proc/stat), warns above 5%, and writes both figures with the table.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import gc
import json
import os
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.cli import ConfigError, Parser, fail
from inference.contract import random_images

BATCHES = (1, 8, 32, 256)
ENGINES = (
    "onnxruntime:fp32",
    "onnxruntime:int8",
    "openvino:fp32",
    "openvino:bf16",
    "openvino:int8",
)
PRECISIONS = ("fp32", "bf16", "int8")
MIN_CALLS = 2  # per round: at batch 256 one call takes 4-7 s here
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
    round_rates: tuple[float, ...]  # img/s of each round alone


# --- arithmetic ----------------------------------------------------------------------------------


def flop_share(gflops_per_image: float, images_per_s: float, peak_gflops: float) -> float:
    """The share of the peak that `images_per_s` images of `gflops_per_image` each amount to."""
    if peak_gflops <= 0:
        raise ValueError(f"peak must be positive, got {peak_gflops} GFLOP/s")
    return gflops_per_image * images_per_s / peak_gflops


def summarize(
    engine: str, batch: int, rounds: list[list[float]], gflops: float, peak: float
) -> Row:
    """A table row from the durations (s) of single batch calls, one list per round."""
    if not any(rounds):
        raise ValueError("no timed calls")
    ms = np.concatenate([np.asarray(r, dtype=float) for r in rounds]) * 1000
    p50 = float(np.percentile(ms, 50))
    rate = batch / (p50 / 1000)
    round_rates = tuple(batch / statistics.median(r) for r in rounds if r)
    return Row(engine, batch, len(ms), p50, float(np.percentile(ms, 99)), rate,
               flop_share(gflops, rate, peak), round_rates)  # fmt: skip


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


def matmul_rates(
    threads: int, seconds: float = 3.0, n: int = PEAK_N, precision: str = "fp32"
) -> list[float]:
    """GFLOP/s (GOP/s for int8) of each call of an n×n matmul in torch on `threads` threads."""
    import torch

    torch.set_num_threads(threads)
    if precision == "int8":  # oneDNN's u8s8 GEMM: VNNI where the CPU has it
        a = torch.randint(-128, 127, (n, n), dtype=torch.int8)
        b = torch.randint(-128, 127, (n, n), dtype=torch.int8)
        times = time_calls(lambda: torch._int_mm(a, b), seconds)
    else:
        dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
        out = torch.empty(n, n, dtype=dtype)
        times = time_calls(lambda: torch.mm(a, b, out=out), seconds)
    return [matmul_gflops(n, t) for t in times]


def peaks(threads: int, precisions) -> dict[str, list[float]]:
    return {p: matmul_rates(threads, precision=p) for p in precisions}


# --- engines -------------------------------------------------------------------------------------


def model_gflops(card) -> float:
    """GFLOPs of one 64×64 image: 2 × Conv2d and Linear multiply-adds (all blocks on), from the
    card; an export older than that field is counted from its network config."""
    if card.gflops is not None:
        return card.gflops
    from training.models import ModelConfig, build_model
    from training.summary import count_macs

    return 2 * count_macs(build_model(ModelConfig.from_dict(card.model_config))) / 1e9


def same_network(what: str, config: dict, expected: dict) -> None:
    """Every row of one table must be the same network: its GFLOPs are the model's. Compared as
    JSON (tuples and lists alike), so that an ONNX-only table needs no torch."""
    if json.loads(json.dumps(config)) != json.loads(json.dumps(expected)):
        raise ConfigError(f"{what} is a different network from --model: {config} vs {expected}")


def torch_engine(checkpoint: Path, threads: int, expected: dict) -> Callable[[np.ndarray], object]:
    import torch

    from training.augment import normalize
    from training.checkpoint import load_model

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


def service_engine(spec: str, model: Path, threads: int, expected: dict):
    """The service's backend for "ENGINE:PRECISION" on `model`'s forms; ConfigError or
    EngineError where it cannot run here."""
    from inference.backend import open_backend

    engine, _, precision = spec.partition(":")
    backend = open_backend(model, engine, precision, max_batch=max(BATCHES), threads=threads)
    same_network(spec, backend.card.model_config, expected)
    return backend.predict


def measure(engines: dict, batches, seconds: float, rounds: int) -> dict[tuple, list[list[float]]]:
    """{(engine, batch): [durations of round 1, ...]}, the engines taking turns in each round."""
    images = {b: random_images(b) for b in batches}
    times = {(name, b): [] for name in engines for b in batches}
    for r in range(rounds):
        for name, predict in engines.items():
            for b in batches:
                call = functools.partial(predict, images[b])
                times[name, b].append(time_calls(call, seconds / rounds))
                ms = statistics.median(times[name, b][-1]) * 1000
                print(f"# round {r + 1}/{rounds}: {name}, batch {b}: {ms:.1f} ms", flush=True)
    return times


# --- report --------------------------------------------------------------------------------------

COLUMNS = ("engine", "batch", "img/s", "rounds", "p50 ms", "p99 ms", "calls", "of peak")
HEADER = f"| {' | '.join(COLUMNS)} |\n|---|{'--:|' * (len(COLUMNS) - 1)}"


def _ms(v: float) -> str:
    return f"{v:.1f}" if v >= 10 else f"{v:.2f}"


def format_row(r: Row) -> str:
    spread = f"{min(r.round_rates):.1f}-{max(r.round_rates):.1f}"
    return (
        f"| {r.engine} | {r.batch} | {r.images_per_s:.1f} | {spread} | {_ms(r.p50_ms)} | "
        f"{_ms(r.p99_ms)} | {r.calls} | {r.flop_share:.1%} |"
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


def cpu_jiffies(proc_stat: str) -> tuple[int, int]:
    """(busy, total) clock ticks of all cores since boot, from /proc/stat's text."""
    fields = [int(v) for v in proc_stat.splitlines()[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    total = sum(fields[:8])  # guest time is already counted in user
    return total - idle, total


def own_jiffies(self_stat: str) -> int:
    """User + system ticks of this process (all its threads), from /proc/self/stat's text."""
    after_name = self_stat.rsplit(")", 1)[1].split()  # the name in (...) may hold spaces
    return int(after_name[11]) + int(after_name[12])  # fields 14 and 15: utime, stime


def others_share(start: tuple[int, int, int], end: tuple[int, int, int]) -> float:
    """The share of all cores that other processes kept busy between two (busy, total, own)
    samples: what would slow this benchmark without showing in its own numbers."""
    busy, total, own = (e - s for s, e in zip(start, end, strict=True))
    return max(0.0, (busy - own) / total) if total > 0 else 0.0


def cpu_sample() -> tuple[int, int, int] | None:
    try:
        busy, total = cpu_jiffies(Path("/proc/stat").read_text())
        return busy, total, own_jiffies(Path("/proc/self/stat").read_text())
    except (OSError, IndexError, ValueError):  # not Linux
        return None


def others_during(seconds: float) -> float | None:
    """`others_share` over the next `seconds`, this process idle."""
    start = cpu_sample()
    time.sleep(seconds)
    end = cpu_sample()
    return None if start is None or end is None else others_share(start, end)


def describe_model(path: Path, card) -> str:
    cfg = card.model_config
    net = f"{cfg.get('family', 'resnet')} {cfg.get('block')} {list(cfg.get('layers', []))}"
    return (
        f"`{path}` ({net}, stem {cfg.get('stem')}, unit {cfg.get('variant')}; weights stored "
        f"{card.weights}, compute {card.precision})"
    )


def _share(v: float | None) -> str:
    return "?" if v is None else f"{v:.1%}"


def report(*, when, command, model, gflops, matmul, threads, rounds, rows, notes, others) -> str:
    """`matmul`: {precision: [rates at the start, rates at the end]}."""
    import onnxruntime
    import torch

    try:
        import openvino

        ov = f", openvino {openvino.get_version().split('-')[0]}"
    except ImportError:
        ov = ""
    medians = {p: " / ".join(f"{statistics.median(r):.1f}" for r in m) for p, m in matmul.items()}
    peak_lines = [f"{p} {max(map(max, m)):.1f} (medians {medians[p]})" for p, m in matmul.items()]

    lines = [
        f"## CPU inference, {when:%Y-%m-%d %H:%M} UTC",
        "",
        f"- command: `{command}`",
        f"- machine: {machine()}; other processes' share of the cores (/proc/stat) in the 2 s "
        f"before / during the run: {_share(others[0])} / {_share(others[1])}",
        f"- software: torch {torch.__version__}, onnxruntime {onnxruntime.__version__}{ov}, "
        f"Python {sys.version.split()[0]}; {threads} threads",
        f"- model: {model}: {gflops:.3f} GFLOPs per image (2 × Conv2d and Linear multiply-adds)",
        f"- peaks, GFLOP/s (GOP/s for int8): {'; '.join(peak_lines)}: the fastest call of a "
        f"{PEAK_N}×{PEAK_N} matmul in torch in that precision ({threads} threads), 3 s at the "
        "start and 3 s at the end of the run (the medians' gap is the drift of the machine's "
        'speed); "of peak" = GFLOPs per image × img/s ÷ the peak of the row\'s precision',
        f"- {rounds} rounds, the engines taking turns; img/s = batch ÷ median call over all "
        "rounds, rounds = lowest-highest img/s of a single round; p50/p99 of one batch call, "
        "after a warm-up",
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
    ap = Parser(prog="python -m bench.inference", description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, default=Path("models/model.onnx"), help="fp32 ONNX")
    ap.add_argument("--checkpoint", type=Path, help="training checkpoint: adds the PyTorch row")
    ap.add_argument("--engines", nargs="+", default=list(ENGINES), metavar="ENGINE:PRECISION",
                    help=f"default: {' '.join(ENGINES)}")  # fmt: skip
    ap.add_argument("-b", "--batch", type=int, nargs="+", default=list(BATCHES))
    ap.add_argument("--seconds", type=float, default=12.0, help="timed s per engine and batch")
    ap.add_argument("--rounds", type=int, default=3, help="the engines take turns this often")
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="default: all cores")
    ap.add_argument("--write", type=Path, metavar="MD", help="append the results to this file")
    args = ap.parse_args(argv)
    if min(args.batch) < 1:
        ap.error(f"batch sizes must be >= 1, got {args.batch}")
    if args.seconds <= 0:
        ap.error(f"--seconds must be positive, got {args.seconds}")
    if args.rounds < 1:
        ap.error(f"--rounds must be >= 1, got {args.rounds}")
    if args.threads < 1:
        ap.error(f"--threads must be >= 1, got {args.threads}")
    bad = [e for e in args.engines if e not in ENGINES]
    if bad:
        ap.error(f"unknown engine {bad[0]!r}; valid: {', '.join(ENGINES)}")
    for name in ("model", "checkpoint"):
        path = getattr(args, name)
        if path is not None and not path.is_file():
            ap.error(f"--{name}: no such file: {path}")
    return args


def plan(args: argparse.Namespace, expected: dict) -> tuple[dict, list[str]]:
    """{row name: (predict, precision)} of what can run here, and notes on what is left out."""
    from inference.backend import EngineError

    engines, notes = {}, []
    if args.checkpoint:
        engines["PyTorch eager fp32"] = (
            torch_engine(args.checkpoint, args.threads, expected),
            "fp32",
        )
    else:
        notes.append(
            "PyTorch eager: skipped, no `--checkpoint` (the ONNX weights are folded, so the eager "
            "network cannot be rebuilt from the ONNX file)"
        )
    for spec in args.engines:
        try:
            predict = service_engine(spec, args.model, args.threads, expected)
        except (EngineError, ConfigError) as e:
            notes.append(f"{spec}: skipped ({e})")
            continue
        engines[spec] = (predict, spec.partition(":")[2])
    return engines, notes


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    argv = sys.argv[1:] if argv is None else argv
    command = shlex.join(["python", "-m", "bench.inference", *argv])
    from inference.backend import ModelFileError, read_card
    from training.checkpoint import CheckpointError

    try:
        card = read_card(args.model)  # not one of our exports
        gflops = model_gflops(card)
        engines, notes = plan(args, card.model_config)
    except (ModelFileError, ConfigError, CheckpointError) as e:
        return fail(e)
    predictors = {name: predict for name, (predict, _) in engines.items()}
    precision = {name: p for name, (_, p) in engines.items()}
    needed = sorted(set(precision.values()), key=PRECISIONS.index)
    for n in notes:
        print(f"# {n}")
    others = [others_during(2.0)]
    if others[0] is not None and others[0] > 0.05:
        print(f"# warning: other processes keep {others[0]:.0%} of the cores busy: the figures "
              "will be low and noisy")  # fmt: skip
    start = cpu_sample()
    before = peaks(args.threads, needed)
    shown = {p: round(max(r), 1) for p, r in before.items()}
    print(
        f"# {args.model}: {gflops:.3f} GFLOPs/image; matmul peaks {shown}, {args.threads} threads"
    )
    times = measure(predictors, args.batch, args.seconds, args.rounds)
    del predictors, engines
    gc.collect()  # ONNX Runtime's pool threads spin between runs: let them go first
    end = cpu_sample()
    others.append(None if start is None or end is None else others_share(start, end))
    after = peaks(args.threads, needed)
    matmul = {p: [before[p], after[p]] for p in needed}
    peak = {p: max(map(max, m)) for p, m in matmul.items()}
    print(f"# matmul peaks at the end: { {p: round(max(r), 1) for p, r in after.items()} }")
    rows = [summarize(name, b, t, gflops, peak[precision[name]]) for (name, b), t in times.items()]
    print(format_table(rows))
    if args.write:
        model = describe_model(args.model, card)
        when = datetime.datetime.now(datetime.UTC)
        append(args.write, report(when=when, command=command, model=model, gflops=gflops,
                                  matmul=matmul, threads=args.threads, rounds=args.rounds,
                                  rows=rows, notes=notes, others=others))  # fmt: skip
        print(f"# appended to {args.write}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
