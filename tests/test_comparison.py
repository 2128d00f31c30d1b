"""The comparison on a tiny setting: a complete table, the figure and the
report; a second call reuses finished models and resumes a half-done one."""

import json
import os

import pytest

from fracjax.comparison import BUDGET_ONLY, COLUMNS, ComparisonConfig, run_comparison


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    import tensorflow_datasets as tfds

    import fracjax.data.builders  # noqa: F401

    d = str(tmp_path_factory.mktemp("tfds"))
    tfds.builder("synthetic_fracture/tiny", data_dir=d).download_and_prepare()
    return d


def tiny(data_dir, out, **overrides):
    values = dict(models=("mobilenet_v3_small", "vgg16"), out=str(out), dataset="synthetic_fracture/tiny",
                  data_dir=data_dir, image_size=32, train_examples=32, phase1_epochs=2, phase2_epochs=0,
                  batch_size=16, bootstrap=50, latency_repeats=2)
    values.update(overrides)
    return ComparisonConfig(**values)


def test_tiny_comparison_is_complete_and_resumable(data_dir, tmp_path):
    messages = []
    result = run_comparison(tiny(data_dir, tmp_path), log=messages.append)
    rows = result["rows"]
    assert [r["model"] for r in rows] == ["mobilenet_v3_small", "vgg16"]
    for name in ("comparison.md", "comparison.json", "roc.png", "report.html"):
        assert os.path.getsize(tmp_path / name) > 0, name
    table = (tmp_path / "comparison.md").read_text().splitlines()
    assert table[0] == "| " + " | ".join(COLUMNS) + " |"
    body = [line for line in table if line.startswith("| mobilenet") or line.startswith("| vgg16")]
    assert len(body) == 2
    for line in body:
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert len(cells) == len(COLUMNS)
        assert "[" in cells[1] and "[" in cells[2]  # accuracy and AUROC carry intervals
        assert cells[7] == "-"  # no audit: no clean-test column values
        assert cells[COLUMNS.index("steps")] == "4"  # 2 epochs of 32 // 16 steps (the budget was not reached)
    assert "the same budget of 5 min of training per model" in table[-1]
    saved = json.loads((tmp_path / "comparison.json").read_text())
    assert saved["rows"][1]["parameters"] > saved["rows"][0]["parameters"]  # VGG16 is the bigger one
    assert all(r["test"]["n"] == 64 and r["forward_gflops"] > 0 and r["latency_ms"] > 0 for r in saved["rows"])
    html = (tmp_path / "report.html").read_text()
    assert "data:image/png;base64," in html and "vgg16/report.html" in html

    # Again: both finished models are reused. Then a model without its report resumes.
    messages.clear()
    run_comparison(tiny(data_dir, tmp_path), log=messages.append)
    assert sum("finished earlier" in m for m in messages) == 2
    os.remove(tmp_path / "vgg16" / "report.json")
    messages.clear()
    again = run_comparison(tiny(data_dir, tmp_path), log=messages.append)
    assert any(m.startswith("vgg16: resuming") for m in messages)
    assert again["rows"][1]["test"]["auroc"] == pytest.approx(rows[1]["test"]["auroc"])


def test_a_budget_replaces_the_schedule_and_early_stopping():
    budgeted = ComparisonConfig().train_config("vgg16").optim
    assert budgeted.train_minutes == 5.0 and budgeted.schedule == "plateau"
    assert budgeted.early_stopping_patience == BUDGET_ONLY
    plain = ComparisonConfig(budget_minutes=None).train_config("vgg16").optim
    assert plain.train_minutes is None and plain.schedule == "cosine" and plain.early_stopping_patience == 3


def test_bad_configs_are_named(tmp_path):
    with pytest.raises(ValueError, match=r"--models: must be one of \(.*\), got 'mobilenet'"):
        ComparisonConfig(models=("mobilenet",)).validate()
    with pytest.raises(ValueError, match="resnet50=.*not among --models"):
        ComparisonConfig(models=("vgg16",), pretrained={"resnet50": str(tmp_path)}).validate()
    with pytest.raises(ValueError, match="no such file"):
        ComparisonConfig(models=("vgg16",), pretrained={"vgg16": str(tmp_path / "w.h5")}).validate()
    with pytest.raises(ValueError, match=r"--image-size: must be >= 32"):
        ComparisonConfig(image_size=8).validate()
    with pytest.raises(ValueError, match=r"--budget-minutes: must be > 0"):
        ComparisonConfig(budget_minutes=-1.0).validate()
