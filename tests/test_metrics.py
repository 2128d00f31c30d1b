import math

import numpy as np
import pytest

from fracjax import metrics


def test_hand_computed_case():
    labels = np.array([1, 1, 1, 0, 0, 0, 0, 1])
    probs = np.array([0.9, 0.8, 0.3, 0.2, 0.6, 0.1, 0.4, 0.7])
    m = metrics.binary_metrics(labels, probs, threshold=0.5)
    assert m["confusion"] == {"tp": 3, "fp": 1, "tn": 3, "fn": 1}
    assert m["accuracy"] == 6 / 8
    assert m["sensitivity"] == 3 / 4 and m["specificity"] == 3 / 4
    assert m["precision"] == 3 / 4 and m["f1"] == pytest.approx(3 / 4)
    # kappa: p_o = .75, p_e = .5*.5 + .5*.5 = .5 -> .5
    assert m["kappa"] == pytest.approx(0.5)
    # AUROC: of 16 positive/negative pairs, positives outrank negatives in 14.
    # pos 0.9, 0.8, 0.7 beat all 4 negatives (12); 0.3 beats 0.2 and 0.1 (2).
    assert m["auroc"] == pytest.approx(14 / 16)


def test_ties_count_half():
    labels = np.array([1, 0, 1, 0])
    probs = np.array([0.5, 0.5, 0.9, 0.1])
    # pairs: (0.5 vs 0.5) tie = .5, (0.5 vs .1) = 1, (.9 vs .5) = 1, (.9 vs .1) = 1 -> 3.5 / 4
    assert metrics.auroc(labels, probs) == pytest.approx(3.5 / 4)


def test_constant_predictor():
    labels = np.array([1, 0, 1, 0, 0])
    m = metrics.binary_metrics(labels, np.full(5, 0.7))
    assert m["auroc"] == 0.5
    assert m["sensitivity"] == 1.0 and m["specificity"] == 0.0
    assert m["kappa"] == 0.0
    m = metrics.binary_metrics(labels, np.full(5, 0.2))
    assert m["sensitivity"] == 0.0 and math.isnan(m["precision"])  # no positive calls: undefined, not 0


def test_one_class_auroc_is_nan():
    assert math.isnan(metrics.auroc(np.ones(4), np.linspace(0, 1, 4)))


def test_is_better():
    assert metrics.is_better(0.7, None) and metrics.is_better(0.8, 0.7)
    assert not metrics.is_better(0.7, 0.7) and not metrics.is_better(float("nan"), 0.5)


def test_shape_mismatch():
    with pytest.raises(ValueError, match="shape"):
        metrics.binary_metrics(np.ones(3), np.ones(4))


def test_non_finite_model_outputs_are_refused_not_turned_into_metrics():
    labels = np.array([0, 1, 0, 1])
    with pytest.raises(metrics.NonFiniteValuesError, match=r"1 of 4 scores are NaN or infinite \(first at index 2\)"):
        metrics.metrics_from_logits(labels, [0.1, 0.3, np.nan, 2.0])
    with pytest.raises(metrics.NonFiniteValuesError, match="probabilities"):
        metrics.binary_metrics(labels, np.array([0.1, np.nan, 0.2, 0.9]), scores=np.zeros(4))
    assert metrics.metrics_from_logits(labels, [-1.0, 1.0, -2.0, 3.0])["auroc"] == 1.0
