"""fracjax evaluate and compare as commands: the same numbers as
fracjax.evaluate, and every refusal before any data preparation."""

import argparse
import json
import os

import pytest

import fracjax
from fracjax import cli
from fracjax.commands import evaluate
from tests.helpers import random_classifier, saved_run


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    import tensorflow_datasets as tfds

    import fracjax.data.builders  # noqa: F401

    d = str(tmp_path_factory.mktemp("tfds"))
    tfds.builder("synthetic_fracture/tiny", data_dir=d).download_and_prepare()
    return d


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, data_dir):
    run = saved_run(tmp_path_factory.mktemp("cmd") / "run", random_classifier(seed=2, batch_size=16))
    with open(f"{run}/config.json", "w") as f:
        json.dump({"train": {"data": {"dataset": "synthetic_fracture/tiny", "data_dir": data_dir}}}, f)
    return run


def test_evaluate_gives_fracjax_evaluates_numbers_on_the_runs_own_data(run_dir, data_dir, tmp_path, capsys):
    out = tmp_path / "metrics.json"
    assert cli.main(["evaluate", run_dir, "--operating-point", "youden", "--bootstrap", "50", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "synthetic_fracture/tiny test" in printed and "| accuracy |" in printed
    written = json.loads(out.read_text())
    expected = fracjax.evaluate(run_dir, "synthetic_fracture/tiny", "test", data_dir=data_dir, threshold="youden",
                                bootstrap=50)
    assert written["threshold"] == 0.42 and written["metrics"]["n"] == expected.metrics["n"]
    for key in ("accuracy", "auroc", "sensitivity", "specificity"):
        assert written["metrics"][key] == pytest.approx(expected.metrics[key])
    assert len(written["predictions"]) == expected.metrics["n"]


@pytest.mark.parametrize("extra, message", [
    (["--threshold", "1.5"], r"--threshold must be in \(0, 1\]"),
    (["--audit", "missing.json"], "--audit: no such file missing.json"),
    (["--json", "/nonexistent/m.json"], "--json: cannot write in /nonexistent"),
    (["--bootstrap", "-1"], r"--bootstrap must be in \[0, 100,000\]"),
    (["--bootstrap", "1000000000"], r"--bootstrap must be in \[0, 100,000\], got 1000000000"),
    (["--operating-point", "best"], "no operating point 'best'"),
])
def test_evaluate_refuses_before_any_work(run_dir, tmp_path, capsys, extra, message):
    fresh = tmp_path / "fresh_tfds"
    assert evaluate.main([run_dir, "--data-dir", str(fresh), *extra]) == 2
    assert __import__("re").search(message, capsys.readouterr().err)
    assert not fresh.exists()  # nothing prepared


def test_predict_refuses_outputs_that_are_folders_or_its_own_inputs(tmp_path, capsys):
    from fracjax import cli

    image = tmp_path / "x.png"
    image.write_bytes(b"not read: refused first")
    for extra, message in ((["--json", str(tmp_path)], "is a folder; name the file to write"),
                           (["--csv", str(image)], "is one of the images to classify; it would be overwritten"),
                           (["--csv", str(tmp_path / "o"), "--json", str(tmp_path / "o")], "name the same file")):
        assert cli.main(["predict", str(tmp_path / "no-run"), str(image), *extra]) == 2
        assert message in capsys.readouterr().err
    assert image.read_bytes() == b"not read: refused first"


@pytest.mark.parametrize("argv, message", [
    (["audit", "--workers", "100000"], r"--workers must be in \[0, 256\]"),
    (["audit", "--candidates", "1000000"], r"--candidates must be in \[1, 1000\]"),
    (["samples", "out", "--size", "100000"], r"--size in \[32, 4096\], got 1 and 100000"),
    (["serve", "run", "--max-upload-mb", "inf"], r"--max-upload-mb: must be > 0 and at most 1,024, got inf"),
    (["serve", "run", "--max-files", "0"], r"--max-files: must be > 0"),
])
def test_size_like_options_have_upper_bounds(tmp_path, capsys, monkeypatch, argv, message):
    from fracjax import cli

    monkeypatch.chdir(tmp_path)
    assert cli.main(argv) == 2
    assert __import__("re").search(message, capsys.readouterr().err)
    assert os.listdir(tmp_path) == []  # refused before anything was written


def test_evaluate_names_a_missing_run_or_data_set(tmp_path, capsys):
    assert evaluate.main([str(tmp_path), "--dataset", "synthetic_fracture/tiny"]) == 2
    assert "no best checkpoint" in capsys.readouterr().err
    bare = saved_run(tmp_path / "bare", random_classifier(seed=1, batch_size=4))
    assert evaluate.main([bare]) == 2
    assert "has no config.json naming its data set; pass --dataset" in capsys.readouterr().err


def test_compare_is_a_subcommand_and_checks_its_models_first(capsys):
    from fracjax.commands import compare

    with pytest.raises(SystemExit):
        compare.main(["--help"])
    assert "the hybrid MobileNetV3-Small against" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        compare.main(["--models", "alexnet"])
    assert "invalid choice: 'alexnet'" in capsys.readouterr().err
    # The flags come from the comparison's declarations, parsed as the config takes them.
    from fracjax.comparison import ComparisonConfig
    from fracjax.train.cli import add_options, options_from_args

    parser = argparse.ArgumentParser()
    add_options(parser, ComparisonConfig)
    args = parser.parse_args(["--models", "vgg16", "resnet50", "--train-examples", "0", "--budget-minutes", "0",
                              "--pretrained", "vgg16=imagenet", "--pretrained", "resnet50=w.h5", "--progress"])
    config = ComparisonConfig(**options_from_args(args, ComparisonConfig))
    assert config.models == ("vgg16", "resnet50") and config.train_examples is None and config.budget_minutes is None
    assert config.pretrained == {"vgg16": "imagenet", "resnet50": "w.h5"} and config.progress
    assert ComparisonConfig(**options_from_args(parser.parse_args([]), ComparisonConfig)) == ComparisonConfig()
    with pytest.raises(SystemExit):
        compare.main(["--image-size", "8"])
    assert "--image-size: must be >= 32" in capsys.readouterr().err
    assert cli.SUBCOMMANDS["compare"][0] == "fracjax.commands.compare"
    assert all(name in cli.usage() for name in ("evaluate", "compare", "serve", "export"))


def test_evaluate_finds_the_runs_data_set_from_any_folder_inside_it(run_dir):
    for where in (run_dir, f"{run_dir}/checkpoints", f"{run_dir}/checkpoints/best", f"{run_dir}/checkpoints/best/1"):
        assert evaluate.run_data(where)["dataset"] == "synthetic_fracture/tiny", where


def test_evaluate_on_your_own_csv_resamples_patients(run_dir, tmp_path, capsys):
    import numpy as np
    from PIL import Image

    from fracjax.data import synthetic

    rows = ["path,label,patient,split"]
    for i in range(24):
        image, label = synthetic.generate_example(0, "test", i, synthetic.SyntheticConfig(size=32))
        Image.fromarray(image[..., 0]).save(tmp_path / f"{i}.png")
        rows.append(f"{i}.png,{label},P{i // 4},{['train', 'val', 'test'][i % 3] if i >= 6 else 'test'}")
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    data_dir = tmp_path / "prepared"
    assert evaluate.main([run_dir, "--data-csv", str(tmp_path / "labels.csv"), "--data-dir", str(data_dir),
                          "--bootstrap", "50", "--json", str(tmp_path / "m.json")]) == 0
    printed = capsys.readouterr().out
    assert "labels.csv test" in printed and "resampling patients" in printed
    written = json.loads((tmp_path / "m.json").read_text())
    assert written["cluster"] == "patient" and written["metrics"]["n"] == 6 + 6
    assert np.isfinite(written["metrics"]["accuracy"])
    assert evaluate.main([run_dir, "--data-folder", str(tmp_path / "nowhere")]) == 2
    assert "--data-folder: no such file or folder" in capsys.readouterr().err
    assert evaluate.main([run_dir, "--data-csv", str(tmp_path / "labels.csv"), "--data-dir", str(data_dir),
                          "--cluster-by", "study"]) == 2
    assert "has no study ids" in capsys.readouterr().err
    # Every image of the CSV, and joined splits; n and the small-sample warning printed with them.
    assert evaluate.main([run_dir, "--data-csv", str(tmp_path / "labels.csv"), "--data-dir", str(data_dir),
                          "--split", "all", "--bootstrap", "20", "--json", str(tmp_path / "all.json")]) == 0
    printed = capsys.readouterr().out
    assert json.loads((tmp_path / "all.json").read_text())["metrics"]["n"] == 24
    assert "(n=24)" in printed and "too few to say much" in printed
    assert evaluate.main([run_dir, "--data-csv", str(tmp_path / "labels.csv"), "--data-dir", str(data_dir),
                          "--split", "validation+test", "--bootstrap", "0", "--json", str(tmp_path / "vt.json")]) == 0
    assert json.loads((tmp_path / "vt.json").read_text())["metrics"]["n"] == 6 + 12
    capsys.readouterr()
    assert evaluate.main([run_dir, "--data-csv", str(tmp_path / "labels.csv"), "--split", "everything"]) == 2
    assert "the splits are train, validation, test; or 'all'" in capsys.readouterr().err


def test_calibrate_ood_fits_saves_and_measures_a_detector(data_dir, tmp_path, capsys):
    from fracjax.inference import Classifier

    run = saved_run(tmp_path / "run", random_classifier(seed=4, batch_size=16))
    with open(f"{run}/config.json", "w") as f:
        json.dump({"train": {"data": {"dataset": "synthetic_fracture/tiny", "data_dir": data_dir}}}, f)
    assert Classifier.from_checkpoint(run).detector is None
    out = tmp_path / "ood.json"
    assert cli.main(["calibrate-ood", run, "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "AUROC against generated non-radiographs" in printed and "document" in printed
    measured = json.loads(out.read_text())
    assert 0.0 <= measured["auroc_vs_probes"] <= 1.0 and measured["test"]["n"] > 0
    detector = Classifier.from_checkpoint(run).detector
    assert detector is not None and float(detector["threshold"]) == pytest.approx(measured["threshold"])
    assert cli.main(["calibrate-ood", run, "--data-folder", str(tmp_path / "nowhere")]) == 2
    assert "--data-folder: no such file or folder" in capsys.readouterr().err


def test_a_bad_option_is_said_in_two_lines_with_a_suggestion(capsys):
    assert cli.main(["predict", "run", "x.png", "--thresold", "0.5"]) == 2
    err = capsys.readouterr().err
    assert err.splitlines()[0] == ("fracjax predict: error: unrecognized arguments: --thresold "
                                   "(did you mean --threshold?) 0.5")
    assert len(err.splitlines()) == 2 and "usage:" not in err
    assert cli.main(["audit", "--threshold", "2"]) == 2
    assert capsys.readouterr().err.startswith("fracjax audit: error: --threshold must be in (0, 1]")


def test_a_misspelt_config_option_gets_a_suggestion():
    with pytest.raises(ValueError, match="unknown config option 'phase2_epoch'; did you mean 'phase2_epochs'"):
        fracjax.train.make_config(phase2_epoch=3)
