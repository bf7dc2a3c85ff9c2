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
    # Images held out of train (a seeded random slice) and evaluated each epoch for the curves and
    # best.pt; val is then evaluated once, at the end, so nothing is selected on it. 0: the
    # seeds' way, val each epoch.
    holdout: int = 0


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
    # torch.compile of the model and loss as one graph (fullgraph: a graph break is an error),
    # forward and backward; needs model.drop_mode 'sample' with stochastic depth. Off by default:
    # on a CPU compiling costs more than a seed's run gains, and per-branch compiling once
    # halved an H100's speed (11,775 -> 6,376 img/s, docs/LOG.md 2026-11-23).
    compile: bool = False
    compile_mode: str = "default"  # torch.compile's: default, reduce-overhead (CUDA graphs), ...
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
        "per-sample stochastic depth, heavy augmentation, label smoothing, EMA, linear decay to "
        "zero, 56 then 64 px, one compiled graph; sized for 8 minutes of one H200 (goal: >= 70% "
        "val top-1)",
        TrainConfig(
            # Sun §6-7's model (unit (e), stochastic depth) with 4x the maps of his stem. Drop
            # per sample: one graph under torch.compile (ModelConfig.drop_mode).
            model=arch(
                "resnet34", variant="e", stem="small", survival_last=0.8, drop_mode="sample"
            ),
            augment=AugmentConfig(preset="heavy"),  # Sun §6
            # Curves and best.pt from 2,500 images held out of train; val is read once, at the end.
            data=DataConfig(holdout=2_500),
            optim=OptimConfig(
                # Batch 1024 with the learning rate scaled linearly (Goyal et al. 2017, as the ffcv
                # ImageNet ResNet recipes train): a quarter of the steps of batch 256, so a quarter
                # of the per-step launch and optimizer cost.
                batch_size=1024,
                nesterov=True,
                weight_decay=5e-4,
                no_decay_bn_bias=True,
                # Label smoothing and weight averaging pay at short budgets. No mixup or CutMix:
                # their gains are measured at 200-400 epochs (Zhang et al. 2018; Yun et al. 2019)
                # and at ~90 they cost ResNet-50 1-2 points; ~100 epochs here, where Sun's heavy
                # augmentation and stochastic depth already regularise.
                label_smoothing=0.1,
                ema=0.997,  # a half-life of ~2.4 epochs at 95 steps an epoch
            ),
            # 0.2 per 256 images (the 2026-11-23 run: 0.4 swung the EMA's val error) × 4. Linear
            # decay to zero at the end of the budget (Li et al., "Budgeted Training", ICLR 2020)
            # after a 10% warm-up; 56 px for the first 75% of the time, then 64 (progressive
            # resizing as in the ffcv recipes; the test side then exceeds the train side, which
            # Touvron et al.'s "FixRes" finds helps with random-resized crops).
            schedule=ScheduleConfig(
                name="onecycle", lr=0.8, warmup=0.1, low_res=56, low_res_until=0.75
            ),
            # The clock ends the run (8 minutes: scripts/gpu/lease.py's plan), annealed exactly
            # then; 200 epochs is only a bound.
            run=RunConfig(epochs=200, time_limit=8, compile=True),
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
