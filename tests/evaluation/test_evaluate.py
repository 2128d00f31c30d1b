"""fracjax.evaluate: metrics with intervals, clean-test columns from an
audit, calibration saved in a checkpoint, the HTML report."""

import json

import numpy as np
import pytest

import fracjax
from fracjax.evaluation import evaluator as evaluate_lib
from fracjax.inference import Classifier
from fracjax.metrics import binary_metrics
from tests.helpers import random_classifier


@pytest.fixture(scope="module")
def classifier():
    return random_classifier(seed=0, batch_size=16)


@pytest.fixture(scope="module")
def data():
    images, labels = fracjax.data.generate_arrays(40, "test", seed=5, config=fracjax.data.SyntheticConfig(size=32))
    return images, labels, [f"test/{i:05d}.png" for i in range(40)]


def test_metrics_match_the_predictions(classifier, data):
    images, labels, names = data
    result = fracjax.evaluate(classifier, data, bootstrap=200)
    probs = classifier.predict(images)
    np.testing.assert_allclose(result.probabilities, probs, rtol=1e-6)
    expected = binary_metrics(labels, probs, 0.5)
    for key in ("accuracy", "auroc", "sensitivity", "specificity", "kappa", "f1"):
        assert result.metrics[key] == pytest.approx(expected[key], nan_ok=True), key
    for key in ("accuracy", "auroc", "sensitivity", "specificity"):
        low, high = result.metrics["intervals"][key]
        assert low <= result.metrics[key] <= high
    assert result.clean is None
    table = result.table()
    assert "| accuracy |" in table and "bootstrap" in table
    assert result.to_json(with_predictions=True)["predictions"][3]["filename"] == names[3]


def test_clean_test_column_from_an_audit(classifier, data, tmp_path):
    images, labels, names = data
    clean = names[::2]
    result = fracjax.evaluate(classifier, data, audit={"pairs": [], "clean_test": clean}, bootstrap=100)
    assert result.clean["n"] == 20
    expected = binary_metrics(labels[::2], result.probabilities[::2], 0.5)
    assert result.clean["accuracy"] == pytest.approx(expected["accuracy"])
    assert "clean test (n=20)" in result.table()
    # An audit without a clean list: test examples in a cross-split pair are left out.
    audit = {
        "pairs": [
            {"a": {"split": "train", "filename": "train/1.png"}, "b": {"split": "test", "filename": names[0]}},
            {"a": {"split": "test", "filename": names[1]}, "b": {"split": "test", "filename": names[2]}},
        ]
    }
    path = tmp_path / "audit.json"
    path.write_text(json.dumps(audit))
    result = fracjax.evaluate(classifier, data, audit=str(path), bootstrap=100)
    assert result.clean["n"] == 39 and not result.clean_mask[0] and result.clean_mask[1]


def test_bad_audit_and_threshold_are_named(classifier, data, tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.json"):
        fracjax.evaluate(classifier, data, audit=str(tmp_path / "nope.json"))
    with pytest.raises(ValueError, match="none of its 2 clean filenames"):
        fracjax.evaluate(classifier, data, audit={"clean_test": ["x", "y"], "pairs": []})
    with pytest.raises(KeyError, match="no operating point 'youden'"):
        fracjax.evaluate(classifier, data, threshold="youden")


def test_calibration_travels_with_the_classifier(classifier, data):
    # (That temperature scaling lowers the ECE of a miscalibrated model is
    # tested in test_stats on a model with a known miscalibration.)
    images, labels, _ = data
    logits = classifier.logits(images)
    calibration = evaluate_lib.calibrate(labels, logits)
    t = calibration["temperature"]
    assert t == pytest.approx(fracjax.evaluation.stats.fit_temperature(labels, logits))
    calibrated = Classifier(classifier.spec, classifier.variables, 16, calibration)
    np.testing.assert_allclose(calibrated.predict(images), 1 / (1 + np.exp(-logits / t)), rtol=1e-5)
    np.testing.assert_allclose(calibrated.predict(images, calibrated=False), classifier.predict(images), rtol=1e-6)
    # Operating points are chosen on these (calibrated) probabilities and meet their target here.
    point = calibrated.threshold_for("sensitivity_0.95")
    assert binary_metrics(labels, calibrated.predict(images), point)["sensitivity"] >= 0.95
    assert calibrated.classify(images[:3], operating_point="youden")[0] in ("fractured", "not_fractured")


def test_a_chance_model_is_flagged_and_bootstrap_zero_works(classifier, data):
    result = fracjax.evaluate(classifier, data, bootstrap=0)
    assert result.metrics["intervals"] == {}
    assert "no intervals (bootstrap=0)" in result.table()
    flagged = fracjax.evaluate(classifier, data, bootstrap=200)  # a random model on 40 images
    low, high = flagged.metrics["intervals"]["auroc"]
    assert (low <= 0.5 <= high) == any("holds 0.5" in w for w in flagged.warnings())
    assert all(f"WARNING: {w}" in flagged.table() for w in flagged.warnings())
    # Ranking metrics come from the logits: the same with and without a temperature.
    hot = Classifier(classifier.spec, classifier.variables, 16, {"temperature": 20.0})
    scaled = fracjax.evaluate(hot, data, bootstrap=200)
    assert scaled.metrics["auroc"] == flagged.metrics["auroc"]
    assert scaled.metrics["intervals"]["auroc"] == flagged.metrics["intervals"]["auroc"]


def _fields(n: int):
    """Four images per study, two studies per patient, parts alternating by patient; a box on every other image."""
    study = [f"s{i // 4}" for i in range(n)]
    patient = [f"p{i // 8}" for i in range(n)]
    part = ["hand" if (i // 8) % 2 else "wrist" for i in range(n)]
    boxes = [np.asarray([[0.2, 0.2, 0.6, 0.7]], np.float32) if i % 2 else np.zeros((0, 4), np.float32)
             for i in range(n)]
    return {"study": study, "patient": patient, "body_part": part, "boxes": boxes}


def test_groups_parts_studies_and_boxes_shape_the_evaluation(classifier, data):
    images, _, names = data
    labels = np.asarray([(i // 4) % 2 for i in range(len(names))])  # one label per study
    fields = _fields(len(names))
    result = fracjax.evaluate(classifier, (images, labels, names, fields), bootstrap=200)
    plain = fracjax.evaluate(classifier, (images, labels, names, fields), bootstrap=200, cluster_by="none",
                             localise=False)
    assert result.cluster == "patient" and plain.cluster is None
    assert result.metrics["auroc"] == pytest.approx(plain.metrics["auroc"])
    assert result.metrics["intervals"]["auroc"] != plain.metrics["intervals"]["auroc"]
    # Per body part: the metrics of that part's images.
    hand = np.asarray(fields["body_part"]) == "hand"
    expected = binary_metrics(labels[hand], result.probabilities[hand], 0.5)
    assert set(result.subgroups) == {"hand", "wrist", "all"}
    assert result.subgroups["hand"]["auroc"] == pytest.approx(expected["auroc"])
    # Study level: the mean probability of each study's four images.
    study_probs = result.probabilities.reshape(-1, 4).mean(axis=1)
    expected = binary_metrics(labels[::4], study_probs, 0.5)
    assert result.studies["n"] == len(names) // 4 and result.studies["how"] == "mean"
    assert result.studies["by"]["all"]["auroc"] == pytest.approx(expected["auroc"])
    assert result.studies["by"]["all"]["kappa"] == pytest.approx(expected["kappa"], nan_ok=True)
    # Localisation: the true positives that have a box, for both saliency methods.
    scored = int(np.sum((labels == 1) & (result.probabilities >= 0.5) & (np.arange(len(names)) % 2 == 1)))
    assert set(result.localisation) == {"gradcam", "gradcam++"}
    for scores in result.localisation.values():
        assert scores["n"] == scored
        if scored:
            assert 0.0 <= scores["pointing_game"]["value"] <= 1.0
    table = result.table()
    assert "study level" in table and "pointing game" in table and "| hand |" in table
    assert "resampling patients" in table
    saved = json.loads(json.dumps(result.to_json()))
    assert saved["cluster"] == "patient" and "all" in saved["studies"]["by"]
    # A study whose images disagree on the label: no study rows, and the warning says which.
    mixed = dict(fields, study=["one"] * len(names))
    odd = fracjax.evaluate(classifier, (images, labels, names, mixed), bootstrap=0, localise=False)
    assert "error" in odd.studies and any("no study-level metrics: study 'one'" in w for w in odd.warnings())
    assert "study level" not in odd.table()
    with pytest.raises(ValueError, match="cluster_by"):
        fracjax.evaluate(classifier, (images, labels, names, fields), cluster_by="ward")
    with pytest.raises(ValueError, match="no study ids"):
        fracjax.evaluate(classifier, data, cluster_by="study")


def test_unknown_patient_ids_are_each_their_own_cluster(classifier, data):
    images, labels, names = data
    fields = {"patient": ["P1"] + [""] * (len(names) - 1)}  # one known patient, the rest unknown
    clustered = fracjax.evaluate(classifier, (images, labels, names, fields), bootstrap=200, localise=False)
    plain = fracjax.evaluate(classifier, (images, labels, names, fields), bootstrap=200, cluster_by="none")
    assert clustered.cluster == "patient"
    # Every example its own cluster: exactly the image-level bootstrap (not one cluster of the unknowns).
    assert clustered.metrics["intervals"] == plain.metrics["intervals"]
