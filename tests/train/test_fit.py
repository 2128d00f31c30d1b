"""The training loop end to end on a tiny synthetic set: outputs, determinism,
kill -9 and resume, non-finite loss, restore-then-predict, CLI errors."""

import json
import os
import signal
import subprocess
import sys
import time

import chex
import numpy as np
import pytest

import fracjax
from fracjax import checkpoint as ckpt
from fracjax.train import ResumeError, TrainConfig, fit
from fracjax.train.cli import main as cli_main
from tests.helpers import tensorboard_events
from tests.train.fitting import config, flags, latest_variables

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def first_run(data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    report = fit(config(data_dir, out, "a"))
    return out, report


def test_outputs(first_run):
    out, report = first_run
    run = out / "a"
    for name in ("config.json", "metrics.jsonl", "report.json", "curves.png", "report.html", "evaluation.json",
                 "gradcam.png"):
        assert (run / name).is_file(), name
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["phase"] for r in lines] == [1, 2, 2]
    assert [r["step"] for r in lines] == [4, 8, 12]
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
    # The synthetic set knows where each fracture is: the report scores Grad-CAM against the boxes.
    evaluation = json.loads((run / "evaluation.json").read_text())["test"]
    assert set(evaluation["localisation"]) == {"gradcam", "gradcam++"}
    assert evaluation["localisation"]["gradcam"]["tolerance_px"] == pytest.approx(15 * 32 / 224)
    assert "Does the saliency map point at the fracture?" in html and "pointing game" in html
    saved = json.loads((run / "config.json").read_text())
    assert saved["model"]["image_size"] == 32 and saved["model"]["threshold"] == 0.5
    assert saved["model"]["input_contract"]["preprocessing"] == "tf"
    restored = TrainConfig.from_dict(saved["train"])  # the nested sections, as saved
    assert (restored.optim.batch_size, restored.data.image_size, restored.run.name) == (16, 32, "a")


def test_the_run_is_in_tensorboard_with_the_numbers_of_its_files(first_run):
    out, report = first_run
    events = tensorboard_events(out / "a")
    lines = [json.loads(line) for line in (out / "a" / "metrics.jsonl").read_text().splitlines()]
    assert sorted(events["train/step_loss"]) == list(range(1, 13))  # every step's loss
    for line in lines:  # each epoch at its last step, as metrics.jsonl has it (float32 in the file)
        for tag, value in (("train/loss", line["train_loss"]), ("validation/auroc", line["validation"]["auroc"]),
                           ("validation/loss", line["validation"]["loss"])):
            assert events[tag][line["step"]] == pytest.approx(value, rel=1e-6), tag
    rates = events["train/learning_rate"]
    assert rates[4] > 0 and rates[12] < rates[8]  # the cosine schedule, phase 2 decaying
    assert events["test/auroc"][12] == pytest.approx(report["test"]["auroc"], rel=1e-6)
    low, high = report["test"]["intervals"]["auroc"]
    assert (events["test/auroc_low"][12], events["test/auroc_high"][12]) == pytest.approx((low, high), rel=1e-6)
    for figure in ("report/roc", "report/gradcam", "report/curves"):
        height, width = events[figure][12]
        assert height > 100 and width > 100, figure


def test_same_seed_same_metrics(first_run, data_dir):
    out, report = first_run
    again = fit(config(data_dir, out, "b", report=False))
    # Without the report there is no temperature: everything but the
    # probability-scale metrics (ECE, Brier) is the same.
    calibration_free = [k for k in again["test"] if k not in ("ece", "brier")]
    assert {k: again["test"][k] for k in calibration_free} == {k: report["test"][k] for k in calibration_free}
    def strip(line):
        return {k: v for k, v in json.loads(line).items() if k not in ("seconds", "images_per_s")}

    a = [strip(line) for line in (out / "a" / "metrics.jsonl").read_text().splitlines()]
    b = [strip(line) for line in (out / "b" / "metrics.jsonl").read_text().splitlines()]
    assert a == b


def test_kill_then_resume_gives_the_same_model(first_run, data_dir, tmp_path):
    out, _ = first_run
    cmd = [
        sys.executable,
        os.path.join(ROOT, "examples", "train.py"),
        *flags(data_dir, tmp_path, "k", "--checkpoint-every", "2", "--no-report"),
    ]
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
    # TensorBoard shows one curve: what the killed attempt logged past its checkpoint is purged.
    losses_a, losses_k = (tensorboard_events(run)["train/step_loss"] for run in (out / "a", tmp_path / "k"))
    assert sorted(losses_k) == list(range(1, 13))
    assert [losses_k[s] for s in range(1, 13)] == pytest.approx([losses_a[s] for s in range(1, 13)], rel=1e-4)


def _same(a, b):
    """Equal, reading JSON's null as NaN (an undefined metric)."""
    a = float("nan") if a is None else a
    b = float("nan") if b is None else b
    return a == b or (a != a and b != b)


def test_one_number_per_checkpoint(first_run, data_dir):
    """The run's report.json (what the console printed), report.html,
    fracjax.evaluate and Classifier.predict agree exactly on the test split."""
    out, report = first_run
    run = out / "a"
    saved = json.loads((run / "report.json").read_text())
    clf = fracjax.Classifier.from_checkpoint(str(run))
    assert clf.temperature == saved["calibration"]["temperature"]
    result = fracjax.evaluate(clf, "synthetic_fracture/tiny", split="test", data_dir=data_dir, seed=3)
    keys = ("accuracy", "auroc", "sensitivity", "specificity", "precision", "f1", "kappa", "average_precision",
            "ece", "brier", "loss")
    for key in keys:
        assert _same(result.metrics[key], saved["test"][key]), key
    assert list(result.metrics["intervals"]["auroc"]) == saved["test"]["intervals"]["auroc"]
    # Classifier.predict on the stored 96 px images (resized to the model's 32 as in training).
    arrays = fracjax.data.load_arrays(fracjax.data.load_source("synthetic_fracture/tiny", "test", data_dir))
    probs = clf.predict(arrays.images)
    np.testing.assert_array_equal(probs, result.probabilities)
    direct = fracjax.train.binary_metrics(arrays.labels, probs, clf.threshold)
    for key in ("accuracy", "auroc", "sensitivity", "specificity", "kappa"):
        assert _same(direct[key], saved["test"][key]), key
    # Calibration moves probabilities, never the ranking.
    raw = clf.predict(arrays.images, calibrated=False)
    assert fracjax.train.binary_metrics(arrays.labels, raw)["auroc"] == direct["auroc"]
    # report.html and evaluation.json show the same numbers.
    html = (run / "report.html").read_text()
    assert f"{saved['test']['auroc']:.3f} [{saved['test']['intervals']['auroc'][0]:.3f}" in html
    predictions = json.loads((run / "evaluation.json").read_text())["test"]["predictions"]
    np.testing.assert_array_equal([p["probability"] for p in predictions], probs)
    # RGB input becomes the same grey image; file paths go through the same reader.
    np.testing.assert_allclose(clf.predict(np.repeat(arrays.images[:4], 3, axis=-1)), probs[:4], atol=1e-6)
    path = out / "x.png"
    from PIL import Image

    Image.fromarray(arrays.images[0][..., 0]).save(path)
    assert clf.predict([str(path)])[0] == probs[0]


def test_existing_run_needs_resume(first_run, data_dir):
    out, _ = first_run
    assert cli_main(flags(data_dir, out, "a")) == 2


def _example(name):
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "examples", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _png_files(folder, stem, n=2):
    """(images, paths) of ``n`` synthetic test images written as PNG files."""
    from PIL import Image

    images, _ = fracjax.data.generate_arrays(n, "test", seed=1, config=fracjax.data.SyntheticConfig(size=64))
    paths = [str(folder / f"{stem}{i}.png") for i in range(n)]
    for path, image in zip(paths, images, strict=True):
        Image.fromarray(image[..., 0]).save(path)
    return images, paths


def test_explain_writes_overlays_and_skips_a_bad_file(first_run, tmp_path, capsys):
    from PIL import Image

    out, _ = first_run
    explain = _example("explain")
    images, files = _png_files(tmp_path, "x")
    files.append(str(tmp_path / "x0.bmp"))  # the same stem as x0.png: both overlays must survive
    Image.fromarray(images[0][..., 0]).save(files[-1])
    (tmp_path / "other").mkdir()
    files.append(str(tmp_path / "other" / "x0.png"))  # the same file name in another folder too
    Image.fromarray(images[1][..., 0]).save(files[-1])
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not a png")
    code = explain.main([str(out / "a"), *files, str(bad), "--out", str(tmp_path / "cams"), "--method", "gradcam++"])
    printed = capsys.readouterr().out
    assert code == 1 and "broken.png: unreadable" in printed
    assert len(os.listdir(tmp_path / "cams")) == 4
    for name in ("x0_png_gradcampp.png", "x1_gradcampp.png", "x0_bmp_gradcampp.png", "x0_png_gradcampp_2.png"):
        picture = np.asarray(Image.open(tmp_path / "cams" / name))
        assert picture.ndim == 3 and picture.shape[2] == 3
        assert picture[-18:].min() < 128  # the probability is written under the pictures
    assert explain.main([str(out / "a"), files[0], "--layer", "nope", "--out", str(tmp_path / "c2")]) == 2


def test_predict_reports_a_bad_file_and_predicts_the_rest(first_run, tmp_path, capsys):
    out, _ = first_run
    predict = _example("predict")
    _, good = _png_files(tmp_path, "g")
    (tmp_path / "bad.png").write_bytes(b"not a png")
    assert predict.main([str(out / "a"), good[0], str(tmp_path / "bad.png"), good[1]]) == 1
    lines = [line for line in capsys.readouterr().out.splitlines() if not line.startswith("WARNING")]  # run's own
    assert "unreadable: cannot read image" in lines[2] and "bad.png" in lines[2]
    expected = fracjax.Classifier.from_checkpoint(str(out / "a")).predict(good)
    assert [float(line.split()[1]) for line in (lines[1], lines[3])] == pytest.approx(expected, abs=1e-4)


# -- issue 18: refused before work, never saved when non-finite, one writer --------


def test_resume_refuses_changed_model_or_data_options_listing_them(first_run, data_dir):
    out, _ = first_run
    cfg = config(data_dir, out, "a", resume=True, image_size=48, head="linear")
    with pytest.raises(ResumeError, match=r'--head "hybrid" -> "linear", --image-size 32 -> 48'):
        fit(cfg)


def test_resume_without_its_best_checkpoint_is_refused_before_training(first_run, data_dir, tmp_path):
    import shutil

    out, _ = first_run
    shutil.copytree(out / "a", tmp_path / "a", ignore=shutil.ignore_patterns("best"))
    before = sorted(os.listdir(tmp_path / "a" / "checkpoints" / "latest"))
    with pytest.raises(ResumeError, match=r"its best checkpoint \(.*best\) is gone, so the run would train on"):
        fit(config(data_dir, tmp_path, "a", resume=True, phase2_epochs=4))
    assert sorted(os.listdir(tmp_path / "a" / "checkpoints" / "latest")) == before  # nothing trained


def test_resume_past_a_damaged_latest_checkpoint_redoes_its_epoch(first_run, data_dir, tmp_path, capsys):
    import glob
    import shutil

    out, _ = first_run
    shutil.copytree(out / "a", tmp_path / "a")
    for path in glob.glob(str(tmp_path / "a" / "checkpoints" / "latest" / "12" / "state" / "**" / "d" / "*"),
                      recursive=True):
        data = bytearray(open(path, "rb").read())
        data[len(data) // 2] ^= 0xFF
        open(path, "wb").write(bytes(data))
    fit(config(data_dir, tmp_path, "a", resume=True, report=False, bootstrap=0))
    said = capsys.readouterr().out
    assert "latest/12: cannot be restored" in said or "latest/12: the state arrays do not match" in said, said
    assert "resumed from step 8 (its checksums verified)" in said
    step, variables = latest_variables(tmp_path / "a")
    assert step == 12
    chex.assert_trees_all_close(variables, latest_variables(out / "a")[1], rtol=1e-5, atol=1e-6)
    epochs = [json.loads(line)["epoch"] for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2, 3]  # one line per epoch across the resume


def test_the_fracjax_command_predicts_to_csv_and_json_at_an_operating_point(first_run, tmp_path, capsys):
    from fracjax import cli

    out, _ = first_run
    _, good = _png_files(tmp_path, "p")
    clf = fracjax.Classifier.from_checkpoint(str(out / "a"))
    code = cli.main(["predict", str(out / "a"), *good, str(tmp_path / "missing.png"), "--operating-point", "youden",
                     "--csv", str(tmp_path / "r.csv"), "--json", str(tmp_path / "r.json")])
    assert code == 1  # one file could not be read
    saved = json.loads((tmp_path / "r.json").read_text())
    assert saved["threshold"] == clf.threshold_for("youden")
    assert [r["probability"] for r in saved["results"][:2]] == pytest.approx(list(clf.predict(good)), abs=1e-12)
    assert "no such file" in saved["results"][2]["error"]
    assert (tmp_path / "r.csv").read_text().splitlines()[
        0
    ] == "file,probability,label,in_distribution,ood_score,reason,error"
    assert cli.main(["predict", str(out / "a"), good[0], "--operating-point", "nope"]) == 2
    assert "no operating point 'nope'" in capsys.readouterr().err
    assert cli.main(["frobnicate"]) == 2 and cli.main([]) == 2
    assert "export" in capsys.readouterr().out + cli.usage()


def test_the_fracjax_command_exports_a_run_with_its_model_card(first_run, tmp_path, capsys):
    from fracjax import cli

    out, report = first_run
    assert cli.main(["export", str(out / "a"), "--out", str(tmp_path / "e")]) == 0
    assert "model card" in capsys.readouterr().out
    card = json.loads((tmp_path / "e" / "model.json").read_text())
    assert card["test"]["auroc"] == report["test"]["auroc"] and card["test"]["intervals"]["auroc"]
    assert card["data"]["dataset"] == "synthetic_fracture/tiny" and card["data"]["audited"] is False
    assert set(card["operating_points"]["youden"]) == {"threshold", "validation_sensitivity", "validation_specificity"}
    images, _ = fracjax.data.generate_arrays(7, "test", seed=2, config=fracjax.data.SyntheticConfig(size=32))
    expected = fracjax.Classifier.from_checkpoint(str(out / "a")).predict(images)
    np.testing.assert_allclose(fracjax.deploy.load(tmp_path / "e")(images)["probability"], expected, atol=1e-5)
    assert cli.main(["export", str(out / "a"), "--out", str(tmp_path / "e")]) == 2  # exists: --force to replace
    assert "pass --force" in capsys.readouterr().err


def test_resume_with_more_epochs_trains_on_and_says_what_the_schedule_does(first_run, data_dir, tmp_path, capsys):
    import shutil

    out, _ = first_run
    shutil.copytree(out / "a", tmp_path / "a")
    with pytest.raises(ResumeError, match=r"--phase2-epochs 2 -> 1"):  # fewer epochs: not a continuation
        fit(config(data_dir, tmp_path, "a", resume=True, phase2_epochs=1))
    fit(config(data_dir, tmp_path, "a", resume=True, phase2_epochs=3, report=False, bootstrap=0))
    said = capsys.readouterr().out
    assert "--resume: --phase2-epochs 2 -> 3: the run trains on" in said
    assert "phase 2's cosine schedule now decays over 3 epochs, not 2: at step 12 the learning rate is" in said
    assert latest_variables(tmp_path / "a")[0] == 16
    lines = [json.loads(line) for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [4, 8, 12, 16]
    assert sorted(tensorboard_events(tmp_path / "a")["train/step_loss"]) == list(range(1, 17))
