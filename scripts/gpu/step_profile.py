"""Where a training step of a preset spends its time on the GPU: augmentation alone, the model's
SGD step alone (eager, then compiled per branch), and the whole `train_step`, on synthetic uint8
batches (no data needed). Prints img/s medians of timed windows after a warm-up.

    python scripts/gpu/step_profile.py [PRESET=final] [--steps 30] [--no-compile]
"""

from __future__ import annotations

import statistics
import sys
import time

import torch

from common.cli import ConfigError, Parser, fail
from training import presets as P
from training.augment import Augment, AugmentConfig
from training.models import compile_branches
from training.train import build_state, train_step


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def rate(fn, batch: int, steps: int, windows: int = 3) -> float:
    for _ in range(3):  # warm-up (and compilation)
        fn()
    sync()
    out = []
    for _ in range(windows):
        t = time.perf_counter()
        for _ in range(steps):
            fn()
        sync()
        out.append(batch * steps / (time.perf_counter() - t))
    return statistics.median(out)


def main(argv: list[str] | None = None) -> int:
    p = Parser(prog="python scripts/gpu/step_profile.py", description=__doc__.split("\n")[0])
    p.add_argument("preset", nargs="?", default="final")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--no-compile", action="store_true")
    a = p.parse_args(argv)
    try:
        cfg = P.get(a.preset)
    except ConfigError as e:
        return fail(e)
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    bs = cfg.optim.batch_size
    x = torch.randint(0, 256, (bs, 64, 64, 3), dtype=torch.uint8, device=dev)
    y = torch.randint(0, cfg.model.num_classes, (bs,), device=dev)
    mean, std = (122.5, 114.3, 101.4), (70.5, 68.6, 71.8)
    aug = Augment(cfg.augment, mean, std)
    gen = torch.Generator(device=dev).manual_seed(0)
    name = torch.cuda.get_device_name() if dev.type == "cuda" else "cpu"
    print(f"{a.preset}: batch {bs}, {name}, torch {torch.__version__}")
    print(f"augment only    {rate(lambda: aug(x, gen), bs, a.steps):8.0f} img/s")
    none = Augment(AugmentConfig(preset="none"), mean, std)
    state = build_state(cfg, dev)
    fwd = state.model
    step = lambda f, au: train_step(state, f, au, x, y, cfg, 0.1)  # noqa: E731
    print(f"step, eager     {rate(lambda: step(fwd, none), bs, a.steps):8.0f} img/s (no augment)")
    if not a.no_compile and dev.type == "cuda":
        compile_branches(state.model)
        print(
            f"step, compiled  {rate(lambda: step(fwd, none), bs, a.steps):8.0f} img/s (no augment)"
        )
    print(f"full train_step {rate(lambda: step(fwd, aug), bs, a.steps):8.0f} img/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
