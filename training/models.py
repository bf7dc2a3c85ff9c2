"""The networks of the two papers this project reproduces: ResNet-18/34/50 with the unit variants
and stochastic depth of Sun, "ResNet on Tiny ImageNet", the Table 1 nets of Ebrahimi & Abadi,
"Study of Residual Networks for Image Recognition", and the plain-ConvNet twin of any of them.

    build_model("resnet34", variant="e")     # a registered architecture, fields overridden
    python -m training.summary --list        # every architecture: params, GFLOPs at 64×64

A network is `stem` → `body` → `head`. Every residual unit is a `ResidualBlock` holding

    branch    a Chain of conv / bn / relu / dropout: the residual function f, pre-activation
              included for units (d) and (e)
    shortcut  nn.Identity, a projection Chain(conv 1×1, bn), a PadShortcut (average pooling plus
              zero channels, Ebrahimi & Abadi §2), or None in a plain twin
    post      what follows the addition: ReLU (a), BN-ReLU (b), nn.Identity (c, d, e)
    survival  p_l, a float. At test time out = post(shortcut(x) + p_l·branch(x)), so the export
              stage can fold p_l into the branch's last conv (through its BN, and through a
              trailing ReLU in (c), since p_l > 0).

Eval mode has no randomness and no data-dependent Python, so it traces and exports cleanly.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from training.config import ConfigError, check_choice, from_dict, replace
from training.regularizers import drop_path
from training.stochastic_depth import (
    expected_active_blocks,
    expected_active_depth,
    survival_probabilities,
)

IMAGE_SIZE = 64  # Tiny ImageNet; the spec nets size their classifier for it
FAMILIES = ("resnet", "spec")
EXPANSION = {"basic": 1, "bottleneck": 4}  # He et al. 2015 Table 1
VARIANTS = ("a", "b", "c", "d", "e")  # He et al. 2016 Figure 4 = Sun's Figure 9
SHORTCUTS = ("projection", "avgpool-pad")
DROP_MODES = ("batch", "sample")
STEMS = ("imagenet", "small", "cifar")
SPEC_TOKENS = "convW[xN], bbW[xN], avgK, maxK, dropout, and fc last"
_SPEC_TOKEN = re.compile(r"(conv|bb)(\d+)(?:x(\d+))?|(avg|max)(\d+)|(dropout)")


@dataclass(frozen=True)
class ModelConfig:
    """The whole architecture. `dataclasses.asdict` of it rebuilds the same network."""

    family: str = "resnet"  # 'resnet': stages of blocks; 'spec': an Ebrahimi & Abadi Table 1 column
    block: str = "basic"  # 'basic' (2 × conv 3×3) | 'bottleneck' (1×1, 3×3, 1×1 ×4)
    layers: tuple[int, ...] = (2, 2, 2, 2)  # blocks per stage
    widths: tuple[int, ...] = (64, 128, 256, 512)  # stage widths (bottleneck: before ×4)
    spec: str = ""  # family 'spec', e.g. "conv64x2 avg2 bb64 bb128 avg2 ... fc"
    stem: str = "imagenet"  # 'imagenet' 7×7/2 + max-pool/2 | 'small' 3×3 + max-pool/2 | 'cifar'
    variant: str = "a"  # residual unit, He et al. 2016 Fig. 4 (a)-(e)
    shortcut: str = "projection"  # when shapes change: 'projection' | 'avgpool-pad'
    num_classes: int = 200
    dropout: float = 0.0  # between the convs of each block (Ebrahimi & Abadi Figure 3: 0.5)
    survival_last: float = 1.0  # p_L of stochastic depth; 1.0 = off
    # 'batch': Huang et al.'s and Sun's drop of a whole block for the batch, in eager Python (the
    # seeds' presets). 'sample': one draw per image, masked (timm's drop_path): the same schedule
    # in one graph under torch.compile, which data-dependent skipping cannot give (a recompile or
    # graph break per pattern; torch.cond refuses branches that update BN statistics, torch 2.13).
    drop_mode: str = "batch"
    zero_init_residual: bool = False  # last BN (or conv) of every branch starts at zero
    plain: bool = False  # no shortcuts: the plain-ConvNet twin

    def __post_init__(self):
        for name in ("layers", "widths"):  # lists from JSON or a caller: keep the config hashable
            object.__setattr__(self, name, tuple(getattr(self, name)))
        _validate(self)

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        """Inverse of `dataclasses.asdict`; unknown keys fail with the valid ones listed."""
        return from_dict(cls, d)


def _validate(c: ModelConfig) -> None:
    check_choice("family", c.family, FAMILIES)
    check_choice("block", c.block, tuple(EXPANSION))
    check_choice("variant", c.variant, VARIANTS)
    check_choice("shortcut", c.shortcut, SHORTCUTS)
    check_choice("stem", c.stem, STEMS)
    check_choice("drop mode", c.drop_mode, DROP_MODES)
    if c.num_classes < 1:
        raise ConfigError(f"num_classes must be >= 1, got {c.num_classes}")
    if not 0.0 <= c.dropout < 1.0:
        raise ConfigError(f"dropout must be in [0, 1), got {c.dropout}")
    if not 0.0 < c.survival_last <= 1.0:
        raise ConfigError(f"survival_last must be in (0, 1], got {c.survival_last}")
    if c.plain and c.survival_last < 1.0:
        # Huang et al. §3: a dropped block falls back to its identity shortcut; without one, a
        # dropped block would cut the network in two.
        raise ConfigError("stochastic depth needs shortcuts: use survival_last=1.0 with plain")
    if c.plain and c.zero_init_residual:
        raise ConfigError("zero_init_residual needs shortcuts: a plain net would output zeros")
    if c.family == "spec":
        parse_spec(c.spec)
        changed = [n for n in _RESNET_ONLY if getattr(c, n) != _DEFAULTS[n]]
        if changed:
            raise ConfigError(f"family 'spec' takes its layers from `spec`; unset {changed}")
        return
    if c.spec:
        raise ConfigError("`spec` is for family 'spec'; family 'resnet' uses layers and widths")
    if not c.layers or len(c.layers) != len(c.widths):
        raise ConfigError(f"layers {c.layers} and widths {c.widths} need the same length >= 1")
    if min(c.layers) < 1 or min(c.widths) < 1:
        raise ConfigError(f"layers and widths must be positive, got {c.layers}, {c.widths}")


_RESNET_ONLY = ("block", "layers", "widths", "stem")
_DEFAULTS = {f.name: f.default for f in dataclasses.fields(ModelConfig)}


def parse_spec(spec: str) -> list[tuple[str, int]]:
    """'conv64x2 avg2 bb64 fc' → [('conv', 64), ('conv', 64), ('avg', 2), ('bb', 64)]."""
    tokens = spec.split()
    if not tokens or tokens[-1] != "fc" or tokens.count("fc") != 1:
        raise ConfigError(f"a spec is tokens ending in one fc; valid tokens: {SPEC_TOKENS}")
    out = []
    for token in tokens[:-1]:
        m = _SPEC_TOKEN.fullmatch(token)
        if m is None:
            raise ConfigError(f"unknown spec token {token!r}; valid: {SPEC_TOKENS}")
        if m[1]:
            out += [(m[1], int(m[2]))] * int(m[3] or 1)
        elif m[4]:
            out.append((m[4], int(m[5])))
        else:
            out.append(("dropout", 0))
    if any(n < 1 for kind, n in out if kind != "dropout"):
        raise ConfigError(f"widths and pool sizes must be >= 1 in {spec!r}")
    return out


# --- building blocks -----------------------------------------------------------------------------


class Chain(nn.Sequential):
    """nn.Sequential with its forward written here. Why: `Module.compile()` on a module whose
    forward is torch.nn's own code compiles nothing (torch 2.13 skips torch.nn frames, so
    `nn.Sequential(...).compile()` silently stays eager); tests/test_models.py checks it."""

    def forward(self, x):
        for layer in self:
            x = layer(x)
        return x


class PadShortcut(nn.Module):
    """Ebrahimi & Abadi §2's parameter-free shortcut: average pooling for the reduction, zero-padded
    channels for the enlargement (He et al. 2015's option A, with pooling for subsampling)."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        if cout < cin:
            raise ConfigError(f"avgpool-pad cannot narrow {cin} to {cout} channels")
        # ceil_mode matches the ceil(H/2) of a stride-2 3×3 conv with padding 1 on odd sizes.
        self.pool = nn.AvgPool2d(stride, ceil_mode=True) if stride > 1 else nn.Identity()
        self.extra = cout - cin

    def forward(self, x):
        return F.pad(self.pool(x), (0, 0, 0, 0, 0, self.extra))


class DropPath(nn.Module):
    """Stochastic depth's gate on a residual branch, a thin module over `drop_path` (as timm's
    DropPath over drop_path). Holds p_l (`survival`) and the mode; no parameters, no buffers."""

    def __init__(self, survival: float = 1.0, mode: str = "batch"):
        super().__init__()
        self.survival, self.mode = survival, mode

    def skip_branch(self) -> bool:
        """Batch mode, training: True when the whole batch drops the block this forward."""
        if not self.training or self.mode != "batch" or self.survival >= 1.0:
            return False
        # One draw from torch's RNG per block and forward (seeding torch reproduces it).
        return not bool(torch.rand(()) < self.survival)

    def forward(self, y):
        return drop_path(y, self.survival, training=self.training, per_sample=self.mode == "sample")

    def extra_repr(self) -> str:
        return f"survival={self.survival:.4g}, mode={self.mode}"


class ResidualBlock(nn.Module):
    """out = post(shortcut(x) + b·branch(x)) in training, out = post(shortcut(x) + p_l·branch(x))
    at test time (Sun §5.1). b ~ Bernoulli(p_l) once per forward for the whole batch (drop mode
    'batch', Huang et al.: the dropped branch is never run) or once per image ('sample': one
    graph under torch.compile, see ModelConfig.drop_mode)."""

    def __init__(self, branch: Chain, shortcut: nn.Module | None, post: nn.Module, depth: int,
                 drop_mode: str = "batch"):  # fmt: skip
        super().__init__()
        self.branch = branch
        self.shortcut = shortcut
        self.post = post
        self.drop = DropPath(1.0, drop_mode)  # p_l set by build_model (training/stochastic_depth)
        self.depth = depth  # weighted layers in the branch (2 basic, 3 bottleneck)
        self.runs = 0  # batch mode: training forwards seen, and how many ran the branch. Plain
        self.kept = 0  # Python, only touched in eager batch mode (see depth_stats)

    @property
    def survival(self) -> float:
        return self.drop.survival

    @survival.setter
    def survival(self, p: float) -> None:
        self.drop.survival = p

    def forward(self, x):
        if self.shortcut is None:  # plain twin: no addition at all
            return self.post(self.branch(x))
        identity = self.shortcut(x)
        if self.training and self.drop.mode == "batch" and self.survival < 1.0:
            self.runs += 1
            # A dropped block never calls its branch: the ~25% time saving of Sun's Table 2.
            if self.drop.skip_branch():
                return self.post(identity)
            self.kept += 1
        return self.post(identity + self.drop(self.branch(x)))

    def extra_repr(self) -> str:
        return f"depth={self.depth}"


class Net(nn.Module):
    def __init__(self, config: ModelConfig, stem: Chain, body: Chain, head: Chain):
        super().__init__()
        self.config = config  # plain data: checkpoints store dataclasses.asdict(config)
        self.stem, self.body, self.head = stem, body, head

    def forward(self, x):
        return self.head(self.body(self.stem(x)))


def conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride, 1, bias=False)  # bias is redundant before BN


def conv1x1(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 1, stride, 0, bias=False)


def relu() -> nn.ReLU:
    # Not in place: unit (d) starts with a ReLU on x, which the shortcut still needs, and a
    # dropped block hands x itself to `post`.
    return nn.ReLU()


# The residual function f of each unit of Sun's Figure 9 (He et al. 2016 Figure 4), for a list
# of convs (two 3×3 in a basic block, 1×1-3×3-1×1 in a bottleneck), read top to bottom. Dropout
# (Ebrahimi & Abadi Figure 3) sits right before every conv but the first.


def _drop(i: int, p: float) -> list[nn.Module]:
    return [nn.Dropout(p)] if i > 0 and p > 0 else []


def _branch_post_act(convs: list[nn.Conv2d], dropout: float, tail: list) -> list[nn.Module]:
    """Units (a)-(c): conv-bn-relu between the convs; the last conv is followed by `tail`."""
    layers = []
    for i, conv in enumerate(convs):
        layers += [*_drop(i, dropout), conv]
        last = i == len(convs) - 1
        layers += tail(conv.out_channels) if last else [nn.BatchNorm2d(conv.out_channels), relu()]
    return layers


def branch_a(convs, dropout):
    """(a) original: ... conv-bn; the ReLU comes after the addition (make_post)."""
    return _branch_post_act(convs, dropout, lambda c: [nn.BatchNorm2d(c)])


def branch_b(convs, dropout):
    """(b) BN after addition: ... conv; BN-ReLU come after the addition (make_post)."""
    return _branch_post_act(convs, dropout, lambda c: [])


def branch_c(convs, dropout):
    """(c) ReLU before addition: ... conv-bn-relu, then the addition."""
    return _branch_post_act(convs, dropout, lambda c: [nn.BatchNorm2d(c), relu()])


def branch_d(convs, dropout):
    """(d) ReLU-only pre-activation: relu-conv-bn for every conv."""
    layers = []
    for i, conv in enumerate(convs):
        layers += [relu(), *_drop(i, dropout), conv, nn.BatchNorm2d(conv.out_channels)]
    return layers


def branch_e(convs, dropout):
    """(e) full pre-activation: bn-relu-conv for every conv."""
    layers = []
    for i, conv in enumerate(convs):
        layers += [nn.BatchNorm2d(conv.in_channels), relu(), *_drop(i, dropout), conv]
    return layers


BRANCHES = {"a": branch_a, "b": branch_b, "c": branch_c, "d": branch_d, "e": branch_e}


def make_branch(convs: list[nn.Conv2d], variant: str, dropout: float) -> Chain:
    return Chain(*BRANCHES[variant](convs, dropout))


def make_post(variant: str, channels: int) -> nn.Module:
    if variant == "a":
        return relu()
    if variant == "b":
        return Chain(nn.BatchNorm2d(channels), relu())
    return nn.Identity()  # (c), (d), (e): nothing after the addition


def make_shortcut(cfg: ModelConfig, cin: int, cout: int, stride: int) -> nn.Module | None:
    if cfg.plain:
        return None
    if stride == 1 and cin == cout:
        return nn.Identity()
    if cfg.shortcut == "projection":  # He et al. 2015 option B
        return Chain(conv1x1(cin, cout, stride), nn.BatchNorm2d(cout))
    return PadShortcut(cin, cout, stride)


def make_block(cfg: ModelConfig, cin: int, width: int, stride: int) -> ResidualBlock:
    if cfg.block == "basic":
        convs = [conv3x3(cin, width, stride), conv3x3(width, width)]
    else:  # stride on the 3×3, as torchvision's ResNet v1.5 (He et al. put it on the first 1×1)
        convs = [conv1x1(cin, width), conv3x3(width, width, stride), conv1x1(width, 4 * width)]
    cout = convs[-1].out_channels
    return ResidualBlock(
        make_branch(convs, cfg.variant, cfg.dropout),
        make_shortcut(cfg, cin, cout, stride),
        make_post(cfg.variant, cout),
        depth=len(convs),
        drop_mode=cfg.drop_mode,
    )


def make_stem(kind: str, width: int) -> list[nn.Module]:
    if kind == "imagenet":  # He et al. 2015 Table 1 (Sun's Figure 4): 64 px → 16×16 maps
        return [nn.Conv2d(3, width, 7, 2, 3, bias=False), nn.BatchNorm2d(width), relu(),
                nn.MaxPool2d(3, 2, 1)]  # fmt: skip
    pool = [nn.MaxPool2d(3, 2, 1)] if kind == "small" else []  # small: 32×32, cifar: 64×64
    return [conv3x3(3, width), nn.BatchNorm2d(width), relu(), *pool]


def final_activation(variant: str, channels: int) -> list[nn.Module]:
    # Pre-activation units leave the last addition unactivated: apply their pre-activation once
    # more before pooling (He et al. 2016 §4.1).
    if variant == "e":
        return [nn.BatchNorm2d(channels), relu()]
    return [relu()] if variant == "d" else []


def _resnet(cfg: ModelConfig) -> Net:
    c = cfg.widths[0]
    stem = Chain(*make_stem(cfg.stem, c))
    stages = []
    for i, (n, width) in enumerate(zip(cfg.layers, cfg.widths, strict=True)):
        blocks = []
        for j in range(n):  # stages 2.. halve the maps in their first block
            blocks.append(make_block(cfg, c, width, 2 if i > 0 and j == 0 else 1))
            c = width * EXPANSION[cfg.block]
        stages.append(Chain(*blocks))
    head = Chain(*final_activation(cfg.variant, c), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                 nn.Linear(c, cfg.num_classes))  # fmt: skip
    return Net(cfg, stem, Chain(*stages), head)


def _spec_net(cfg: ModelConfig) -> Net:
    """A Table 1 column of Ebrahimi & Abadi: 3×3 conv-bn-relu units, basic blocks (stride 1; the
    pools do the reduction), pools, dropout, then a classifier over the flattened final maps."""
    c, size, layers = 3, IMAGE_SIZE, []
    for kind, n in parse_spec(cfg.spec):
        if kind == "conv":
            layers += [conv3x3(c, n), nn.BatchNorm2d(n), relu()]
            c = n
        elif kind == "bb":
            layers.append(make_block(cfg, c, n, 1))
            c = n
        elif kind == "dropout":
            layers.append(nn.Dropout(cfg.dropout))
        else:
            layers.append(nn.AvgPool2d(n) if kind == "avg" else nn.MaxPool2d(n))
            size //= n
    if size < 1:
        raise ConfigError(f"spec {cfg.spec!r} pools a {IMAGE_SIZE}-px image below 1 pixel")
    first = next((i for i, m in enumerate(layers) if isinstance(m, ResidualBlock)), len(layers))
    # Table 1 ends in "Avg 2, FC 200" with maps still 2×2 (or 4×4): the FC sees them flattened.
    head = Chain(*final_activation(cfg.variant, c), nn.Flatten(),
                 nn.Linear(c * size * size, cfg.num_classes))  # fmt: skip
    return Net(cfg, Chain(*layers[:first]), Chain(*layers[first:]), head)


def _init(net: Net, zero_init_residual: bool) -> None:
    for m in net.modules():  # torchvision's ResNet initialisation
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    if zero_init_residual:  # Goyal et al. 2017: each block starts as the identity
        for block in residual_blocks(net):
            # The branch's last BN, or its last conv where the unit ends in a conv ((b), (e)).
            last = next(
                m for m in reversed(block.branch) if isinstance(m, nn.BatchNorm2d | nn.Conv2d)
            )
            nn.init.zeros_(last.weight)


# --- public API ----------------------------------------------------------------------------------


def get_config(cfg_or_name: ModelConfig | str, **overrides) -> ModelConfig:
    """A registered architecture by name, or `cfg` itself, with fields overridden."""
    if isinstance(cfg_or_name, str):
        check_choice("architecture", cfg_or_name, sorted(ARCHITECTURES))
        cfg_or_name = ARCHITECTURES[cfg_or_name]
    return replace(cfg_or_name, **overrides) if overrides else cfg_or_name


def build_model(cfg_or_name: ModelConfig | str, **overrides) -> Net:
    """The network for a config or a registered name, e.g. build_model("resnet34", variant="e")."""
    cfg = get_config(cfg_or_name, **overrides)
    net = _resnet(cfg) if cfg.family == "resnet" else _spec_net(cfg)
    _init(net, cfg.zero_init_residual)
    blocks = residual_blocks(net)
    for block, p in zip(
        blocks, survival_probabilities(len(blocks), cfg.survival_last), strict=True
    ):
        block.survival = p
    return net


def plain_twin(cfg: ModelConfig) -> ModelConfig:
    """The same network without shortcuts (Ebrahimi & Abadi §5: Net 6 is Net 1's twin)."""
    return replace(cfg, plain=True, survival_last=1.0, zero_init_residual=False)


def residual_blocks(model: nn.Module) -> list[ResidualBlock]:
    """The blocks in forward order (works through DDP and other wrappers)."""
    return [m for m in model.modules() if isinstance(m, ResidualBlock)]


def weighted_layers(model: nn.Module) -> int:
    """Convs and linears on the main path (He et al.'s depth: projection shortcuts excluded)."""

    def count(module):
        return sum(isinstance(m, nn.Conv2d | nn.Linear) for m in module.modules())

    shortcuts = sum(count(b.shortcut) for b in residual_blocks(model) if b.shortcut is not None)
    return count(model) - shortcuts


def counted(block: ResidualBlock) -> bool:
    """Whether the block's forwards are counted: stochastic depth dropping whole blocks."""
    return block.drop.mode == "batch" and block.survival < 1.0


def depth_stats(model: nn.Module, *, reset: bool = False) -> dict[str, float]:
    """Sun's Table 2: blocks and depth, their expectation under stochastic depth, and the
    empirical averages over the training forwards since the last reset (NaN before any)."""
    blocks = residual_blocks(model)
    p = [b.survival for b in blocks]
    d = [b.depth for b in blocks]
    fixed = weighted_layers(model) - sum(d)
    # Counted where blocks are dropped whole (eager); elsewhere (no stochastic depth, or a
    # per-sample mask, which keeps the compiled graph free of Python counters) the expectation.
    rate = [b.kept / b.runs if b.runs else math.nan if counted(b) else b.survival for b in blocks]
    stats = {
        "blocks": float(len(blocks)),
        "depth": float(fixed + sum(d)),
        "expected_active_blocks": expected_active_blocks(p),
        "expected_active_depth": expected_active_depth(p, d, fixed),
        "active_blocks": float(sum(rate)),
        "active_depth": fixed + float(sum(r * di for r, di in zip(rate, d, strict=True))),
    }
    if reset:
        for b in blocks:
            b.runs = b.kept = 0
    return stats


# --- the registry --------------------------------------------------------------------------------

_R18 = ModelConfig(block="basic", layers=(2, 2, 2, 2))
_R34 = ModelConfig(block="basic", layers=(3, 4, 6, 3))
_R50 = ModelConfig(block="bottleneck", layers=(3, 4, 6, 3))
# Ebrahimi & Abadi Table 1, column by column; BB = Figure 3's basic block with dropout 0.5, and
# its §2 parameter-free shortcut (the pools do the reduction, zero channels the enlargement).
_NET = {
    1: "conv64x2 avg2 bb64 bb128 avg2 bb128 bb256 avg2 bb256 avg2 bb512 avg2 fc",
    2: "conv64 avg2 bb128 avg2 bb128 bb256 avg2 bb256 avg2 bb512 avg4 fc",
    3: "conv32 conv64 max2 bb64x2 avg2 bb128x3 avg2 bb128 avg2 bb256 avg2 fc",
    4: "conv64x2 avg2 bb64x3 max2 bb128x3 max2 bb256 bb512 avg2 dropout fc",
    5: "conv64x2 avg2 bb128 max2 bb256x2 max2 bb512x2 avg2 dropout fc",
}
# Ebrahimi & Abadi §5, Figures 6-7: the shallow 7- and 9-layer nets whose ResNet and ConvNet
# forms they compare. The paper gives only the depths; these are Table 1's building blocks at
# the smallest widths, with a pool after every unit so that they train in minutes on a CPU:
# weighted layers = 2 convs + 2 per BB + the FC, as Table 1 counts them.
_SHALLOW = {
    7: "conv32 avg2 conv64 avg2 bb64 avg2 bb128 avg2 fc",
    9: "conv32 avg2 conv64 avg2 bb64 avg2 bb128 avg2 bb256 avg2 fc",
}
_EBRAHIMI = {
    n: ModelConfig(family="spec", spec=s, shortcut="avgpool-pad", dropout=0.5)
    for n, s in _NET.items()
}
_EBRAHIMI_SHALLOW = {
    n: ModelConfig(family="spec", spec=s, shortcut="avgpool-pad", dropout=0.5)
    for n, s in _SHALLOW.items()
}

ARCHITECTURES: dict[str, ModelConfig] = {
    # Sun §4-5.4, Figure 4: He et al.'s ResNets, original unit (a) and Figure 9's (c) and (e).
    **{
        f"resnet{d}{suffix}": replace(base, variant=v)
        for d, base in ((18, _R18), (34, _R34), (50, _R50))
        for suffix, v in (("", "a"), ("-c", "c"), ("-e", "e"))
    },
    # Sun §5.1-5.3: stochastic depth, p_L = 0.5; §6: with full pre-activation.
    "resnet34-sd": replace(_R34, survival_last=0.5),
    "resnet34-e-sd": replace(_R34, variant="e", survival_last=0.5),
    # Stems that keep more resolution: 4× and 16× the compute of the 16×16 ImageNet stem.
    "resnet18-small": replace(_R18, stem="small"),
    "resnet34-small": replace(_R34, stem="small"),
    "resnet18-cifar": replace(_R18, stem="cifar"),
    "resnet34-cifar": replace(_R34, stem="cifar"),
    # Ebrahimi & Abadi §2's parameter-free shortcut on ResNet-34.
    "resnet34-pad": replace(_R34, shortcut="avgpool-pad"),
    # He et al. 2015's plain baselines: the ResNets without shortcuts.
    "plain18": plain_twin(_R18),
    "plain34": plain_twin(_R34),
    **{f"ebrahimi-net{n}": cfg for n, cfg in _EBRAHIMI.items()},
    "ebrahimi-net6": plain_twin(_EBRAHIMI[1]),  # Table 1: Net 6 is Net 1 without shortcuts
    **{f"ebrahimi-resnet{n}": cfg for n, cfg in _EBRAHIMI_SHALLOW.items()},
    **{f"ebrahimi-convnet{n}": plain_twin(cfg) for n, cfg in _EBRAHIMI_SHALLOW.items()},
}
