"""Work a trainer does before its data has arrived: compile, and measure what the device can do.

On a lent GPU the data comes in the second and third calls of the lease, about a minute after
the trainer starts (scripts/gpu/README.md). That minute compiles the training step for every
image side of the schedule on synthetic batches (so no compile falls inside the time budget) and
times a few steps of the run as configured and with one setting flipped at a time, against the
device's measured bf16 matmul peak. Nothing here touches the run's weights, optimizer or random
streams: `warm_up` puts them back as they were.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable

import torch

from training.summary import count_macs


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak(device: torch.device, n: int | None = None, iters: int = 10) -> float:
    """Measured bf16 matmul FLOP/s on `device` (an n×n×n product, the best of `iters`)."""
    n = n or (8192 if device.type == "cuda" else 1024)
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    best = float("inf")
    for i in range(iters + 2):
        sync(device)
        t0 = time.perf_counter()
        a @ b
        sync(device)
        if i >= 2:  # two warm-up products
            best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


def synthetic_batch(batch: int, device: torch.device, seed: int = 0) -> torch.Tensor:
    """Random uint8 images (batch, 64, 64, 3), like the training set's layout."""
    g = torch.Generator(device).manual_seed(seed)
    return torch.randint(0, 256, (batch, 64, 64, 3), dtype=torch.uint8, device=device, generator=g)


def images_per_second(step: Callable[[], None], batch: int, device, warm: int, steps: int) -> float:
    """Time `steps` calls of `step` after `warm` untimed ones, synchronised around the timing."""
    for _ in range(warm):
        step()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    return batch * steps / (time.perf_counter() - t0)


def train_flops(model: torch.nn.Module, size: int) -> float:
    """FLOPs of one training image at `size` px: forward 2·MACs, backward twice that (all blocks
    counted; stochastic depth per sample masks a branch, it does not skip it)."""
    return 3 * 2 * count_macs(model, size)


class Snapshot:
    """The weights, EMA, optimizer state and random streams of a run, put back on exit."""

    def __init__(self, state):
        self.state = state

    def __enter__(self):
        s = self.state
        self.model = copy.deepcopy(_unwrap(s.model).state_dict())
        self.ema = copy.deepcopy(s.ema.state_dict()) if s.ema is not None else None
        self.opt = copy.deepcopy(s.opt.state_dict())
        self.rng = torch.get_rng_state()
        self.cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
        self.gen = s.gen.get_state()
        return self

    def __exit__(self, *exc):
        s = self.state
        _unwrap(s.model).load_state_dict(self.model)  # in place: compiled graphs stay valid
        if s.ema is not None:
            s.ema.load_state_dict(self.ema)
        s.opt.load_state_dict(self.opt)
        torch.set_rng_state(self.rng)
        if self.cuda is not None:
            torch.cuda.set_rng_state_all(self.cuda)
        s.gen.set_state(self.gen)


def _unwrap(model):
    return getattr(model, "module", model)


def warm_up(state, step_at: Callable[[int], None], sizes, device, steps: int = 5) -> dict:
    """Compile the step for each image side in `sizes` and time it; the run's state is left as
    it was. Returns {size: img/s} and the seconds the first step of each side took (its
    compile)."""
    out = {"img_per_s": {}, "first_step_s": {}}
    with Snapshot(state):
        for size in sizes:
            sync(device)
            t0 = time.perf_counter()
            batch = step_at(size)
            sync(device)
            out["first_step_s"][size] = round(time.perf_counter() - t0, 2)
            rate = images_per_second(lambda s=size: step_at(s), batch, device, 1, steps)
            out["img_per_s"][size] = round(rate, 1)
    return out
