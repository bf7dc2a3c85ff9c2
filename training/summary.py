"""What a network costs: parameters, multiply-accumulates (GFLOPs), a layer table, and the list
of every named architecture with its stem, depth and stochastic-depth expectation.

    python -m training.summary --list       # every architecture: params, GFLOPs at 64×64
    python -m training.summary resnet34     # its layer table (--set stem=cifar to change a field)

Kept beside training/models.py, which holds only the networks: this module probes them with
forward hooks and is what the export reads the GFLOPs for its model card from.
"""

from __future__ import annotations

import dataclasses
import sys

import torch
from torch import nn

from common.cli import Parser, fail
from training.config import ConfigError, parse_overrides
from training.models import (
    ARCHITECTURES,
    IMAGE_SIZE,
    Net,
    PadShortcut,
    ResidualBlock,
    build_model,
    depth_stats,
)


def param_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _probe(model: nn.Module, size: int, hooks) -> None:
    """One eval forward of a 1×3×size×size zero image with forward hooks, state restored."""
    handles = [m.register_forward_hook(hook) for m, hook in hooks]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, 3, size, size))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()


def count_macs(model: nn.Module, size: int = IMAGE_SIZE) -> int:
    """Multiply-accumulates of Conv2d and Linear layers for one size×size image (all blocks on)."""
    macs = 0

    def hook(m, inputs, out):
        nonlocal macs
        if isinstance(m, nn.Conv2d):
            macs += out.numel() * m.weight[0].numel()  # per output: Cin/groups × kh × kw
        else:
            macs += m.in_features * m.out_features

    _probe(
        model, size, [(m, hook) for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    )
    return macs


def layer_table(model: nn.Module, size: int = IMAGE_SIZE) -> list[dict]:
    """Every leaf layer and every block, in forward order: name, type, output shape, params."""
    rows, hooks, pre = [], [], []
    for name, m in model.named_modules():
        if isinstance(m, ResidualBlock | PadShortcut) or not list(m.children()):
            row = {"name": name, "type": type(m).__name__, "shape": None, "params": param_count(m)}
            if isinstance(m, ResidualBlock):
                row["type"] = f"ResidualBlock p={m.survival:.3f}"
            # Rows in call order (a block before its layers), shapes filled in after the call.
            pre.append(m.register_forward_pre_hook(lambda *_, row=row: rows.append(row)))
            hooks.append((m, lambda _m, _i, out, row=row: row.update(shape=tuple(out.shape))))
    try:
        _probe(model, size, hooks)
    finally:
        for h in pre:
            h.remove()
    return rows


def stem_size(model: Net, size: int = IMAGE_SIZE) -> int:
    """The side of the maps the body sees (16 for the imagenet stem at 64 px)."""
    with torch.no_grad():
        return model.stem.eval()(torch.zeros(1, 3, size, size)).shape[-1]


# --- CLI ---------------------------------------------------------------------------------------


def list_rows(names=None, size: int = IMAGE_SIZE) -> list[dict]:
    rows = []
    for name in names or ARCHITECTURES:
        cfg = ARCHITECTURES[name]
        model = build_model(cfg)
        stats = depth_stats(model)
        side = stem_size(model, size)
        rows.append({
            "name": name,
            "params": param_count(model),
            "gflops": 2 * count_macs(model, size) / 1e9,
            "stem": cfg.stem if cfg.family == "resnet" else "spec",
            "after_stem": f"{side}×{side}",
            "depth": int(stats["depth"]),
            "blocks": int(stats["blocks"]),
            "active": (stats["expected_active_blocks"], stats["expected_active_depth"]),
        })  # fmt: skip
    return rows


def format_list(rows: list[dict], size: int = IMAGE_SIZE) -> str:
    lines = [
        f"{'name':<15} {'params':>8} {'GFLOPs':>7} {'stem':<9} {'maps':>6} {'depth':>5} "
        f"{'blocks':>6}  E[active blocks/depth]",
    ]
    for r in rows:
        blocks, depth = r["active"]
        active = f"{blocks:.2f} / {depth:.1f}" if blocks < r["blocks"] else "all"
        lines.append(
            f"{r['name']:<15} {r['params'] / 1e6:>7.2f}M {r['gflops']:>7.3f} {r['stem']:<9} "
            f"{r['after_stem']:>6} {r['depth']:>5} {r['blocks']:>6}  {active}"
        )
    lines.append(
        f"GFLOPs = 2 × multiply-accumulates of Conv2d and Linear for one {size}×{size} image; "
        "maps = spatial size after the stem."
    )
    return "\n".join(lines)


def format_table(model: nn.Module, size: int = IMAGE_SIZE) -> str:
    rows = layer_table(model, size)
    width = max(len(r["name"]) for r in rows)
    lines = [f"{'layer':<{width}}  {'type':<24} {'output':<18} {'params':>10}"]
    for r in rows:
        shape = "×".join(map(str, r["shape"][1:])) if r["shape"] else "-"
        lines.append(f"{r['name']:<{width}}  {r['type']:<24} {shape:<18} {r['params']:>10,}")
    macs = count_macs(model, size)
    lines.append(
        f"total: {param_count(model):,} parameters, {2 * macs / 1e9:.3f} GFLOPs at {size}×{size}"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = Parser(prog="python -m training.summary", description=__doc__.split("\n")[0])
    p.add_argument("name", nargs="?", help="an architecture: print its layer table")
    p.add_argument("--list", action="store_true", help="every architecture, params and GFLOPs")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a ModelConfig field: stem=cifar, layers=[1,1,1,1]")  # fmt: skip
    p.add_argument("--size", type=int, default=IMAGE_SIZE, help="input side in pixels")
    args = p.parse_args(argv)
    if not args.list and not args.name:
        p.error("give --list or an architecture name")
    try:
        if args.list:
            print(format_list(list_rows(size=args.size), args.size))
        if args.name:
            model = build_model(args.name, **parse_overrides(args.set))
            print(f"{args.name}: {dataclasses.asdict(model.config)}")
            print(format_table(model, args.size))
    except ConfigError as e:
        return fail(e)
    return 0


if __name__ == "__main__":
    sys.exit(main())
