"""export/calibration.py on cases worked by hand, and the export's temperature on the fixture."""

import math

import numpy as np
import pytest

from export import calibration as K

# Four images, three classes; confidences 0.9 (right), 0.9 (wrong), 0.5 (right), 0.6 (right).
PROBS = np.array([[0.9, 0.05, 0.05], [0.9, 0.05, 0.05], [0.2, 0.5, 0.3], [0.6, 0.3, 0.1]])
LABELS = np.array([0, 1, 1, 0])


def test_ece_nll_and_brier_on_a_case_worked_by_hand():
    # 2 bins: (0, 0.5] holds the 0.5 image (right: |1 - 0.5| = 0.5, a quarter of the images);
    # (0.5, 1] the other three (2 of 3 right against a mean confidence of 0.8).
    assert K.ece(PROBS, LABELS, bins=2) == pytest.approx(0.25 * 0.5 + 0.75 * abs(2 / 3 - 0.8))
    # 1 bin: |3/4 right - mean confidence 0.725|.
    assert K.ece(PROBS, LABELS, bins=1) == pytest.approx(0.025)
    expected_nll = -(math.log(0.9) + math.log(0.05) + math.log(0.5) + math.log(0.6)) / 4
    assert K.nll(np.log(PROBS), LABELS) == pytest.approx(expected_nll)
    # Σ_k (p_k - y_k)² per image: 0.015, 1.715, 0.38, 0.26.
    assert K.brier(PROBS, LABELS) == pytest.approx((0.015 + 1.715 + 0.38 + 0.26) / 4)
    f = K.figures(np.log(PROBS), LABELS)
    assert f["top1"] == 0.75
    assert f["mean_confidence"] == pytest.approx(0.725)
    assert f["images"] == 4


def test_a_perfectly_calibrated_model_has_no_ece():
    probs = np.array([[1.0, 0.0]] * 3 + [[0.5, 0.5]] * 2)
    labels = np.array([0, 0, 0, 0, 1])  # the 0.5 bin: one right of two
    assert K.ece(probs, labels) == pytest.approx(0.0)


@pytest.mark.parametrize("objective", ["nll", "brier"])
def test_fit_temperature_recovers_the_temperature_labels_were_drawn_with(objective):
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, (20000, 10))
    true_t = 0.6
    p = K.softmax(logits / true_t)
    labels = (p.cumsum(1) > rng.random((len(p), 1))).argmax(1)
    assert K.fit_temperature(logits, labels, objective) == pytest.approx(true_t, rel=0.03)


def test_the_halves_split_every_class_and_cover_val_once():
    labels = np.array([2, 0, 0, 1, 2, 0, 1, 2, 2, 0])
    fit, judge = K.halves(labels)
    assert sorted([*fit, *judge]) == list(range(len(labels)))
    for c in (0, 1, 2):
        assert (labels[fit] == c).any()
        assert (labels[judge] == c).any()
    assert list(fit) == [0, 1, 3, 5, 7]  # the 1st, 3rd, ... image of each class


def under_confident(n_per_class=40, classes=5, seed=0):
    """Logits a fifth of the scale their accuracy deserves: a temperature well below 1 fits."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(classes), n_per_class)
    logits = rng.normal(0, 1, (len(labels), classes))
    logits[np.arange(len(labels)), labels] += 1.5
    return logits / 5, labels


def test_fit_reports_the_half_it_was_not_fitted_on():
    logits, labels = under_confident()
    record = K.fit(logits, labels)
    assert record["method"] == "temperature"
    assert record["fitted_by"] == "brier"
    assert 0.1 < record["temperature"] < 0.4
    assert record["fit_images"] + record["judged_images"] == len(labels)
    before, after = record["before"], record["after"]
    assert after["nll"] < before["nll"]
    assert after["ece"] < before["ece"]
    assert after["top1"] == before["top1"]  # a temperature changes no ranking
    _, judge = K.halves(labels)
    assert before == K.figures(logits[judge], labels[judge])
    again = K.judged(record, logits / record["temperature"], labels)
    assert again["after"] == pytest.approx(after)


def test_a_temperature_that_raises_nll_on_the_other_half_is_refused():
    logits, labels = under_confident()
    _, judge = K.halves(labels)
    wrong = logits.copy()
    wrong[judge] = np.roll(wrong[judge], 1, axis=1)  # the other half: confidently wrong
    with pytest.raises(K.CalibrationError, match=r"raises NLL.*refused \(--calibrate none"):
        K.fit(wrong * 5, labels)


def test_unknown_methods_are_named_with_the_valid_ones():
    logits, labels = under_confident()
    for method in ("vector", "none"):
        with pytest.raises(K.CalibrationError, match=r"valid: temperature, temperature-nll$"):
            K.fit(logits, labels, method)


def test_selective_thresholds_take_in_a_whole_tie():
    # Most confident first: 0.9 (right), 0.9 (wrong), 0.6 (right), 0.5 (right). The first image
    # alone is 100% right, but no threshold answers it without its 0.9 twin (50%).
    got = K.selective(PROBS, LABELS, targets=(0.8, 0.7, 0.6))
    assert got == [
        {"top1": 0.8, "min_confidence": None, "coverage": 0.0},
        {"top1": 0.7, "min_confidence": 0.5, "coverage": 1.0},
        {"top1": 0.6, "min_confidence": 0.5, "coverage": 1.0},
    ]
    confidence, accuracy, coverage = K.coverage_curve(PROBS, LABELS)
    np.testing.assert_allclose(confidence, [0.9, 0.9, 0.6, 0.5])
    np.testing.assert_allclose(accuracy, [1, 0.5, 2 / 3, 0.75])
    np.testing.assert_allclose(coverage, [0.25, 0.5, 0.75, 1.0])
