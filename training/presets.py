"""Named training presets, each citing the experiment it reproduces. One file, on purpose.

`get(name, **overrides)` returns a frozen `TrainConfig`; overrides are nested dicts
(`get("final", optim={"batch_size": 256})`) and unknown keys fail with the valid ones listed.

The papers: "Sun" is L. Sun, "ResNet on Tiny ImageNet" (ResNet-34, stochastic depth, heavy
augmentation); "Ebrahimi & Abadi" is "Study of Residual Networks for Image Recognition" (Nets 1-6).
Where a paper does not state a hyperparameter (learning rate, weight decay, the iterations of its
improved models) we use He et al.'s ImageNet values (SGD, momentum 0.9, lr 0.1 for batch 256
scaled linearly, weight decay 1e-4) and say so beside the preset.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from training.augment import AugmentConfig
from training.config import ConfigError, replace
from training.models import ModelConfig
from training.models import get_config as arch
from training.schedule import ScheduleConfig


@dataclass(frozen=True)
class DataConfig:
    classes: int | None = None  # first K classes of wnids.txt (None: all 200)
    per_class: int | None = None  # at most M images per class and split (None: all)


@dataclass(frozen=True)
class OptimConfig:
    batch_size: int = 128
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 1e-4
    no_decay_bn_bias: bool = False
    label_smoothing: float = 0.0
    mixup: float = 0.0  # Beta(α, α) of mixup; 0 = off
    cutmix: float = 0.0  # Beta(α, α) of cutmix; 0 = off
    mix_prob: float = 1.0  # share of batches mixed when mixup or cutmix is on
    ema: float = 0.0  # decay of the weight average per step; 0 = off


@dataclass(frozen=True)
class RunConfig:
    epochs: float = 30.0
    time_limit: float | None = None  # minutes; the schedule then follows the clock
    seed: int = 0
    # autocast: 2x on CUDA and on AVX-512-BF16 CPUs (385 vs 206 img/s on one). Where bf16 is not
    # native, train.resolve_bf16 runs fp32 instead, with a warning: emulated, it was ~15x slower.
    bf16: bool = True
    channels_last: bool = True
    # CUDA only: per-branch torch.compile (training/models.py). Off by default: on one H100
    # (torch 2.11) the `final` SGD step ran 11,775 img/s eager and 6,376 compiled per branch
    # (scripts/gpu/step_profile.py, README), and compiling costs a minute of the budget.
    compile: bool = False
    checkpoint_minutes: float = 5.0  # `last.pt` at least this often, and at each epoch's end
    eval_batch_size: int = 500


@dataclass(frozen=True)
class TrainConfig:
    model: ModelConfig
    augment: AugmentConfig = field(default_factory=lambda: AugmentConfig(preset="none"))
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    run: RunConfig = field(default_factory=RunConfig)


def _sun(model: ModelConfig, augment: str, iterations: int, milestones) -> TrainConfig:
    # Sun §3.1: batches of 100 images; lr 0.1·100/256 ≈ 0.04 by He et al.'s linear rule.
    return TrainConfig(
        model=model,
        augment=AugmentConfig(preset=augment),
        optim=OptimConfig(batch_size=100, weight_decay=1e-4),
        schedule=ScheduleConfig(name="step", lr=0.04, milestones=milestones),
        run=RunConfig(epochs=iterations * 100 / 100_000),
    )


def _sun_improved(name: str, variant: str) -> TrainConfig:
    # Sun §5.4: the improved model (stochastic depth p_L = 0.5, §5.1; mean subtraction and flip,
    # §5.2) with units (c) or (e) of its Figure 9. Iterations are not stated: 30,000 (30 epochs),
    # annealed at 2/3 like the vanilla run.
    return _sun(arch(name, variant=variant, survival_last=0.5), "basic", 30_000, (2 / 3, 8 / 9))


def _ebrahimi(net: int) -> TrainConfig:
    # Ebrahimi & Abadi Table 1, trained with flip + 56-px crop (§4.2) and dropout in each basic
    # block (§4.1, Figure 3). Epochs and optimiser are not stated ("the same number of epochs"):
    # 30 epochs of SGD, cosine.
    return TrainConfig(
        model=arch(f"ebrahimi-net{net}"),
        augment=AugmentConfig(preset="ebrahimi"),
        optim=OptimConfig(batch_size=128, weight_decay=5e-4),
        schedule=ScheduleConfig(name="cosine", lr=0.05),
        run=RunConfig(epochs=30),
    )


def _ebrahimi_shallow(name: str) -> TrainConfig:
    # Ebrahimi & Abadi §5, Figures 6-7 (on CIFAR-10 there; CIFAR-10 cannot be downloaded here, so
    # on Tiny ImageNet): Table 1's training (flip + 56-px crop, dropout 0.5 in each block) on the
    # shallow nets of training/models.py. Epochs are not stated: 10, which a 2-core CPU runs in
    # about half an hour per net (~500 img/s under bf16 on AMX); the rest as `_ebrahimi`.
    return replace(_ebrahimi(1), model=arch(name), run={"epochs": 10})


PRESETS: dict[str, tuple[str, TrainConfig]] = {
    "sun-vanilla-resnet34": (
        "Sun §4, Figure 5: vanilla ResNet-34, no augmentation, 15,000 iterations of batch 100, "
        "annealed at 10,000 (paper: 48% val error)",
        _sun(arch("resnet34"), "none", 15_000, (2 / 3,)),
    ),
    "sun-improved-resnet34": (
        "Sun §5.3, Figure 8: + stochastic depth (p_L = 0.5) and mean subtraction + flip "
        "(paper: 43.7% val error)",
        _sun_improved("resnet34", "a"),
    ),
    **{
        f"sun-{name}-{v}": (
            f"Sun §5.4, Figures 9-10: improved {name} with unit ({v})",
            _sun_improved(name, v),
        )
        for name in ("resnet18", "resnet34", "resnet50")
        for v in ("c", "e")
    },
    "sun-final-resnet34": (
        "Sun §6-7, Figure 13: full pre-activation (e), stochastic depth, heavy augmentation, "
        "70,000 iterations of batch 100; plateau at 40,000 (paper: 34.68% val error)",
        _sun(arch("resnet34", variant="e", survival_last=0.5), "heavy", 70_000, (4 / 7, 6 / 7)),
    ),
    **{
        f"ebrahimi-net{n}": (
            f"Ebrahimi & Abadi Table 1, Net {n}"
            + (" (the plain ConvNet twin of Net 1)" if n == 6 else ""),
            _ebrahimi(n),
        )
        for n in range(1, 7)
    },
    **{
        f"ebrahimi-{kind}{n}": (
            f"Ebrahimi & Abadi §5, Figure {6 if n == 7 else 7}: the {n}-layer "
            + ("ResNet" if kind == "resnet" else "plain ConvNet twin")
            + " (paper, on CIFAR-10: "
            + ("the ResNet is worse than the ConvNet" if n == 7 else "ResNet and ConvNet alike")
            + ")",
            _ebrahimi_shallow(f"ebrahimi-{kind}{n}"),
        )
        for n in (7, 9)
        for kind in ("resnet", "convnet")
    },
    "final": (
        "Ours, for the shipped model: ResNet-34 (e) with the 3x3 stem + max-pool (32x32 maps), "
        "stochastic depth, heavy augmentation, label smoothing, cutmix/mixup, EMA, one-cycle; "
        "sized for 20 minutes of one H100 (goal: >= 70% val top-1)",
        TrainConfig(
            model=arch("resnet34", variant="e", stem="small", survival_last=0.8),
            augment=AugmentConfig(preset="heavy"),
            optim=OptimConfig(
                batch_size=256,
                nesterov=True,
                weight_decay=5e-4,
                no_decay_bn_bias=True,
                label_smoothing=0.1,
                mixup=0.2,
                cutmix=1.0,
                mix_prob=0.5,
                ema=0.999,
            ),
            # Peak lr 0.2: at 0.4 the EMA weights' val error swung 72% -> 96% -> 72% while the
            # peak lasted; at 0.2 the curve is smooth (docs/LOG.md).
            schedule=ScheduleConfig(name="onecycle", lr=0.2, warmup=0.15),
            # Anneals to whichever ends first, 120 epochs or 20 minutes: one H100 ran 8,600 to
            # 12,900 img/s eager, where 120 epochs take 23 to 15.5 minutes.
            run=RunConfig(epochs=120, time_limit=20),
        ),
    ),
    "cpu-baseline": (
        "Ours: ResNet-18 with the ImageNet stem (16x16 maps, the cheapest), basic augmentation, "
        "one-cycle, bf16; learns the real data on 2 CPU cores in 45 minutes",
        TrainConfig(
            model=arch("resnet18"),
            augment=AugmentConfig(preset="basic"),
            optim=OptimConfig(
                batch_size=128, nesterov=True, weight_decay=5e-4, label_smoothing=0.1
            ),
            schedule=ScheduleConfig(name="onecycle", lr=0.2, warmup=0.2),
            run=RunConfig(epochs=10, time_limit=40),
        ),
    ),
    "smoke": (
        "Seconds on CPU, for tests and rehearsals: a narrow ResNet-10 on a 4-class subset",
        TrainConfig(
            model=arch("resnet18", layers=(1, 1, 1, 1), widths=(8, 16, 32, 64)),
            augment=AugmentConfig(preset="heavy"),
            data=DataConfig(classes=4, per_class=12),
            optim=OptimConfig(batch_size=8),
            schedule=ScheduleConfig(name="cosine", lr=0.05),
            run=RunConfig(epochs=2, bf16=False, checkpoint_minutes=0.0),
        ),
    ),
}


def get(name: str, **overrides) -> TrainConfig:
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; valid: {', '.join(PRESETS)}")
    return replace(PRESETS[name][1], **overrides) if overrides else PRESETS[name][1]


def describe() -> str:
    width = max(map(len, PRESETS))
    return "\n".join(f"{name:<{width}}  {doc}" for name, (doc, _) in PRESETS.items())
