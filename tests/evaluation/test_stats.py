"""Curves, bootstrap intervals, operating points and calibration against
hand-computed cases and simulations with a known truth."""

import numpy as np
import pytest

from fracjax.evaluation import stats
from fracjax.metrics import auroc, binary_metrics


def test_roc_curve_by_hand():
    labels = [1, 0, 1, 0]
    scores = [0.9, 0.8, 0.8, 0.1]  # a tie between a positive and a negative
    roc = stats.roc_curve(labels, scores)
    np.testing.assert_allclose(roc["fpr"], [0.0, 0.0, 0.5, 1.0])
    np.testing.assert_allclose(roc["tpr"], [0.0, 0.5, 1.0, 1.0])
    np.testing.assert_allclose(roc["thresholds"][1:], [0.9, 0.8, 0.1])
    # The trapezoid area equals the rank (Mann-Whitney) AUROC with the tie counted half.
    assert np.trapezoid(roc["tpr"], roc["fpr"]) == pytest.approx(auroc(labels, scores)) == pytest.approx(0.875)


def test_pr_curve_by_hand():
    pr = stats.pr_curve([1, 0, 1, 0], [0.9, 0.7, 0.6, 0.1])
    np.testing.assert_allclose(pr["precision"], [1.0, 0.5, 2 / 3, 0.5])
    np.testing.assert_allclose(pr["recall"], [0.5, 0.5, 1.0, 1.0])
    assert pr["average_precision"] == pytest.approx(0.5 * 1.0 + 0.5 * 2 / 3)


def test_constant_predictor():
    labels = np.array([0, 1] * 50)
    probs = np.full(100, 0.5)
    m = stats.metrics_with_intervals(labels, probs, threshold=0.5, samples=200)
    assert m["auroc"] == 0.5 and m["sensitivity"] == 1.0 and m["specificity"] == 0.0
    assert m["kappa"] == 0.0
    assert m["intervals"]["auroc"] == (0.5, 0.5)  # every resample ties everything
    assert m["ece"] == pytest.approx(0.0)  # 0.5 predicted, half fractured: calibrated
    roc = stats.roc_curve(labels, probs)
    assert len(roc["fpr"]) == 2  # one distinct score: (0, 0) -> (1, 1)


def test_resampled_auroc_matches_the_reference_per_resample():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 40)
    scores = np.round(rng.random(40), 1)  # many ties
    idx = rng.integers(0, 40, (20, 40))
    counts = np.stack([np.bincount(row, minlength=40) for row in idx]).astype(float)
    fast = stats._weighted_auroc(counts, labels, scores)
    slow = [auroc(labels[row], scores[row]) for row in idx]
    np.testing.assert_allclose(fast, slow)
    assert np.isnan(stats._weighted_auroc(np.ones((1, 40)), np.zeros(40, int), scores)).all()


def test_cluster_bootstrap_is_wider_on_correlated_images():
    """Eight images per patient, nearly the same score within a patient: the
    image-level bootstrap counts them as 8x the evidence, the cluster one not."""
    rng = np.random.default_rng(4)
    patients = 60
    patient_label = rng.integers(0, 2, patients)
    patient_score = np.clip(patient_label * 0.25 + rng.random(patients) * 0.75, 0, 1)
    groups = np.repeat(np.arange(patients), 8)
    labels = patient_label[groups]
    probs = np.clip(patient_score[groups] + rng.normal(0, 0.01, groups.size), 0, 1)
    flat = stats.bootstrap_intervals(labels, probs, samples=400, seed=1)
    clustered = stats.bootstrap_intervals(labels, probs, samples=400, seed=1, groups=[f"p{g}" for g in groups])
    for key in ("accuracy", "auroc", "sensitivity", "specificity"):
        width = lambda iv: iv[1] - iv[0]  # noqa: E731
        assert width(clustered[key]) > 2 * width(flat[key]), (key, flat[key], clustered[key])


def test_one_example_per_cluster_is_the_plain_bootstrap():
    rng = np.random.default_rng(6)
    labels, probs = rng.integers(0, 2, 80), rng.random(80)
    plain = stats.bootstrap_intervals(labels, probs, samples=200, seed=2)
    singletons = stats.bootstrap_intervals(labels, probs, samples=200, seed=2, groups=np.arange(80) * 7)
    assert plain == singletons
    with pytest.raises(ValueError, match="groups \\(3\\) and labels \\(80\\)"):
        stats.bootstrap_intervals(labels, probs, groups=[1, 2, 3])


def test_bootstrap_interval_coverage_on_a_simulated_case():
    """A 95% interval for accuracy should hold the true accuracy about 95% of
    the time; percentile intervals at n=150 run slightly narrow."""
    rng = np.random.default_rng(1)
    true_accuracy, n, trials = 0.8, 150, 120
    covered = 0
    for t in range(trials):
        labels = rng.integers(0, 2, n)
        correct = rng.random(n) < true_accuracy
        probs = np.where(correct, labels, 1 - labels) * 0.8 + 0.1
        low, high = stats.bootstrap_intervals(labels, probs, samples=400, seed=t, metrics=("accuracy",))["accuracy"]
        covered += low <= true_accuracy <= high
    assert 0.88 <= covered / trials <= 0.99, covered / trials


def test_bootstrap_interval_contains_the_estimate_and_shrinks_with_n():
    rng = np.random.default_rng(2)
    widths = []
    for n in (100, 1600):
        labels = rng.integers(0, 2, n)
        probs = np.clip(labels * 0.3 + rng.random(n) * 0.7, 0, 1)
        m = stats.metrics_with_intervals(labels, probs, samples=300)
        for key in stats.INTERVAL_METRICS:
            low, high = m["intervals"][key]
            assert low <= m[key] <= high, key
        widths.append(m["intervals"]["auroc"][1] - m["intervals"]["auroc"][0])
    assert widths[1] < widths[0] / 2.5  # ~1/sqrt(16) = 1/4


def test_bootstrap_counts_agree_with_the_metrics_on_one_resample():
    """With one resample that is the data itself (seeded identity check):
    every bootstrapped metric equals binary_metrics on the resampled data."""
    rng = np.random.default_rng(5)
    labels = rng.integers(0, 2, 60)
    probs = rng.random(60)
    idx = np.random.default_rng(9).integers(0, 60, size=(1, 60))[0]
    out = stats.bootstrap_intervals(labels, probs, 0.4, samples=1, seed=9)
    expected = binary_metrics(labels[idx], probs[idx], 0.4)
    for key in stats.INTERVAL_METRICS:
        assert out[key][0] == pytest.approx(expected[key]), key


def test_undefined_metric_gives_nan_interval():
    out = stats.bootstrap_intervals(np.zeros(10, int), np.linspace(0, 1, 10), samples=50)
    assert np.isnan(out["sensitivity"]).all() and np.isnan(out["auroc"]).all()
    assert np.isfinite(out["specificity"]).all()


@pytest.mark.parametrize("target", [0.8, 0.9, 0.95, 1.0])
def test_threshold_for_sensitivity_meets_the_target_where_chosen(target):
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 2, 300)
    probs = np.clip(0.25 * labels + rng.random(300) * 0.75, 0, 1)
    t = stats.threshold_for_sensitivity(labels, probs, target)
    assert binary_metrics(labels, probs, t)["sensitivity"] >= target
    # It is the highest such threshold: any higher one misses the target.
    assert binary_metrics(labels, probs, np.nextafter(t, 2.0))["sensitivity"] < target


def test_youden_threshold_by_hand():
    labels = [0, 0, 0, 1, 1, 1]
    probs = [0.1, 0.2, 0.6, 0.4, 0.7, 0.9]
    # J at 0.7: 2/3 - 0 ; at 0.4: 1 - 1/3 ; at 0.6: 2/3 - 1/3. The highest of the best is 0.7.
    assert stats.youden_threshold(labels, probs) == pytest.approx(0.7)
    with pytest.raises(ValueError, match="both classes"):
        stats.youden_threshold([1, 1], [0.2, 0.3])


def test_ece_by_hand():
    # Bin [0.8, 0.9): 4 predictions of 0.8, 2 fractured -> gap 0.3; bin [0.2, 0.3): 0.2, 0 of 2 -> 0.2.
    labels = [1, 1, 0, 0, 0, 0]
    probs = [0.8, 0.8, 0.8, 0.8, 0.2, 0.2]
    assert stats.expected_calibration_error(labels, probs, bins=10) == pytest.approx((4 * 0.3 + 2 * 0.2) / 6)


def test_temperature_scaling_repairs_an_overconfident_model():
    rng = np.random.default_rng(4)
    z = rng.normal(0.0, 2.0, 20000)
    labels = (rng.random(z.size) < 1 / (1 + np.exp(-z))).astype(int)
    overconfident = 3.0 * z
    t = stats.fit_temperature(labels, overconfident)
    assert t == pytest.approx(3.0, rel=0.08)
    before = stats.expected_calibration_error(labels, 1 / (1 + np.exp(-overconfident)))
    after = stats.expected_calibration_error(labels, 1 / (1 + np.exp(-overconfident / t)))
    assert after < before / 3
    # Already calibrated: T stays near 1.
    assert stats.fit_temperature(labels, z) == pytest.approx(1.0, rel=0.08)
    np.testing.assert_allclose(stats.apply_temperature(1 / (1 + np.exp(-overconfident[:50])), t),
                               1 / (1 + np.exp(-overconfident[:50] / t)), atol=1e-6)


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="differ in length"):
        stats.roc_curve([0, 1], [0.5])
    with pytest.raises(ValueError, match="0 or 1"):
        stats.roc_curve([0, 2], [0.5, 0.5])
    with pytest.raises(ValueError, match="target sensitivity"):
        stats.threshold_for_sensitivity([0, 1], [0.1, 0.9], 1.5)


def test_calibration_never_changes_ranking_metrics_of_a_chance_model():
    from fracjax.evaluation.calibration import calibrate
    from fracjax.metrics import probabilities_from_logits

    rng = np.random.default_rng(7)
    labels = rng.integers(0, 2, 500)
    logits = rng.normal(0.0, 1e-3, 500).astype(np.float32)  # no signal, tiny spread: what a chance model gives
    calibration = calibrate(labels, logits)
    assert calibration["temperature"] == stats.TEMPERATURE_RANGE[1] and calibration["temperature_at_bound"]
    raw = probabilities_from_logits(logits)
    scaled = probabilities_from_logits(logits, calibration["temperature"])
    assert np.unique(scaled).size == np.unique(logits).size
    a = stats.metrics_with_intervals(labels, raw, samples=200, scores=logits)
    b = stats.metrics_with_intervals(labels, scaled, samples=200, scores=logits)
    for key in ("auroc", "average_precision"):
        assert a[key] == b[key]
    assert a["intervals"]["auroc"] == b["intervals"]["auroc"]
    warnings = stats.calibration_warnings(calibration)
    assert len(warnings) == 2 and "bound" in warnings[0] and "base rate" in warnings[1]
    assert stats.chance_warnings(b, "test") and "holds 0.5" in stats.chance_warnings(b, "test")[0]


def test_chance_warning_only_when_the_interval_holds_one_half():
    m = {"n": 10, "auroc": 0.7, "intervals": {"auroc": (0.62, 0.78)}}
    assert stats.chance_warnings(m, "test") == []
    m["intervals"]["auroc"] = (0.45, 0.78)
    assert "[0.450, 0.780] holds 0.5" in stats.chance_warnings(m, "test")[0]
    assert "undefined" in stats.chance_warnings({"n": 4, "auroc": float("nan")}, "test")[0]


@pytest.mark.parametrize("interval", [(0.262, 0.487), (0.0, 0.0)])
def test_an_interval_below_one_half_warns_of_worse_than_chance(interval):
    m = {"n": 40, "auroc": interval[1] - 0.01, "intervals": {"auroc": interval}}
    (warning,) = stats.chance_warnings(m, "test")
    assert "lies below 0.5" in warning and "swapped" in warning


def test_a_class_of_fewer_than_30_images_warns_of_a_small_sample():
    labels = np.array([1] * 5 + [0] * 3)
    m = binary_metrics(labels, labels.astype(float))  # perfect: accuracy 1.000
    (warning,) = stats.sample_warnings(m, "test")
    assert "only 5 fractured and 3 not-fractured images (n = 8" in warning
    labels = np.array([1] * 30 + [0] * 30)
    assert stats.sample_warnings(binary_metrics(labels, labels * 0.9), "test") == []


def test_thresholds_print_with_enough_digits_to_differ():
    assert stats.format_thresholds([0.500031, 0.500012, 0.5]) == ["0.50003", "0.50001", "0.50000"]
    assert stats.format_thresholds([0.25, 0.75]) == ["0.250", "0.750"]
    assert stats.format_thresholds([0.4, 0.4]) == ["0.400", "0.400"]  # equal values stay equal


def test_no_bootstrap_means_no_intervals():
    m = stats.metrics_with_intervals([0, 1, 1, 0], [0.2, 0.7, 0.6, 0.4], samples=0)
    assert m["intervals"] == {} and m["auroc"] == 1.0


def test_a_threshold_near_one_half_never_prints_as_one_half():
    from fracjax.inference import format_threshold

    assert stats.format_thresholds([0.499778]) == ["0.4998"]
    assert format_threshold(0.499776) == "0.4998" and format_threshold(0.5) == "0.500"
    assert format_threshold(0.42) == "0.420"
