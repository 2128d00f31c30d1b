"""Study-level and per-subgroup evaluation against hand computations."""

import numpy as np
import pytest

from fracjax.evaluation.studies import study_level, subgroup_metrics

# Three studies: s1 (positive, 3 images), s2 (negative, 2), s3 (positive, 1).
IDS = ["s1", "s2", "s1", "s3", "s2", "s1"]
LABELS = [1, 0, 1, 1, 0, 1]
PROBS = [0.9, 0.2, 0.3, 0.4, 0.6, 0.6]


def test_study_probability_is_the_mean_or_the_max_of_its_images():
    mean = study_level(IDS, LABELS, PROBS)
    assert mean.ids == ["s1", "s2", "s3"]
    np.testing.assert_array_equal(mean.labels, [1, 0, 1])
    np.testing.assert_allclose(mean.probabilities, [(0.9 + 0.3 + 0.6) / 3, 0.4, 0.4])
    np.testing.assert_array_equal(mean.sizes, [3, 2, 1])
    np.testing.assert_array_equal(mean.first, [0, 1, 3])
    np.testing.assert_allclose(study_level(IDS, LABELS, PROBS, how="max").probabilities, [0.9, 0.6, 0.4])


def test_study_metrics_by_hand():
    studies = study_level(IDS, LABELS, PROBS)
    m = subgroup_metrics(["wrist"] * 3, studies.labels, studies.probabilities, threshold=0.5, samples=0)["all"]
    # Study probabilities 0.6 (pos), 0.4 (neg), 0.4 (pos): at 0.5, TP 1, FN 1, TN 1, FP 0.
    assert m["sensitivity"] == 0.5 and m["specificity"] == 1.0 and m["accuracy"] == pytest.approx(2 / 3)
    # kappa: observed 2/3; expected (1*2 + 2*1) / 9 = 4/9; (2/3 - 4/9) / (5/9) = 0.4.
    assert m["kappa"] == pytest.approx(0.4)
    # AUROC: positive 0.6 beats the negative 0.4; positive 0.4 ties it: (1 + 0.5) / 2.
    assert m["auroc"] == pytest.approx(0.75)


def test_subgroups_get_their_own_rows_and_all():
    rng = np.random.default_rng(0)
    parts = np.asarray(["XR_WRIST", "XR_ELBOW"] * 50)
    labels = rng.integers(0, 2, 100)
    probs = np.where(parts == "XR_WRIST", labels * 0.8 + 0.1, rng.random(100))
    rows = subgroup_metrics(parts, labels, probs, samples=100)
    assert list(rows) == ["XR_ELBOW", "XR_WRIST", "all"]
    assert rows["XR_WRIST"]["auroc"] == 1.0 and rows["XR_WRIST"]["n"] == 50 and rows["all"]["n"] == 100
    assert rows["XR_ELBOW"]["auroc"] < 0.8


def test_bad_study_input_is_named():
    with pytest.raises(ValueError, match="study 's1' holds images labelled both"):
        study_level(["s1", "s1"], [0, 1], [0.1, 0.2])
    with pytest.raises(ValueError, match="unknown study aggregate 'median'"):
        study_level(IDS, LABELS, PROBS, how="median")
    with pytest.raises(ValueError, match="2 study ids, 3 labels"):
        study_level(["a", "b"], [0, 1, 1], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="named 'all'"):
        subgroup_metrics(["all", "x"], [0, 1], [0.2, 0.8], samples=0)
