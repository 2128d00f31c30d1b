"""The training loop end to end on a tiny synthetic set: outputs, determinism,
kill -9 and resume, non-finite loss, restore-then-predict, CLI errors."""

import json
import os
import signal
import subprocess
import sys
import time

import chex
import jax
import numpy as np
import pytest

import fracjax
from fracjax.train import NonFiniteLossError, TrainConfig, fit
from fracjax.train import checkpoint as ckpt
from fracjax.train.cli import main as cli_main

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    import tensorflow_datasets as tfds

    import fracjax.data.builders  # noqa: F401  (registers the builders)

    d = str(tmp_path_factory.mktemp("tfds"))
    tfds.builder("synthetic_fracture/tiny", data_dir=d).download_and_prepare()
    return d


def flags(data_dir, out, name, *extra):
    return [
        "--dataset", "synthetic_fracture/tiny", "--data-dir", data_dir, "--out", str(out), "--name", name,
        "--image-size", "32", "--batch-size", "16", "--train-examples", "64",
        "--phase1-epochs", "1", "--phase2-epochs", "2", "--no-progress", "--seed", "3", *extra,
    ]


def config(data_dir, out, name, **overrides):
    from fracjax.train.cli import config_from_args

    cfg = config_from_args(flags(data_dir, out, name))
    for k, v in overrides.items():
        setattr(cfg, k, v)
    return cfg


@pytest.fixture(scope="module")
def first_run(data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    report = fit(config(data_dir, out, "a"))
    return out, report


def latest_variables(run_dir):
    folder, step = ckpt.find_model_checkpoint(run_dir, "latest")
    variables, meta = ckpt.restore_model(folder, step)
    return step, variables


def test_outputs(first_run):
    out, report = first_run
    run = out / "a"
    for name in ("config.json", "metrics.jsonl", "report.json", "curves.png", "report.html", "evaluation.json",
                 "gradcam.png"):
        assert (run / name).is_file(), name
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [l["phase"] for l in lines] == [1, 2, 2]
    assert [l["step"] for l in lines] == [4, 8, 12]
    for key in ("accuracy", "auroc", "sensitivity", "specificity", "precision", "f1", "kappa", "confusion", "loss"):
        assert key in report["test"], key
    assert report["test"]["n"] == 64  # every test example, no dropped remainder
    assert report["data"]["examples"]["train"] == 64
    # The end-of-run evaluation: intervals around the test metrics, calibration
    # fitted on validation and saved inside the best checkpoint.
    for key in ("accuracy", "auroc", "sensitivity", "specificity"):
        low, high = report["test"]["intervals"][key]
        assert low <= report["test"][key] <= high, key
    folder, step = ckpt.find_model_checkpoint(str(run), "best")
    saved_calibration = json.loads((run / "checkpoints" / "best" / str(step) / "calibration.json").read_text())
    assert saved_calibration["temperature"] == report["calibration"]["temperature"] > 0
    assert "sensitivity_0.95" in saved_calibration["operating_points"]
    html = (run / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 5  # curves, ROC/PR, confusion, reliability, Grad-CAM
    saved = json.loads((run / "config.json").read_text())
    assert saved["model"]["image_size"] == 32 and saved["model"]["threshold"] == 0.5
    assert saved["model"]["input_contract"]["preprocessing"] == "tf"


def test_same_seed_same_metrics(first_run, data_dir):
    out, report = first_run
    again = fit(config(data_dir, out, "b", report=False))
    assert again["test"] == {k: v for k, v in report["test"].items() if k in again["test"]}
    strip = lambda l: {k: v for k, v in json.loads(l).items() if k not in ("seconds", "images_per_s")}
    a = [strip(l) for l in (out / "a" / "metrics.jsonl").read_text().splitlines()]
    b = [strip(l) for l in (out / "b" / "metrics.jsonl").read_text().splitlines()]
    assert a == b


def test_kill_then_resume_gives_the_same_model(first_run, data_dir, tmp_path):
    out, _ = first_run
    cmd = [sys.executable, os.path.join(ROOT, "examples", "train.py"), *flags(data_dir, tmp_path, "k", "--checkpoint-every", "2", "--no-report")]
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    latest = tmp_path / "k" / "checkpoints" / "latest"
    deadline = time.time() + 600
    # Kill -9 once a checkpoint past phase 1 exists (mid phase 2).
    while time.time() < deadline and proc.poll() is None:
        steps = [int(d) for d in os.listdir(latest) if d.isdigit()] if latest.is_dir() else []
        if steps and max(steps) >= 6:
            break
        time.sleep(0.2)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    resumed = subprocess.run(cmd + ["--resume"], env=env, capture_output=True, text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from step" in resumed.stdout
    step_a, a = latest_variables(out / "a")
    step_k, k = latest_variables(tmp_path / "k")
    assert step_a == step_k == 12
    chex.assert_trees_all_close(k, a, rtol=1e-5, atol=1e-6)
    report_a = json.loads((out / "a" / "report.json").read_text())
    report_k = json.loads((tmp_path / "k" / "report.json").read_text())
    assert report_k["test"]["auroc"] == pytest.approx(report_a["test"]["auroc"], abs=1e-6)


def test_restore_then_predict_equals_the_run(first_run, data_dir):
    out, report = first_run
    clf = fracjax.Classifier.from_checkpoint(str(out / "a"))
    assert clf.temperature == report["calibration"]["temperature"]
    source = fracjax.data.load_source("synthetic_fracture/tiny", "test", data_dir)
    arrays = fracjax.data.load_arrays(source)
    probs = clf.predict(arrays.images)  # 96x96 images, resized to the model's 32 as in training
    # Temperature scaling moves probabilities, not decisions at 0.5 nor the ranking.
    raw = clf.predict(arrays.images, calibrated=False)
    assert np.all((raw >= 0.5) == (probs >= 0.5))
    metrics = fracjax.train.binary_metrics(arrays.labels, probs, clf.threshold)
    assert metrics["accuracy"] == pytest.approx(report["test"]["accuracy"])
    # The end-of-run evaluation restored the same checkpoint: same probabilities.
    with open(out / "a" / "evaluation.json") as f:
        saved = [p["probability"] for p in json.load(f)["test"]["predictions"]]
    np.testing.assert_allclose(probs, saved, rtol=0, atol=1e-6)
    # The run's own test metrics come from the training loop's forward (other
    # batch shapes, so float32 rounding differs); a barely trained model puts
    # nearly every probability at one value, so AUROC can move by a few tied
    # pairs, never more.
    raw_metrics = fracjax.train.binary_metrics(arrays.labels, raw, clf.threshold)
    assert raw_metrics["auroc"] == pytest.approx(report["test"]["auroc"], abs=5e-3)
    # RGB input becomes the same grey image.
    np.testing.assert_allclose(clf.predict(np.repeat(arrays.images[:4], 3, axis=-1)), probs[:4], atol=1e-5)
    # File paths go through the same reader.
    path = out / "x.png"
    from PIL import Image

    Image.fromarray(arrays.images[0][..., 0]).save(path)
    assert clf.predict([str(path)])[0] == pytest.approx(probs[0], abs=1e-6)


def test_non_finite_loss_stops_cleanly(data_dir, tmp_path):
    cfg = config(data_dir, tmp_path, "nan", phase2_lr=1e30, grad_clip=None)
    with pytest.raises(NonFiniteLossError, match=r"at step \d+ \(phase 2.*last good checkpoint is step 4"):
        fit(cfg)
    step, variables = latest_variables(tmp_path / "nan")
    assert step == 4
    chex.assert_tree_all_finite(variables)


def test_bad_flags_are_clear(data_dir, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        cli_main(["--batch-size", "0"])
    assert e.value.code == 2 and "--batch-size" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli_main(["--unfreeze", "some"])
    assert "--unfreeze" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli_main(["--dataset", "fracture_xray", "--manual-dir", str(tmp_path / "nowhere")])
    assert "no such folder" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli_main(["--pretrained", str(tmp_path / "missing.h5")])
    assert "no such file" in capsys.readouterr().err


def test_weights_for_another_architecture_stop_before_training(data_dir, tmp_path, capsys):
    import h5py

    bad = tmp_path / "large.h5"
    with h5py.File(bad, "w") as f:
        f.attrs["layer_names"] = np.array([b"Conv"])
        g = f.create_group("Conv")
        g.attrs["weight_names"] = np.array([b"Conv/kernel:0"])
        g.create_dataset("Conv/kernel:0", data=np.zeros((3, 3, 3, 16), np.float32))
    code = cli_main(flags(data_dir, tmp_path, "w", "--pretrained", str(bad)))
    assert code == 2
    err = capsys.readouterr().err
    assert "large.h5" in err and "layers with weights" in err
    assert not (tmp_path / "w" / "checkpoints").exists()


def test_existing_run_needs_resume(first_run, data_dir):
    out, _ = first_run
    assert cli_main(flags(data_dir, out, "a")) == 2


def test_explain_writes_overlays_and_skips_a_bad_file(first_run, tmp_path, capsys):
    import importlib.util

    from PIL import Image

    out, _ = first_run
    spec = importlib.util.spec_from_file_location("explain", os.path.join(ROOT, "examples", "explain.py"))
    explain = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(explain)
    images, _ = fracjax.data.generate_arrays(2, "test", seed=1, config=fracjax.data.SyntheticConfig(size=64))
    files = []
    for i, image in enumerate(images):
        files.append(str(tmp_path / f"x{i}.png"))
        Image.fromarray(image[..., 0]).save(files[-1])
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not a png")
    code = explain.main([str(out / "a"), *files, str(bad), "--out", str(tmp_path / "cams"), "--method", "gradcam++"])
    printed = capsys.readouterr().out
    assert code == 1 and "broken.png: unreadable" in printed
    for i in range(2):
        picture = np.asarray(Image.open(tmp_path / "cams" / f"x{i}_gradcampp.png"))
        assert picture.ndim == 3 and picture.shape[2] == 3
    assert explain.main([str(out / "a"), files[0], "--layer", "nope", "--out", str(tmp_path / "c2")]) == 2
