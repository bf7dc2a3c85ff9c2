"""Regularisers beyond the seeds, as pure functions: mixup, cutmix, their loss, and weight EMA.

They serve the `final` recipe (Zhang et al. 2018 mixup; Yun et al. 2019 cutmix; Polyak averaging),
which must beat Sun's 65.32% top-1 in 20 GPU-minutes. Label smoothing is
`F.cross_entropy(label_smoothing=...)` and needs nothing here. Random draws come from a NumPy
generator the caller seeds per step, so a resumed run mixes exactly as an uninterrupted one and
the GPU never waits on a host read of a device random number.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def _partner(x: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    # The batch reversed, as timm's Mixup pairs images: the batch is already in random order, and
    # an index made on the host would be a host-to-device copy, which syncs the GPU every step.
    return torch.arange(x.shape[0] - 1, -1, -1, device=x.device)


def mixup(x: torch.Tensor, y: torch.Tensor, alpha: float, rng: np.random.Generator):
    """Blend each image with a partner from the same batch: (x, y_a, y_b, lam)."""
    lam = float(rng.beta(alpha, alpha))
    perm = _partner(x, rng)
    return lam * x + (1 - lam) * x[perm], y, y[perm], lam


def cutmix(x: torch.Tensor, y: torch.Tensor, alpha: float, rng: np.random.Generator):
    """Paste a random box from a partner image: (x, y_a, y_b, lam) with lam the kept area."""
    lam = float(rng.beta(alpha, alpha))
    perm = _partner(x, rng)
    h, w = x.shape[-2:]
    ch, cw = int(h * (1 - lam) ** 0.5), int(w * (1 - lam) ** 0.5)
    cy, cx = int(rng.integers(h)), int(rng.integers(w))
    y0, y1 = max(cy - ch // 2, 0), min(cy + ch // 2, h)
    x0, x1 = max(cx - cw // 2, 0), min(cx + cw // 2, w)
    out = x.clone()
    out[..., y0:y1, x0:x1] = x[perm][..., y0:y1, x0:x1]
    lam = 1 - (y1 - y0) * (x1 - x0) / (h * w)  # the box was clipped at the border
    return out, y, y[perm], lam


def mix_batch(x, y, *, mixup_alpha: float, cutmix_alpha: float, prob: float, rng):
    """Mixup or cutmix (one of them at random where both are on) with probability `prob`."""
    kinds = [(f, a) for f, a in ((mixup, mixup_alpha), (cutmix, cutmix_alpha)) if a > 0]
    if not kinds or rng.random() >= prob:
        return x, y, y, 1.0
    fn, alpha = kinds[int(rng.integers(len(kinds)))]
    return fn(x, y, alpha, rng)


def mixed_cross_entropy(logits, y_a, y_b, lam, label_smoothing: float = 0.0):
    """Cross-entropy against the blend of two label sets, as mixup and cutmix need. `lam` is a
    float or a 0-d tensor; no branch on it, so that one compiled graph serves mixed and unmixed
    steps (an unmixed step has y_b = y_a: the second term costs one more 200-way softmax)."""
    loss_a = F.cross_entropy(logits, y_a, label_smoothing=label_smoothing)
    loss_b = F.cross_entropy(logits, y_b, label_smoothing=label_smoothing)
    return lam * loss_a + (1 - lam) * loss_b


def drop_path(y: torch.Tensor, survival: float, *, training: bool, per_sample: bool):
    """Stochastic depth on a residual branch's output y (Huang et al. 2016 §3, Sun §5.1), in
    Huang's convention (timm's divides by p in training instead; the export folds p into the
    branch at test time, so this one keeps it there):

      test time             y·p   (E[b] = p)
      training, per_sample  y·b_i with b_i ~ Bernoulli(p) per image: no data-dependent Python,
                            so the whole step stays one graph under torch.compile
      training, per batch   y     (the caller dropped the whole block, or kept it)
    """
    if survival >= 1.0:
        return y
    if not training:
        return y * survival
    if not per_sample:
        return y
    keep = torch.rand((y.shape[0],) + (1,) * (y.dim() - 1), device=y.device) < survival
    return y * keep.to(y.dtype)


@torch.no_grad()
def ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    """ema ← decay·ema + (1−decay)·model for parameters; buffers (BN statistics) are copied."""
    ema_p, model_p = list(ema.parameters()), [p.detach() for p in model.parameters()]
    torch._foreach_lerp_(ema_p, model_p, 1 - decay)
    # One foreach copy, not one kernel per BN buffer (~70 launches a step on ResNet-34).
    torch._foreach_copy_(list(ema.buffers()), list(model.buffers()))
