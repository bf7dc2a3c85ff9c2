"""Fold a trained network into the fewest inference ops, in PyTorch, before any export.

`fold_model(model)` returns a new eval-mode module (the input is never modified) in which

- every BatchNorm that follows a convolution is folded into that convolution's weight and bias
  (Ioffe & Szegedy 2015 §3.1: at test time BN is a fixed affine map per channel);
- the stochastic-depth survival probability p_l of each residual block is folded into the last
  convolution of its branch (Huang et al. 2016 §3 "Testing": out = post(shortcut + p_l·f(x))),
  through a trailing ReLU where there is one (unit (c)), since relu(p·z) = p·relu(z) for p > 0;
- a BatchNorm with no convolution right before it (the pre-activations of units (b) and (e), and
  (e)'s final one, He et al. 2016 §4.1) cannot pass through the ReLU after it: it becomes one
  per-channel `ChannelAffine` (a Mul and an Add in ONNX), except in unit (b) with a projection
  shortcut, where both addends end in a convolution and the affine folds into the two of them;
- dropout disappears (identity at test time).

Every step is a pure function returning new modules; tests/test_export.py checks each unit
variant against the original eval-mode model (relative error ≤ 1e-5, stochastic depth on).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from training.models import Chain, Net, PadShortcut, ResidualBlock

# Modules without parameters or state that export as they are.
_STATELESS = nn.ReLU | nn.MaxPool2d | nn.AvgPool2d | nn.AdaptiveAvgPool2d | nn.Flatten | PadShortcut
_DROPOUT = nn.modules.dropout._DropoutNd


class FoldError(ValueError):
    """A module this folding does not know how to rewrite; the message names it."""


class ChannelAffine(nn.Module):
    """y = x·scale + shift per channel: a test-time BatchNorm that no convolution can absorb."""

    def __init__(self, scale: torch.Tensor, shift: torch.Tensor):
        super().__init__()
        # Stored as (1, C, 1, 1) so the exported graph broadcasts constants with no Reshape.
        self.register_buffer("scale", scale.detach().reshape(1, -1, 1, 1).clone())
        self.register_buffer("shift", shift.detach().reshape(1, -1, 1, 1).clone())

    def forward(self, x):
        return x * self.scale + self.shift

    def extra_repr(self) -> str:
        return f"channels={self.scale.numel()}"


# --- the algebra ---------------------------------------------------------------------------------


def bn_scale_shift(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """BN at test time as y = x·scale + shift, in float64 (the folded weights are rounded once)."""
    if bn.running_mean is None or bn.running_var is None:
        raise FoldError(f"{bn} has no running statistics: it normalises by the batch at test time")
    var = bn.running_var.double()
    mean = bn.running_mean.double()
    weight = bn.weight.double() if bn.weight is not None else torch.ones_like(var)
    bias = bn.bias.double() if bn.bias is not None else torch.zeros_like(var)
    scale = weight / torch.sqrt(var + bn.eps)
    return scale, bias - mean * scale


def conv_with(conv: nn.Conv2d, weight: torch.Tensor, bias: torch.Tensor) -> nn.Conv2d:
    """A copy of `conv` (same geometry) with the given weight and a bias, as float32."""
    out = nn.Conv2d(
        conv.in_channels,
        conv.out_channels,
        conv.kernel_size,
        conv.stride,
        conv.padding,
        conv.dilation,
        conv.groups,
        bias=True,
        padding_mode=conv.padding_mode,
    )
    out.weight.data = weight.to(conv.weight.dtype).contiguous()
    out.bias.data = bias.to(conv.weight.dtype).contiguous()
    return out


def conv_bias(conv: nn.Conv2d) -> torch.Tensor:
    if conv.bias is None:
        return torch.zeros(conv.out_channels, dtype=torch.float64)
    return conv.bias.detach().double()


def scale_conv(conv: nn.Conv2d, scale, shift=None) -> nn.Conv2d:
    """conv'(x) = conv(x)·scale + shift, per output channel (scale may be a number)."""
    scale = torch.as_tensor(scale, dtype=torch.float64).expand(conv.out_channels)
    shift = torch.zeros_like(scale) if shift is None else shift.double()
    weight = conv.weight.detach().double() * scale.view(-1, 1, 1, 1)
    return conv_with(conv, weight, conv_bias(conv) * scale + shift)


def fold_bn_into_conv(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """bn(conv(x)) as one convolution."""
    if bn.num_features != conv.out_channels:
        raise FoldError(f"{bn} cannot follow {conv}: {conv.out_channels} channels")
    return scale_conv(conv, *bn_scale_shift(bn))


def bn_to_affine(bn: nn.BatchNorm2d) -> ChannelAffine:
    scale, shift = bn_scale_shift(bn)
    return ChannelAffine(scale.float(), shift.float())


# --- walking the network -------------------------------------------------------------------------


def fold_chain(layers) -> Chain:
    """A sequence with conv→BN pairs folded, lone BNs made affine, dropout and identities gone."""
    out: list[nn.Module] = []
    for layer in layers:
        if isinstance(layer, _DROPOUT | nn.Identity):
            continue
        if isinstance(layer, nn.BatchNorm2d):
            if out and isinstance(out[-1], nn.Conv2d):
                out[-1] = fold_bn_into_conv(out[-1], layer)
            else:
                out.append(bn_to_affine(layer))
            continue
        out.append(fold_module(layer))
    return Chain(*out)


def fold_survival(branch: Chain, survival: float) -> Chain:
    """p·branch(x) as one branch: p scales the last convolution (and through a trailing ReLU)."""
    if survival == 1.0:
        return branch
    if not 0.0 < survival < 1.0:
        raise FoldError(f"survival probability must be in (0, 1], got {survival}")
    layers = list(branch)
    last = max((i for i, m in enumerate(layers) if isinstance(m, nn.Conv2d)), default=None)
    tail = layers[last + 1 :] if last is not None else layers
    # Only positively homogeneous ops may follow the conv: relu(p·z) = p·relu(z) needs p > 0.
    if last is None or not all(isinstance(m, nn.ReLU) for m in tail):
        raise FoldError(f"cannot fold p={survival} into a branch ending in {tail}")
    layers[last] = scale_conv(layers[last], survival)
    return Chain(*layers)


def only_conv(module: nn.Module | None) -> nn.Conv2d | None:
    """The convolution a folded projection shortcut consists of, else None."""
    if isinstance(module, nn.Conv2d):
        return module
    if isinstance(module, nn.Sequential) and len(module) == 1 and isinstance(module[0], nn.Conv2d):
        return module[0]
    return None


def fold_post_affine(block: ResidualBlock) -> ResidualBlock:
    """Unit (b), post = affine → ReLU after the addition: when both addends end in a convolution
    (projection shortcut), (s·(a + b) + t) folds into them and only the ReLU remains."""
    post = list(block.post) if isinstance(block.post, nn.Sequential) else [block.post]
    sc_conv = only_conv(block.shortcut)
    branch = list(block.branch)
    if not (post and isinstance(post[0], ChannelAffine) and sc_conv is not None):
        return block
    if not (branch and isinstance(branch[-1], nn.Conv2d)):
        return block
    affine = post[0]
    scale, shift = affine.scale.flatten().double(), affine.shift.flatten().double()
    branch[-1] = scale_conv(branch[-1], scale, shift)
    shortcut = Chain(scale_conv(sc_conv, scale))
    return ResidualBlock(Chain(*branch), shortcut, Chain(*post[1:]), block.depth)


def fold_block(block: ResidualBlock) -> ResidualBlock:
    branch = fold_survival(fold_chain(block.branch), block.survival)
    shortcut = None if block.shortcut is None else fold_module(block.shortcut)
    post = fold_module(block.post)
    out = ResidualBlock(branch, shortcut, post, block.depth)
    out.survival = 1.0  # now inside the branch's last convolution: no Mul in the graph
    return fold_post_affine(out)


def fold_module(module: nn.Module) -> nn.Module:
    """The folded copy of any module of training/models.py's networks."""
    if isinstance(module, Net):
        parts = (fold_chain(p) for p in (module.stem, module.body, module.head))
        return Net(module.config, *parts)
    if isinstance(module, ResidualBlock):
        return fold_block(module)
    if isinstance(module, nn.Sequential):
        return fold_chain(module)
    if isinstance(module, nn.BatchNorm2d):
        return bn_to_affine(module)
    if isinstance(module, _DROPOUT):
        return nn.Identity()
    if isinstance(module, nn.Conv2d | nn.Linear | nn.Identity | ChannelAffine | _STATELESS):
        return copy.deepcopy(module)
    raise FoldError(f"no folding rule for {type(module).__name__}: {module}")


def fold_model(model: nn.Module) -> nn.Module:
    """A new eval-mode network computing what `model.eval()` computes, with BN, survival scaling
    and dropout folded away. `model` itself is left as it was (mode included)."""
    with torch.no_grad():
        folded = fold_module(model)
    folded.eval()
    for p in folded.parameters():
        p.requires_grad_(False)
    return folded


def count_modules(model: nn.Module) -> dict[str, int]:
    """How many BN, dropout, affine and conv modules, and blocks with p_l < 1, a network has."""
    mods = list(model.modules())
    return {
        "batchnorm": sum(isinstance(m, nn.BatchNorm2d) for m in mods),
        "dropout": sum(isinstance(m, _DROPOUT) for m in mods),
        "affine": sum(isinstance(m, ChannelAffine) for m in mods),
        "conv": sum(isinstance(m, nn.Conv2d) for m in mods),
        "scaled_blocks": sum(isinstance(m, ResidualBlock) and m.survival < 1.0 for m in mods),
    }
