"""The stochastic-depth survival schedule, as pure functions (no torch).

Huang et al. 2016, "Deep networks with stochastic depth" §3, used by Sun, "ResNet on Tiny
ImageNet" §5.1: during training block l of L is kept with probability

    p_l = 1 − (l / L)(1 − p_L),   l = 1 … L,

so the input side is almost always kept and the last block survives with p_L (0.5 by default in
both papers). This module is the ONE place these probabilities are computed: the networks in
training/models.py store the result as each block's `survival` and only read it.

Expected depth. With p_L = 0.5 the expected number of active blocks is (3L − 1)/4, i.e. Huang's
"≈ 3L/4": 11.75 of the 16 blocks of ResNet-34, 25.5 of its 34 weighted layers. Sun's Table 2
reports 12.3 blocks and 26.6 layers, which is what the formula gives when l runs 0 … L−1 instead
(12.25 blocks; 2 + 2·12.3 = 26.6 layers): `first_index=0` reproduces that reading.
"""

from __future__ import annotations

from collections.abc import Sequence


def survival_probabilities(
    num_blocks: int, p_last: float, *, first_index: int = 1
) -> tuple[float, ...]:
    """p_l for l = first_index … first_index + L − 1 (Huang et al. eq. 4 with the default 1)."""
    if num_blocks < 0:
        raise ValueError(f"num_blocks must be >= 0, got {num_blocks}")
    if not 0.0 < p_last <= 1.0:
        raise ValueError(f"the last block's survival probability must be in (0, 1], got {p_last}")
    if first_index not in (0, 1):
        raise ValueError(f"first_index must be 0 or 1, got {first_index}")
    L = num_blocks
    return tuple(1.0 - (i / L) * (1.0 - p_last) for i in range(first_index, first_index + L))


def expected_active_blocks(survival: Sequence[float]) -> float:
    """E[number of blocks run in a training forward] = Σ p_l (each b_l is Bernoulli(p_l))."""
    return float(sum(survival))


def expected_active_depth(
    survival: Sequence[float], block_depths: Sequence[int], fixed_depth: int
) -> float:
    """E[weighted layers on the main path]: the layers outside blocks plus Σ p_l·depth_l.

    Sun counts depth as He et al. do: 2 convolutions per basic block, 3 per bottleneck, plus the
    stem convolution and the classifier (34 for ResNet-34); projection shortcuts do not count.
    """
    if len(survival) != len(block_depths):
        raise ValueError(f"{len(survival)} probabilities for {len(block_depths)} blocks")
    return fixed_depth + float(sum(p * d for p, d in zip(survival, block_depths, strict=True)))
