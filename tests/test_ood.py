"""The OOD detector's arithmetic (fracjax.ood), the probe set, and the detector saved with a
checkpoint and applied by Classifier.predict and fracjax predict."""

import json

import chex
import numpy as np
import pytest

from fracjax import ood
from fracjax.checkpoint import read_ood, write_ood
from fracjax.data import probes


def clusters(n=400, d=12, seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    centres = np.stack([np.zeros(d), np.r_[4.0, np.zeros(d - 1)]])
    scale = np.linspace(0.5, 2.0, d)  # unequal variances: Mahalanobis, not Euclidean
    return centres[labels] + rng.normal(size=(n, d)) * scale, labels, centres, scale


def test_the_covariance_is_shrunk_but_close_when_data_are_plenty():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(5000, 6)) * np.arange(1, 7)
    shrunk = ood.shrunk_covariance(x - x.mean(0))
    np.testing.assert_allclose(shrunk, np.cov(x.T, bias=True), atol=0.2)
    few = rng.normal(size=(10, 50))  # fewer rows than dimensions: the sample covariance is singular
    assert np.linalg.eigvalsh(ood.shrunk_covariance(few - few.mean(0))).min() > 0


def test_stage_scores_are_mahalanobis_distances_and_far_points_score_high():
    x, y, _, scale = clusters()
    detector = ood.fit([x, x[:, :4]], y)
    means = np.stack([x[y == k].mean(0) for k in (0, 1)])
    at_means = np.asarray(ood.stage_scores(detector, [means, means[:, :4]]))
    np.testing.assert_allclose(at_means, 0.0, atol=1e-3)  # at a class's fitted mean its distance is 0
    far = np.asarray(ood.stage_scores(detector, [means + 12 * scale, means[:, :4] + 12 * scale[:4]]))
    assert np.all(far > 50)


def test_the_threshold_accepts_99_percent_of_validation_and_any_unusual_stage_counts():
    x, y, _, _ = clusters(n=2000)
    stages = [x, x[:, :3] * 10.0]  # a second stage on another scale: the per-stage scale evens them out
    detector = ood.with_threshold(ood.fit([s[:1000] for s in stages], y[:1000]), [s[1000:] for s in stages])
    validation = np.asarray(ood.scores(detector, [s[1000:] for s in stages]))
    assert 0.99 <= np.mean(validation <= detector["threshold"]) < 1.0  # the quantile, not the maximum
    odd = [x[1000:1010].copy(), x[1000:1010, :3] * 10.0]
    odd[1][:, 0] += 300.0  # unusual in the second stage only
    assert np.all(np.asarray(ood.scores(detector, odd)) > detector["threshold"])


def test_a_saved_detector_round_trips_and_a_damaged_one_is_refused(tmp_path):
    x, y, _, _ = clusters()
    detector = ood.with_threshold(ood.fit([x, x[:, :5]], y), [x, x[:, :5]])
    write_ood(str(tmp_path), ood.to_arrays(detector))
    loaded = ood.from_arrays(read_ood(str(tmp_path)), str(tmp_path))
    chex.assert_trees_all_equal(loaded, detector)
    arrays = ood.to_arrays(detector)
    with pytest.raises(ValueError, match="NaN or infinity"):
        ood.from_arrays({**arrays, "threshold": np.float32(np.nan)}, "here")
    with pytest.raises(ValueError, match="do not fit together"):
        ood.from_arrays({**arrays, "centres_1": arrays["centres_1"][:, :3]}, "here")
    with pytest.raises(ValueError, match="lacks whiten_1"):
        ood.from_arrays({k: v for k, v in arrays.items() if k != "whiten_1"}, "here")
    with pytest.raises(ValueError, match="NaN or infinity"):
        ood.fit([np.full((4, 3), np.nan)], np.zeros(4))


def test_stages_read_are_spread_over_the_depth_with_the_last():
    assert ood.stage_indices(5) == [0, 1, 2, 3, 4]
    chosen = ood.stage_indices(66)
    assert len(chosen) == ood.MAX_STAGES and chosen[0] == 0 and chosen[-1] == 65


def test_the_probe_set_is_seeded_and_covers_every_kind():
    images, kinds = probes.probe_set(48, per_kind=3, seed=2)
    again, _ = probes.probe_set(48, per_kind=3, seed=2)
    assert kinds == [k for k in probes.KINDS for _ in range(3)]
    for a, b in zip(images, again, strict=True):
        np.testing.assert_array_equal(a, b)
    assert all(im.dtype == np.uint8 and im.shape[:2] == (48, 48) for im in images)
    assert {im.shape for im, k in zip(images, kinds, strict=True) if k == "colour_photo"} == {(48, 48, 3)}


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """A random classifier saved as a run, its detector fitted on synthetic X-rays."""
    from fracjax.data import synthetic
    from fracjax.evaluation import detector
    from fracjax.inference import Classifier
    from tests.helpers import random_classifier, saved_run

    run = saved_run(tmp_path_factory.mktemp("ood") / "run", random_classifier(seed=3, batch_size=16, image_size=64))
    clf = Classifier.from_checkpoint(run, batch_size=16)
    config = synthetic.SyntheticConfig(size=64)
    train, labels = synthetic.generate_arrays(128, "train", seed=0, config=config)
    validation, _ = synthetic.generate_arrays(64, "validation", seed=0, config=config)
    test, _ = synthetic.generate_arrays(32, "test", seed=0, config=config)
    detector.fit_detector(clf, list(train), labels, list(validation))
    return run, clf, test


def test_the_detector_is_saved_with_the_checkpoint_and_used_by_predict(fitted):
    from fracjax.inference import Classifier

    run, clf, test = fitted
    restored = Classifier.from_checkpoint(run, batch_size=16)
    chex.assert_trees_all_close(restored.detector, clf.detector)
    noise = np.random.default_rng(0).integers(0, 256, (3, 64, 64), dtype=np.uint8)
    predicted = restored.predict(list(test) + list(noise), errors="skip")
    scores = predicted.ood_scores
    assert scores.shape == (35,) and np.all(np.isfinite(scores))
    assert np.mean(scores[:32] <= restored.detector["threshold"]) >= 0.9  # its own kind of image is accepted
    assert np.all(scores[32:] > restored.detector["threshold"])  # uniform noise is not
    assert all(predicted.flagged[k].startswith("unlike the images it was trained on") for k in (32, 33, 34))
    images, kinds = probes.probe_set(64, per_kind=4, seed=1)
    wanted = [k for k, kind in enumerate(kinds) if kind in ("uniform_noise", "document", "colour_photo")]
    probed = restored.predict([images[k] for k in wanted], errors="skip")
    assert not probed.in_distribution.any()  # noise and text by the detector, colour by the checks too


def test_predict_rows_carry_the_ood_score(fitted, tmp_path):
    from PIL import Image

    from fracjax import cli

    run, _, test = fitted
    Image.fromarray(test[0, ..., 0]).save(tmp_path / "x.png")
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 64), dtype=np.uint8)).save(tmp_path / "noise.png")
    out = tmp_path / "rows.json"
    cli.main(["predict", run, str(tmp_path / "x.png"), str(tmp_path / "noise.png"), "--json", str(out)])
    xray, noise = json.loads(out.read_text())["results"]
    assert isinstance(xray["ood_score"], float) and noise["ood_score"] > xray["ood_score"]
    assert noise["in_distribution"] is False and noise["label"] is None


@pytest.mark.parametrize("fmt", ["stablehlo", "onnx"])
def test_exports_return_the_ood_score_and_the_card_states_the_rule(fitted, tmp_path, fmt):
    import fracjax

    run, clf, test = fitted
    exported = fracjax.deploy.load(fracjax.export(run, str(tmp_path / fmt), format=fmt))
    outputs = exported(test[:4].astype(np.float32))
    assert set(outputs) == {"probability", "logit", "ood_score"}
    expected = clf.predict(list(test[:4]), errors="skip").ood_scores
    np.testing.assert_allclose(outputs["ood_score"], expected, rtol=1e-4, atol=1e-3)
    card = exported.card
    assert card["ood"]["threshold"] == pytest.approx(float(clf.detector["threshold"]))
    assert card["ood"]["method"] == ood.METHOD and "ood_score" in card["outputs"]
    assert card["parity"]["max_ood_score_relative_difference"] <= 1e-4
