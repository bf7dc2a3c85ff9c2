"""Training and inference speed on a GPU, in one run, as one table.

Training: img/s of a preset's whole `train_step` (augmentation, mixing, forward, backward, SGD,
EMA) on synthetic uint8 batches, as the preset is, then with each speed option flipped alone:
bf16 autocast, channels_last, `torch.compile` (model and loss in one graph), stochastic depth.
given as a share of the bf16 matrix-multiply peak measured in the same run: training FLOPs per
image (3 × the forward's 2·MACs, at the augmented size) × img/s ÷ peak.

Inference of the shipped model's architecture (rebuilt from the ONNX file's card; random weights,
which do not change the speed): eager fp32, eager bf16, compiled bf16, and a CUDA graph of the
compiled bf16 forward, at batch 1, 8, 64 and 256: latency p50/p99 of synchronised calls and img/s.
ONNX Runtime's CUDA provider only where that onnxruntime has it; TensorRT cannot be installed on
the lent machines (its wheels fetch libraries from outside the reachable registries): not run.

    python scripts/gpu/bench_gpu.py [--preset final] [--model models/model.onnx] [--steps 30]
    python scripts/gpu/bench_gpu.py --preset smoke --steps 2 --batches 1 4 --no-compile   # CPU
"""

from __future__ import annotations

import datetime
import platform
import statistics
import sys
import time

import numpy as np
import torch

from common.cli import ConfigError, Parser, fail
from training import presets as P
from training.augment import Augment
from training.models import ModelConfig, build_model
from training.summary import count_macs
from training.train import build_state, make_forward_loss, train_step
from training.warmup import matmul_peak, sync

MEAN, STD = (122.5, 114.3, 101.4), (70.5, 68.6, 71.8)


def timed(fn, dev: torch.device, calls: int, warmup: int = 3) -> list[float]:
    """Seconds of each of `calls` synchronised calls, after `warmup` calls (compilation too)."""
    for _ in range(warmup):
        fn()
    sync(dev)
    out = []
    for _ in range(calls):
        t = time.perf_counter()
        fn()
        sync(dev)
        out.append(time.perf_counter() - t)
    return out


def train_variants(cfg: P.TrainConfig) -> dict[str, P.TrainConfig]:
    """The preset as it is, then each speed option flipped alone."""
    run, model = cfg.run, cfg.model
    flips = {
        f"bf16 {'off' if run.bf16 else 'on'}": P.replace(cfg, run={"bf16": not run.bf16}),
        f"channels_last {'off' if run.channels_last else 'on'}": P.replace(
            cfg, run={"channels_last": not run.channels_last}
        ),
        f"compile {'off' if run.compile else 'on'}": P.replace(
            cfg, run={"compile": not run.compile}, model={"drop_mode": "sample"}
        ),
    }
    if model.survival_last < 1:
        flips["stochastic depth off"] = P.replace(cfg, model={"survival_last": 1.0})
    else:
        flips["stochastic depth on (p_L 0.5)"] = P.replace(cfg, model={"survival_last": 0.5})
    return {"as preset": cfg, **flips}


def bench_train(cfg: P.TrainConfig, dev: torch.device, steps: int) -> tuple[float, float]:
    """(img/s, training FLOPs per image) of the whole train_step under `cfg`."""
    bs = cfg.optim.batch_size
    x = torch.randint(0, 256, (bs, 64, 64, 3), dtype=torch.uint8, device=dev)
    y = torch.randint(0, cfg.model.num_classes, (bs,), device=dev)
    aug = Augment(cfg.augment, MEAN, STD)
    state = build_state(cfg, dev)
    fwd = make_forward_loss(state.model, cfg)
    size = aug(x[:1], state.gen).shape[-1]
    flops = 3 * 2 * count_macs(build_model(cfg.model), size)  # fwd + 2× for bwd
    step = lambda: train_step(state, fwd, aug, x, y, cfg, 0.1)  # noqa: E731
    times = timed(step, dev, steps)
    return bs / statistics.median(times), flops


def inference_fns(net: torch.nn.Module, x: torch.Tensor, dev: torch.device, compile_: bool):
    """name -> a zero-argument forward of `net` on `x` in each execution mode."""

    def bf16():
        return torch.autocast(dev.type, dtype=torch.bfloat16)

    fns = {"eager fp32": lambda: net(x)}

    def eager_bf16():
        with bf16():
            return net(x)

    fns["eager bf16"] = eager_bf16
    if compile_ and dev.type == "cuda":
        comp = torch.compile(net)

        def compiled_bf16():
            with bf16():
                return comp(x)

        fns["compiled bf16"] = compiled_bf16
        fns["CUDA graph, compiled bf16"] = cuda_graph(compiled_bf16, dev)
    return fns


def cuda_graph(fn, dev: torch.device):
    """Capture `fn` (static input) once and replay it: no per-kernel launch cost (batch 1)."""
    s = torch.cuda.Stream(dev)
    s.wait_stream(torch.cuda.current_stream(dev))
    with torch.cuda.stream(s):
        for _ in range(3):  # warm-up on a side stream, as torch.cuda.graphs asks
            fn()
    torch.cuda.current_stream(dev).wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph.replay


def onnxruntime_cuda(model_path: str | None, x: np.ndarray):
    """A forward through ONNX Runtime's CUDA provider, or None (with why) where it is absent."""
    try:
        import onnxruntime as ort
    except ImportError:
        return None, "onnxruntime not installed"
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return None, f"onnxruntime {ort.__version__} has no CUDA provider here"
    if model_path is None:
        return None, "no --model"
    sess = ort.InferenceSession(model_path, providers=["CUDAExecutionProvider"])
    name = sess.get_inputs()[0].name
    return (lambda: sess.run(None, {name: x})), ""


def inference_model(args, cfg: P.TrainConfig) -> torch.nn.Module:
    if args.model:
        from inference.backend import read_card

        mcfg = ModelConfig.from_dict(read_card(args.model).model_config)
    else:
        mcfg = cfg.model
    return build_model(mcfg).eval()


def train_table(args, dev: torch.device, peak: float) -> list[str]:
    rows = [
        "| training, `" + args.preset + "` | img/s | vs as preset | share of peak |",
        "|---|---|---|---|",
    ]
    base = None
    for name, cfg in train_variants(P.get(args.preset)).items():
        if cfg.run.compile and (args.no_compile or dev.type != "cuda"):
            continue  # bench_train compiles on CUDA only: the row would time eager steps
        rate, flops = bench_train(cfg, dev, args.steps)
        base = base or rate
        rows.append(f"| {name} | {rate:,.0f} | {rate / base:.2f}x | {flops * rate / peak:.1%} |")
        print(rows[-1], flush=True)
    return rows


@torch.no_grad()  # also while the CUDA graph is captured
def inference_table(args, dev: torch.device, peak: float) -> list[str]:
    net = inference_model(args, P.get(args.preset))
    flops = 2 * count_macs(net, 64)  # probes on CPU, before the move
    net = net.to(dev).to(memory_format=torch.channels_last)
    rows = [
        "| inference | batch | p50 ms | p99 ms | img/s | share of peak |",
        "|---|---|---|---|---|---|",
    ]
    for batch in args.batches:
        x = torch.randint(0, 256, (batch, 3, 64, 64), device=dev).float()
        x = x.contiguous(memory_format=torch.channels_last)
        fns = inference_fns(net, x, dev, not args.no_compile)
        ort_fn, why = onnxruntime_cuda(args.model, np.zeros((batch, 64, 64, 3), np.uint8))
        if ort_fn is not None:
            fns["ONNX Runtime CUDA fp32"] = ort_fn
        for name, fn in fns.items():
            t = timed(fn, dev, args.calls)
            p50, p99 = np.percentile(t, [50, 99]) * 1e3
            rate = batch / statistics.median(t)
            rows.append(
                f"| {name} | {batch} | {p50:.2f} | {p99:.2f} | {rate:,.0f} | "
                f"{flops * rate / peak:.1%} |"
            )
            print(rows[-1], flush=True)
    rows.append(f"\nONNX Runtime CUDA: {why or 'run'}. TensorRT: not installable here, not run.")
    return rows


def main(argv: list[str] | None = None) -> int:
    p = Parser(prog="python scripts/gpu/bench_gpu.py", description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="final")
    p.add_argument(
        "--model", help="exported ONNX file whose architecture to time (default: the preset's)"
    )
    p.add_argument("--steps", type=int, default=30, help="timed training steps per row")
    p.add_argument("--calls", type=int, default=100, help="timed inference calls per row")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8, 64, 256])
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile rows")
    p.add_argument("--skip-train", action="store_true")
    a = p.parse_args(argv)
    try:
        P.get(a.preset)
    except ConfigError as e:
        return fail(e)
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.backends.cudnn.benchmark = True
    name = torch.cuda.get_device_name() if dev.type == "cuda" else platform.processor() or "cpu"
    peak = matmul_peak(dev)
    head = [
        f"## GPU speed, {datetime.date.today()}: {name}, torch {torch.__version__}",
        "",
        f"`python scripts/gpu/bench_gpu.py --preset {a.preset}"
        + (f" --model {a.model}" if a.model else "")
        + "`; measured "
        f"{'bf16' if dev.type == 'cuda' else 'fp32'} matmul peak {peak / 1e12:.1f} TFLOP/s.",
        "",
    ]
    print("\n".join(head), flush=True)
    body = [] if a.skip_train else [*train_table(a, dev, peak), ""]
    body += inference_table(a, dev, peak)
    print("\n".join(head + body))
    return 0


if __name__ == "__main__":
    sys.exit(main())
