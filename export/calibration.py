"""Calibrated probabilities: one temperature, fitted on half the val images and judged on the
other half, for the export to fold into the head (export/graph.py `scale_logits`).

Why: the shipped model is under-confident by about 20 points (mean top-1 probability 44.9%
against 64.6% top-1 on val, ECE 19.8%), the expected effect of training with label smoothing
and mixup/CutMix (Müller, Kornblith and Hinton, "When Does Label Smoothing Help?", 2019).
Temperature scaling (Guo, Pleiss, Sun and Weinberger, "On Calibration of Modern Neural
Networks", ICML 2017) divides the logits by one T: it changes no ranking, so top-1, top-k and the
activation maps' ranking stay as they were. Guo et al. fit T by NLL; the default here fits it by
the Brier score, also a proper scoring rule but with a bounded penalty per image, because on the
shipped model's judged half it gives the top-1 probability a user reads (and thresholds) more
truthfully: ECE 2.2% against NLL's 4.0% (NLL's T leaves the model over-confident: mean top-1
probability 68.5% for 64.5% top-1), Brier 0.4674 against 0.4695, NLL 1.4399 against 1.4358
(uncalibrated: ECE 19.1%, NLL 1.6595). `python -m export.reliability` prints that comparison,
with vector scaling (a scale and a bias per class), which changes rankings and did worse on the
half it was not fitted on (ECE 5.5%, NLL 1.514).

Split (`halves`): within each class, the val images in their order alternate fit, judge, fit...
so both halves hold every class. The figures: ECE with 15 equal-width bins of the top-1
probability (Guo et al.'s), NLL (mean −log p of the true class), the multi-class Brier score
(mean over images of Σ_k (p_k − y_k)²), top-1 and the mean top-1 probability.
Pure numpy: the tests check it on cases worked by hand.
"""

from __future__ import annotations

import math

import numpy as np

# "temperature": T fitted by the Brier score (the default); "temperature-nll": by NLL, as Guo et
# al.; "none": the logits as they are.
METHODS = ("temperature", "temperature-nll", "none")
OBJECTIVES = {"temperature": "brier", "temperature-nll": "nll"}
BINS = 15
# The top-1 accuracies a user may want to hold answers to: the card gives the confidence
# threshold for each, and the share of images still answered at it (`selective`).
TARGETS = (0.8, 0.9)
LOG_T_RANGE = (-4.0, 4.0)  # T from 0.018 to 55: far wider than any model here needs


class CalibrationError(ValueError):
    """A calibration the export refuses; the message gives the figures."""


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def nll(logits: np.ndarray, labels: np.ndarray) -> float:
    z = logits.astype(np.float64)
    z = z - z.max(axis=1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return float(-log_p[np.arange(len(labels)), labels].mean())


def bin_of(confidence: np.ndarray, bins: int = BINS) -> np.ndarray:
    """Each top-1 probability's bin: (0, 1/bins] is 0, (1/bins, 2/bins] is 1, ..."""
    return np.clip(np.ceil(confidence * bins).astype(int) - 1, 0, bins - 1)


def ece(probs: np.ndarray, labels: np.ndarray, bins: int = BINS) -> float:
    """Σ_b |B_b|/n · |accuracy(B_b) − confidence(B_b)| over `bin_of`'s equal-width bins."""
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    which = bin_of(confidence, bins)
    total = 0.0
    for b in range(bins):
        inside = which == b
        if inside.any():
            gap = abs(correct[inside].mean() - confidence[inside].mean())
            total += inside.mean() * gap
    return float(total)


def brier(probs: np.ndarray, labels: np.ndarray) -> float:
    target = np.zeros_like(probs, dtype=np.float64)
    target[np.arange(len(labels)), labels] = 1.0
    return float(((probs - target) ** 2).sum(axis=1).mean())


def figures(logits: np.ndarray, labels: np.ndarray) -> dict:
    """What the card reports for a set of logits: top1, mean_confidence, ece, nll, brier."""
    probs = softmax(logits)
    return {
        "images": len(labels),
        "top1": float((probs.argmax(1) == labels).mean()),
        "mean_confidence": float(probs.max(1).mean()),
        "ece": ece(probs, labels),
        "nll": nll(logits, labels),
        "brier": brier(probs, labels),
    }


def coverage_curve(probs: np.ndarray, labels: np.ndarray):
    """(confidence, top-1 of the images at least that confident, coverage) with the images
    sorted most confident first: answering only the most confident k images."""
    confidence = probs.max(axis=1)
    order = np.argsort(-confidence, kind="stable")
    right = (probs.argmax(axis=1) == labels)[order]
    k = np.arange(1, len(labels) + 1)
    return confidence[order], np.cumsum(right) / k, k / len(labels)


def selective(probs: np.ndarray, labels: np.ndarray, targets=TARGETS) -> list[dict]:
    """Per target top-1: the lowest min_confidence at which the images answered are right at
    least that often, and the share of images answered (coverage). None where no threshold
    reaches it."""
    confidence, accuracy, coverage = coverage_curve(probs, labels)
    # Only where the next image is less confident: a threshold takes in all of a tie.
    ends = np.r_[confidence[:-1] > confidence[1:], True]
    out = []
    for target in targets:
        ok = np.flatnonzero((accuracy >= target) & ends)
        i = ok[-1] if len(ok) else None
        out.append({
            "top1": target,
            "min_confidence": None if i is None else round(float(confidence[i]), 4),
            "coverage": 0.0 if i is None else round(float(coverage[i]), 4),
        })  # fmt: skip
    return out


def halves(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(fit, judge) indices: within each class, its images in order go fit, judge, fit, ..."""
    labels = np.asarray(labels)
    rank = np.empty(len(labels), dtype=int)
    for c in np.unique(labels):
        where = np.flatnonzero(labels == c)
        rank[where] = np.arange(len(where))
    return np.flatnonzero(rank % 2 == 0), np.flatnonzero(rank % 2 == 1)


def fit_temperature(
    logits: np.ndarray, labels: np.ndarray, objective: str = "nll", iters: int = 60
) -> float:
    """The T that minimises `objective` ("nll" or "brier") of logits / T: the best of a grid
    over log T, refined by golden-section search between its neighbours (NLL is convex in 1/T;
    the grid keeps the Brier score, which need not be unimodal far from its minimum, honest)."""
    if objective == "nll":
        score = lambda t: nll(logits / math.exp(t), labels)  # noqa: E731
    else:
        score = lambda t: brier(softmax(logits / math.exp(t)), labels)  # noqa: E731
    grid = np.linspace(*LOG_T_RANGE, 81)
    best = int(np.argmin([score(t) for t in grid]))
    lo, hi = grid[max(best - 1, 0)], grid[min(best + 1, len(grid) - 1)]
    ratio = (math.sqrt(5) - 1) / 2
    a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    fa, fb = score(a), score(b)
    for _ in range(iters):
        if fa <= fb:
            hi, b, fb = b, a, fa
            a = hi - ratio * (hi - lo)
            fa = score(a)
        else:
            lo, a, fa = a, b, fb
            b = lo + ratio * (hi - lo)
            fb = score(b)
    return math.exp((lo + hi) / 2)


def fit(logits: np.ndarray, labels: np.ndarray, method: str = "temperature") -> dict:
    """Fit on one half of val, judge on the other; the card's `calibration` record. Refuses
    (CalibrationError) a temperature that does not lower NLL on the half it was not fitted on."""
    if method not in OBJECTIVES:
        raise CalibrationError(f"unknown calibration {method!r}; valid: {', '.join(OBJECTIVES)}")
    labels = np.asarray(labels)
    fit_idx, judge_idx = halves(labels)
    if len(fit_idx) == 0 or len(judge_idx) == 0:
        raise CalibrationError(f"{len(labels)} val images: too few to fit on one half")
    t = fit_temperature(logits[fit_idx], labels[fit_idx], OBJECTIVES[method])
    before = figures(logits[judge_idx], labels[judge_idx])
    after = figures(logits[judge_idx] / t, labels[judge_idx])
    record = {
        "method": "temperature",
        "fitted_by": OBJECTIVES[method],
        "temperature": t,
        "split": "val, alternate images of each class: fit on the 1st, 3rd, ...; judged on the "
        "2nd, 4th, ...",
        "fit_images": len(fit_idx),
        "judged_images": len(judge_idx),
        "before": before,
        "after": after,
        "selective": selective(softmax(logits[judge_idx] / t), labels[judge_idx]),
    }
    print(f"calibration: T = {t:.4f} fitted by {OBJECTIVES[method]} on {len(fit_idx)} val images; "
          f"on the other {len(judge_idx)}: ECE {before['ece']:.2%} -> {after['ece']:.2%}, NLL "
          f"{before['nll']:.4f} -> {after['nll']:.4f}, Brier {before['brier']:.4f} -> "
          f"{after['brier']:.4f}, top-1 {after['top1']:.2%}")  # fmt: skip
    if not after["nll"] < before["nll"]:
        raise CalibrationError(
            f"temperature {t:.4g} raises NLL on the val half it was not fitted on "
            f"({before['nll']:.4f} -> {after['nll']:.4f}): refused (--calibrate none exports "
            "without one)"
        )
    return record


def judged(record: dict, logits: np.ndarray, labels: np.ndarray) -> dict:
    """`record` with `after` measured again on another form's own (already calibrated) logits,
    on the same judged half: an INT8 form's logits differ slightly from fp32's."""
    labels = np.asarray(labels)
    _, judge_idx = halves(labels)
    after = figures(logits[judge_idx], labels[judge_idx])
    chosen = selective(softmax(logits[judge_idx]), labels[judge_idx])
    return {**record, "after": after, "selective": chosen}
