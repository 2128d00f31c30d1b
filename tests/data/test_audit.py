import json

import numpy as np
import pytest

from fracjax.commands import audit as audit_command
from fracjax.data import audit, pipeline, synthetic


@pytest.fixture(scope="module")
def images():
    return synthetic.generate_arrays(60, "train", seed=77)[0]


def test_symmetry_inverse():
    x = np.arange(12.0).reshape(3, 4)
    for g in range(8):
        moved = audit.symmetries(x)[g]
        np.testing.assert_array_equal(audit.symmetries(moved)[audit._inverse_symmetry(g)], x)


def test_exact_and_transformed_copies_score_high_distinct_low(images):
    config = audit.AuditConfig()
    rng = np.random.default_rng(0)
    assert audit.verify_pair(images[0], images[0], config) > 0.99
    copy = audit.transformed_copy(images[1], rng)
    # Put it back upright by trying the 8 symmetries, as the audit does.
    best = max(audit.verify_pair(images[1], s, config) for s in audit.symmetries(copy[..., 0]))
    assert best >= config.threshold
    assert audit.verify_pair(images[2], images[3], config) < config.threshold


def test_planted_copies_precision_and_recall(images):
    result = audit.planted_precision_recall(images, num_copies=12, seed=1, config=audit.AuditConfig(workers=1))
    assert result["precision"] >= 0.9, result
    assert result["recall"] >= 0.8, result


def test_report_counts_and_clean_test(images):
    rng = np.random.default_rng(2)
    train = pipeline.ArraySource(images[:30], np.zeros(30), [f"train/{i}" for i in range(30)])
    test_images = images[40:46].copy()
    # Two test images are near-copies of training images (resized to the set's size).
    test_images[0] = np.asarray(
        audit._bilinear(audit._grey(audit.transformed_copy(images[5], rng)), images.shape[1]), np.uint8
    )[..., None]
    test_images[1] = images[7]
    test = pipeline.ArraySource(test_images, np.zeros(6), [f"test/{i}" for i in range(6)])
    report = audit.audit({"train": train, "test": test}, audit.AuditConfig(workers=1), clean_test=True)
    cross = [p for p in report.pairs if {p["a"]["split"], p["b"]["split"]} == {"train", "test"}]
    found = {(p["a"]["filename"], p["b"]["filename"]) for p in cross}
    assert ("train/5", "test/0") in found and ("train/7", "test/1") in found
    assert report.counts.get("train/test", 0) == len(cross)
    assert set(report.clean_test) == {f"test/{i}" for i in range(2, 6)}
    payload = json.loads(json.dumps(report.to_json()))
    assert {"pairs", "counts", "clean_test"} <= set(payload)
    assert all(0.0 < p["similarity"] <= 1.0001 for p in payload["pairs"])


def test_cli_on_a_prepared_set(tmp_path, capsys):
    from fracjax.data import builders

    config = builders.SyntheticFractureConfig(name="audit", image_size=64, num_train=12, num_validation=4, num_test=4)
    builders.SyntheticFracture(config=config, data_dir=str(tmp_path)).download_and_prepare()
    out = tmp_path / "audit.json"
    code = audit_command.main(
        [
            "--dataset",
            "synthetic_fracture/audit",
            "--data-dir",
            str(tmp_path),
            "--json",
            str(out),
            "--clean-test",
            "--workers",
            "1",
        ]
    )
    assert code == 0
    payload = json.loads(out.read_text())
    assert set(payload) >= {"pairs", "counts", "clean_test", "num_examples"}
    assert payload["num_examples"] == {"train": 12, "validation": 4, "test": 4}
    assert set(payload["clean_test"]) <= {
        f"test/{c}/{i:05d}.png" for c in ("fractured", "not_fractured") for i in range(4)
    }
    assert "clean test:" in capsys.readouterr().out


def test_cli_errors(tmp_path, capsys):
    assert audit_command.main(["--dataset", "synthetic_fracture", "--data-dir", str(tmp_path)]) == 2
    assert "not prepared" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        audit_command.main(["--threshold", "2"])


def test_identical_blank_images_across_splits_are_found(images):
    blank = np.zeros_like(images[0])
    train = pipeline.ArraySource(np.stack([images[0], blank, images[1]]), np.zeros(3), ["t0", "t-blank", "t1"])
    bigger_blank = np.full((images.shape[1] * 2, images.shape[2] * 2, 1), 0, np.uint8)
    test = pipeline.ArraySource(np.stack([images[2], images[0].copy()]), np.zeros(2), ["s0", "s-copy"])
    other = pipeline.ArraySource(bigger_blank[None], np.zeros(1), ["v-blank"])
    report = audit.audit({"train": train, "validation": other, "test": test}, audit.AuditConfig(workers=1),
                         clean_test=True)
    found = {(p["a"]["filename"], p["b"]["filename"], p["similarity"]) for p in report.pairs}
    assert ("t-blank", "v-blank", 1.0) in found  # constant images have flat thumbnails: only hashing sees them
    assert ("t0", "s-copy", 1.0) in found
    assert report.clean_test == ["s0"]
    assert audit.exact_duplicates([blank, images[3], images[3]]) == [(1, 2)]


def test_empty_splits_are_a_clear_error(images):
    train = pipeline.ArraySource(images[:3], np.zeros(3))
    empty = pipeline.ArraySource(images[:0], np.zeros(0))
    with pytest.raises(ValueError, match=r"nothing to audit in split\(s\) \['test'\]: train 3, test 0 examples"):
        audit.audit({"train": train, "test": empty})
