"""What a preset's training step should run at on a GPU, from arithmetic a CPU can check.

    python -m training.throughput --preset final        # H200 defaults; --peak-tflops, ...

Per training image: FLOPs = 3 × the forward's 2·MACs (backward ≈ twice the forward), at each
image side of the schedule, less the share stochastic depth skips (drop mode 'batch' only: a
per-sample mask computes every branch). Bytes moved per step: every layer's output in bf16
written once forward and read back once for the backward, its gradient written and read once
(4 passes), plus the weights, gradients and SGD momentum in fp32 (weights read twice, gradient
written and read, momentum read and written, weights written: 7 passes) and the uint8 batch.
The prediction is the slower of the two ceilings: FLOPs at `share` of the measured bf16 peak, and
bytes at `bw_share` of the memory bandwidth. The lease measures the real figure against it
(speed.json from the trainer's warm-up).
"""

from __future__ import annotations

import sys

from torch import nn

from common.cli import Parser, fail
from training import presets as P
from training.config import ConfigError, parse_overrides
from training.models import ResidualBlock, build_model, residual_blocks
from training.schedule import image_size_at
from training.summary import _probe, count_macs, param_count

# H200 (SXM, 141 GB): an 8192³ bf16 matmul ran 770-800 TFLOP/s on the lent one (989 is the
# sheet's dense figure); HBM3e 4.8 TB/s on the sheet.
H200_BF16_TFLOPS = 780.0
H200_TBPS = 4.8
TRAIN_IMAGES = 100_000


def activation_elements(model: nn.Module, size: int) -> int:
    """Elements of every leaf layer's output for one size×size image (what a step stores)."""
    total = 0

    def hook(m, inputs, out):
        nonlocal total
        total += out.numel()

    leaves = [
        m for m in model.modules() if not list(m.children()) and not isinstance(m, nn.Identity)
    ]
    _probe(model, size, [(m, hook) for m in leaves])
    return total


def skipped_share(model: nn.Module, size: int) -> float:
    """Expected share of the forward's MACs that dropping whole blocks skips: Σ (1 − p_l)·MACs_l
    over the blocks' branches, ÷ all MACs. Zero in drop mode 'sample' (masked, still computed)."""
    blocks = [b for b in residual_blocks(model) if b.survival < 1.0 and b.drop.mode == "batch"]
    if not blocks:
        return 0.0
    macs = {}

    def hook_for(block: ResidualBlock):
        def hook(m, inputs, out):
            w = m.weight
            macs[block] = macs.get(block, 0) + out.numel() * w[0].numel()

        return hook

    hooks = [
        (conv, hook_for(b))
        for b in blocks
        for conv in b.branch.modules()
        if isinstance(conv, nn.Conv2d)
    ]
    _probe(model, size, hooks)
    return sum((1 - b.survival) * macs[b] for b in blocks) / count_macs(model, size)


def step_model(cfg: P.TrainConfig, size: int, batch: int | None = None) -> dict:
    """FLOPs and bytes of one training step of `cfg` at `size` px."""
    model = build_model(cfg.model)
    batch = batch or cfg.optim.batch_size
    flops_img = 3 * 2 * count_macs(model, size) * (1 - skipped_share(model, size))
    act_bytes = 4 * 2 * activation_elements(model, size)  # bf16, 4 passes
    weight_bytes = 7 * 4 * param_count(model)  # fp32, 7 passes, once per step
    return {
        "size": size,
        "flops_per_image": flops_img,
        "flops_per_step": flops_img * batch,
        "bytes_per_step": act_bytes * batch + weight_bytes + batch * 64 * 64 * 3,
        "skipped_share": skipped_share(model, size),
    }


def predict(
    cfg: P.TrainConfig,
    peak_tflops: float = H200_BF16_TFLOPS,
    share: float = 0.4,
    tbps: float = H200_TBPS,
    bw_share: float = 0.6,
    minutes: float | None = None,
) -> dict:
    """img/s at each image side, the schedule's average, and the epochs in `minutes`."""
    rows = []
    sizes = sorted({image_size_at(cfg.schedule, t / 100, 64) for t in range(100)})
    for size in sizes:
        m = step_model(cfg, size)
        compute = share * peak_tflops * 1e12 / m["flops_per_image"]
        memory = bw_share * tbps * 1e12 * cfg.optim.batch_size / m["bytes_per_step"]
        rows.append({**m, "compute_img_s": compute, "memory_img_s": memory,
                     "img_s": min(compute, memory)})  # fmt: skip
    # The run's average: time-weighted over the schedule's shares at each side (the clock drives
    # progress, so each side gets its share of the minutes, not of the images).
    weight = {s: sum(image_size_at(cfg.schedule, t / 100, 64) == s for t in range(100)) / 100
              for s in sizes}  # fmt: skip
    img_s = sum(weight[r["size"]] * r["img_s"] for r in rows)
    minutes = minutes if minutes is not None else (cfg.run.time_limit or 0.0)
    train_images = TRAIN_IMAGES - cfg.data.holdout
    return {"rows": rows, "weights": weight, "img_s": img_s, "minutes": minutes,
            "epochs": img_s * minutes * 60 / train_images}  # fmt: skip


def report(name: str, cfg: P.TrainConfig, p: dict, peak: float, share: float) -> str:
    lines = [
        f"{name}: {cfg.model.block} ResNet {cfg.model.layers}, stem {cfg.model.stem}, batch "
        f"{cfg.optim.batch_size}, drop mode {cfg.model.drop_mode}; at {share:.0%} of "
        f"{peak:g} TFLOP/s bf16",
    ]
    for r in p["rows"]:
        lines.append(
            f"  {r['size']} px ({p['weights'][r['size']]:.0%} of the time): "
            f"{r['flops_per_image'] / 1e9:.2f} GFLOP/img (train; "
            f"{r['skipped_share']:.1%} skipped), {r['flops_per_step'] / 1e12:.2f} TFLOP and "
            f"{r['bytes_per_step'] / 1e9:.2f} GB per step -> compute "
            f"{r['compute_img_s']:,.0f} img/s, memory {r['memory_img_s']:,.0f} img/s"
        )
    lines.append(
        f"predicted: {p['img_s']:,.0f} img/s; {p['minutes']:g} min = "
        f"{p['img_s'] * p['minutes'] * 60 / 1e6:.1f} M images = {p['epochs']:.0f} epochs"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = Parser(prog="python -m training.throughput", description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="final", help="a name from training.train --list-presets")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    p.add_argument("--peak-tflops", type=float, default=H200_BF16_TFLOPS,
                   help="measured bf16 matmul peak (default: the lent H200's)")  # fmt: skip
    p.add_argument(
        "--share",
        type=float,
        nargs="+",
        default=[0.4, 0.18],
        help="shares of the peak a step reaches (default: 40%%, and 18%%, what MLPerf-class "
        "ResNet-50 training reaches on an H100: ~180 of 989 TFLOP/s)",
    )
    p.add_argument("--tbps", type=float, default=H200_TBPS, help="memory bandwidth, TB/s")
    p.add_argument("--minutes", type=float, help="training minutes (default: run.time_limit)")
    args = p.parse_args(argv)
    try:
        cfg = P.get(args.preset, **parse_overrides(args.set))
        for share in args.share:
            pred = predict(cfg, args.peak_tflops, share, args.tbps, minutes=args.minutes)
            print(report(args.preset, cfg, pred, args.peak_tflops, share))
    except ConfigError as e:
        return fail(e)
    return 0


if __name__ == "__main__":
    sys.exit(main())
