"""Exported artifacts: StableHLO (parity with Classifier.predict in a process
that never imports fracjax, too) and ONNX (in onnxruntime), the model card,
the parity check before writing, and the refusals."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import fracjax
from fracjax.deploy import ExportError
from fracjax.inference import Classifier
from tests.helpers import CALIBRATION, random_classifier


@pytest.fixture(scope="module")
def classifier():
    clf = random_classifier(seed=5, batch_size=4)
    return Classifier(clf.spec, clf.variables, batch_size=4, calibration=CALIBRATION)


@pytest.fixture(scope="module")
def exported(classifier, tmp_path_factory):
    return fracjax.export(classifier, str(tmp_path_factory.mktemp("e") / "model"))


@pytest.fixture(scope="module")
def pixels():
    return np.random.default_rng(0).integers(0, 256, (7, 32, 32, 1), dtype=np.uint8)


JAX_ONLY = """
import hashlib, json, sys
import numpy as np
from jax import export
folder = sys.argv[1]
card = json.load(open(folder + "/model.json"))
blob = open(folder + "/" + card["artifact"], "rb").read()
assert hashlib.sha256(blob).hexdigest() == card["sha256"]
model = export.deserialize(bytearray(blob))
pixels = np.load(sys.argv[2]).astype(np.float32)
out = {n: np.asarray(model.call(pixels[:n])[0]).tolist() for n in (1, 7)}
assert not any(name.startswith("fracjax") for name in sys.modules)
print(json.dumps(out))
"""


def test_a_process_with_only_jax_computes_what_predict_does(exported, classifier, pixels, tmp_path):
    np.save(tmp_path / "pixels.npy", pixels)
    done = subprocess.run([sys.executable, "-c", JAX_ONLY, exported, str(tmp_path / "pixels.npy")],
                          capture_output=True, text=True, timeout=600, cwd=str(tmp_path))
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    expected = classifier.predict(pixels)
    np.testing.assert_allclose(out["1"], expected[:1], atol=1e-5)
    np.testing.assert_allclose(out["7"], expected, atol=1e-5)


def test_load_checks_the_artifact_and_computes_what_predict_does(exported, classifier, pixels):
    model = fracjax.deploy.load(exported)
    for n in (1, 7):
        out = model(pixels[:n])
        np.testing.assert_allclose(out["probability"], classifier.predict(pixels[:n]), atol=1e-5)
        np.testing.assert_allclose(out["logit"], classifier.logits(pixels[:n]), atol=1e-4)
    np.testing.assert_allclose(model(pixels[:, :, :, 0].astype(np.float32))["probability"],
                               model(pixels)["probability"], atol=0)
    with pytest.raises(ValueError, match=r"expected grey pixels \(N, 32, 32\[, 1\]\)"):
        model(np.zeros((2, 64, 64, 1)))


def test_the_model_card_says_what_the_model_is_and_is_not(exported, classifier):
    card = fracjax.deploy.read_card(exported)
    assert card["format"] == "stablehlo" and {"cpu", "cuda"} <= set(card["platforms"])
    assert card["parity"]["max_probability_difference"] <= card["parity"]["tolerance"] == 1e-5
    assert card["model"]["model"] == "mobilenet_v3_small" and card["model"]["head"] == "linear"
    assert card["parameters"] == sum(np.size(x) for x in __import__("jax").tree_util.tree_leaves(
        classifier.variables["params"]))
    assert card["input"]["shape"] == ["batch", 32, 32, 1] and card["input"]["pixel_range"] == [0, 255]
    assert card["temperature"] == 1.7
    assert card["operating_points"]["youden"] == {"threshold": 0.42, "validation_sensitivity": 0.8,
                                                  "validation_specificity": 0.7}
    assert card["versions"]["jax"] and "not a medical device" in card["intended_use"]
    assert card["sha256"] == fracjax.deploy.common.sha256_of(os.path.join(exported, card["artifact"]))


def test_refusals_name_what_is_wrong(exported, classifier, tmp_path):
    before = os.listdir(exported)
    with pytest.raises(ExportError, match=r"--format: 'tflite' is not one of \('stablehlo', 'onnx'\)"):
        fracjax.export(classifier, str(tmp_path / "x"), format="tflite")
    with pytest.raises(ExportError, match="exists; pass --force"):
        fracjax.export(classifier, exported)
    assert os.listdir(exported) == before
    with pytest.raises(FileNotFoundError, match="no best checkpoint"):
        fracjax.export(str(tmp_path), str(tmp_path / "y"))
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
    with pytest.raises(ExportError, match="no model.json: not a fracjax export folder"):
        fracjax.deploy.load(tmp_path)


def test_force_replaces_an_earlier_export_and_nothing_else(exported, classifier, tmp_path):
    import shutil

    run = tmp_path / "run"
    os.makedirs(run / "checkpoints" / "best" / "8")
    (run / "config.json").write_text("{}")
    with pytest.raises(ExportError, match=r"run holds checkpoints, config.json, which no export writes"):
        fracjax.export(classifier, str(run), force=True)
    with pytest.raises(ExportError, match="holds the run being exported"):
        fracjax.export(str(run), str(tmp_path), force=True)  # refused before the run is even read
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ExportError, match="notes.txt is not a folder; --force replaces only an earlier export"):
        fracjax.export(classifier, str(tmp_path / "notes.txt"), force=True)
    assert sorted(os.listdir(tmp_path)) == ["notes.txt", "run"] and (run / "checkpoints" / "best" / "8").is_dir()
    assert (tmp_path / "notes.txt").read_text() == "mine"
    copy = tmp_path / "earlier"
    shutil.copytree(exported, copy)
    fracjax.export(classifier, str(copy), force=True)
    assert fracjax.deploy.read_card(copy)["format"] == "stablehlo"


@pytest.mark.parametrize("edit, message", [
    (lambda c: c["operating_points"]["youden"].update(threshold=2.0), r"operating_points.youden.threshold 2.0 is not"),
    (lambda c: c.update(temperature=-1), r"temperature -1 is not a finite number above 0"),
    (lambda c: c.update(temperature=float("nan")), r"temperature nan is not a finite number above 0"),
    (lambda c: c.update(artifact="../run/model.stablehlo"), r"artifact '../run/model.stablehlo' is not one of"),
    (lambda c: c["input"].update(shape=["batch", 32, 64, 1]), r"input.shape \['batch', 32, 64, 1\] is not"),
    (lambda c: c.update(warnings="none"), r"warnings is not a list of sentences"),
    (lambda c: c.pop("sha256"), r"sha256 is not a SHA-256 digest"),
])
def test_a_card_is_checked_field_by_field(exported, tmp_path, edit, message):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(exported, copy)
    card = json.loads((copy / "model.json").read_text())
    edit(card)
    (copy / "model.json").write_text(json.dumps(card))
    with pytest.raises(ExportError, match=message):
        fracjax.deploy.load(copy)


def test_a_card_that_is_not_json_and_pixels_that_are_not_finite_are_refused(exported, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(exported, copy)
    (copy / "model.json").write_text('{"format": "stablehlo", ')
    with pytest.raises(ExportError, match=r"model.json: not readable JSON"):
        fracjax.deploy.load(copy)
    model = fracjax.deploy.load(exported)
    pixels = np.full((1, 32, 32, 1), 100.0, np.float32)
    pixels[0, 3, 4, 0] = np.nan
    with pytest.raises(ValueError, match="pixels must be finite numbers"):
        model(pixels)


def test_an_artifact_that_is_not_a_model_or_not_the_cards_is_refused(exported, tmp_path):
    import shutil

    from fracjax.deploy.common import sha256_of

    copy = tmp_path / "copy"
    shutil.copytree(exported, copy)
    card = json.loads((copy / "model.json").read_text())
    card["input"]["shape"] = ["batch", 64, 64, 1]  # a card made for another artifact
    (copy / "model.json").write_text(json.dumps(card))
    with pytest.raises(ExportError, match=r"takes inputs of shape \(32, 32, 1\), not the card's \(64, 64, 1\)"):
        fracjax.deploy.load(copy)
    (copy / "model.stablehlo").write_bytes(b"\x00" * 64)  # its digest in the card: only the bytes are wrong
    card["sha256"] = sha256_of(str(copy / "model.stablehlo"))
    (copy / "model.json").write_text(json.dumps(card))
    with pytest.raises(ExportError, match="model.stablehlo: not a loadable stablehlo model"):
        fracjax.deploy.load(copy)


def test_a_changed_artifact_is_refused(exported, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(exported, copy)
    with open(copy / "model.stablehlo", "r+b") as f:
        f.seek(1000)
        byte = f.read(1)
        f.seek(1000)
        f.write(bytes([byte[0] ^ 1]))
    with pytest.raises(ExportError, match="sha256 does not match model.json"):
        fracjax.deploy.load(copy)


def test_a_failed_export_leaves_nothing_behind(classifier, tmp_path, monkeypatch):
    from fracjax.deploy import card

    def broken_card(*args):
        raise OSError("disk full")

    monkeypatch.setattr(card, "model_card", broken_card)
    with pytest.raises(OSError, match="disk full"):
        fracjax.export(classifier, str(tmp_path / "out"))
    assert os.listdir(tmp_path) == []


def test_an_artifact_that_disagrees_with_fracjax_is_not_written(classifier, tmp_path, monkeypatch):
    from fracjax.deploy import stablehlo

    real = stablehlo.runner

    def drifting(blob):
        run = real(blob)
        return lambda pixels: tuple(np.asarray(v) + 1e-3 for v in run(pixels))

    monkeypatch.setattr(stablehlo, "runner", drifting)
    with pytest.raises(ExportError, match=r"differ from fracjax's by 0.001 \(more than 1e-05\); nothing written"):
        fracjax.export(classifier, str(tmp_path / "out"))
    assert os.listdir(tmp_path) == []


# -- ONNX ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def onnx_export(classifier, tmp_path_factory):
    return fracjax.export(classifier, str(tmp_path_factory.mktemp("o") / "model"), format="onnx")


def test_onnxruntime_computes_what_predict_does_at_any_batch(onnx_export, classifier, pixels):
    import onnxruntime

    card = fracjax.deploy.read_card(onnx_export)
    session = onnxruntime.InferenceSession(os.path.join(onnx_export, card["artifact"]),
                                           providers=["CPUExecutionProvider"])
    (batch, *rest), = [tuple(d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim)
                       for i in __import__("onnx").load(os.path.join(onnx_export, "model.onnx")).graph.input]
    assert isinstance(batch, str) and rest == [32, 32, 1]  # a dynamic batch
    for n in (1, 7):
        probability, logit = session.run(["probability", "logit"], {"pixels": pixels[:n].astype(np.float32)})
        np.testing.assert_allclose(probability, classifier.predict(pixels[:n]), atol=1e-5)
        np.testing.assert_allclose(logit, classifier.logits(pixels[:n]), atol=1e-4)
    assert card["format"] == "onnx" and card["platforms"] == ["onnxruntime"] and card["opset"] >= 18
    assert card["converter"].startswith("fracjax.deploy.onnx_graph ")
    assert card["parity"]["max_probability_difference"] <= 1e-5


def test_load_runs_an_onnx_export_like_a_stablehlo_one(onnx_export, exported, pixels):
    onnx_model, stablehlo_model = fracjax.deploy.load(onnx_export), fracjax.deploy.load(exported)
    np.testing.assert_allclose(onnx_model(pixels)["probability"], stablehlo_model(pixels)["probability"], atol=1e-5)
