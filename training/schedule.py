"""Learning-rate schedules as pure functions of run progress in [0, 1].

Progress is steps done over total steps, or, under a time budget, the larger of that and the
elapsed share of the budget: the rate then reaches its final value exactly when the time does, so a
run on a GPU of unknown speed still finishes annealed, evaluated and checkpointed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from training.config import ConfigError, check_choice

SCHEDULES = ("constant", "step", "cosine", "onecycle")


@dataclass(frozen=True)
class ScheduleConfig:
    name: str = "cosine"
    lr: float = 0.1  # peak rate, for `batch_size` images per step (see OptimConfig)
    warmup: float = 0.0  # share of the run spent ramping linearly from 0 to `lr`
    # step: multiply by `gamma` at each milestone (shares of the run). Sun §4 anneals the vanilla
    # ResNet-34 once, at iteration 10,000 of 15,000: milestone 2/3.
    milestones: tuple[float, ...] = (0.5, 0.75)
    gamma: float = 0.1
    final: float = 0.0  # cosine/onecycle end value as a share of `lr`
    # Progressive resizing (the ffcv ImageNet recipes): train at `low_res` px until this share of
    # the run, then at the full 64 px. 0 = off. Evaluation and serving always see 64 px.
    low_res: int = 0
    low_res_until: float = 0.0

    def __post_init__(self):
        check_choice("schedule", self.name, SCHEDULES)
        if not 0 <= self.warmup < 1:
            raise ConfigError(f"warmup must be a share of the run in [0, 1), got {self.warmup}")
        if self.low_res < 0 or not 0 <= self.low_res_until <= 1:
            raise ConfigError(
                f"low_res must be >= 0 px and low_res_until a share in [0, 1], got "
                f"{self.low_res}, {self.low_res_until}"
            )


def lr_at(cfg: ScheduleConfig, progress: float) -> float:
    """The learning rate at `progress` (0 = start, 1 = end of the run)."""
    t = min(max(progress, 0.0), 1.0)
    if cfg.name == "onecycle":
        # Linear up for `warmup` (0.3 if unset, as in Smith's one-cycle), then linear down.
        up = cfg.warmup or 0.3
        if t < up:
            return cfg.lr * t / up
        return cfg.lr * (1 - (1 - cfg.final) * (t - up) / (1 - up))
    if cfg.warmup and t < cfg.warmup:
        return cfg.lr * t / cfg.warmup
    if cfg.name == "constant":
        return cfg.lr
    if cfg.name == "step":
        return cfg.lr * cfg.gamma ** sum(t >= m for m in cfg.milestones)
    # cosine, from the end of warm-up to the end of the run
    s = (t - cfg.warmup) / (1 - cfg.warmup)
    return cfg.lr * (cfg.final + (1 - cfg.final) * 0.5 * (1 + math.cos(math.pi * s)))


def image_size_at(cfg: ScheduleConfig, progress: float, full: int) -> int:
    """The training image side at `progress`: `low_res` until `low_res_until`, then `full`."""
    if cfg.low_res and progress < cfg.low_res_until:
        return cfg.low_res
    return full


def image_sizes(cfg: ScheduleConfig, full: int) -> tuple[int, ...]:
    """Every side the run trains at, in order (what a warm-up compiles before the data comes)."""
    return (cfg.low_res, full) if cfg.low_res and cfg.low_res_until > 0 else (full,)
