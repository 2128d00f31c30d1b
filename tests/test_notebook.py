"""examples/quickstart.ipynb: it runs top to bottom (small setting), and the outputs committed with
it come from one fresh full run whose printed numbers agree with each other and name no machine's paths."""

import json
import os
import re

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(ROOT, "examples", "quickstart.ipynb")
# A path that only means something on the machine that ran the notebook.
ABSOLUTE_PATH = re.compile(r"(?<![\w.~])(?:/(?:work|home|tmp|root|Users|private|var|mnt)/|[A-Za-z]:\\)")
FIT_LINE = re.compile(r"test \(best checkpoint, step \d+\): accuracy ([\d.]+), AUROC ([\d.]+) \[([\d.]+), ([\d.]+)\]")
SUMMARY_LINE = re.compile(r"test accuracy ([\d.]+), AUROC ([\d.]+) \[([\d.]+), ([\d.]+)\]")


def _read():
    import nbformat

    return nbformat.read(NOTEBOOK, as_version=4)


def _outputs(nb):
    return [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]


def _cell_text(cell) -> str:
    return "".join(o.get("text", "") + o.get("data", {}).get("text/plain", "") for o in cell.get("outputs", []))


def _cell_with(nb, code: str):
    return next(c for c in nb.cells if c.cell_type == "code" and code in c.source)


def _floats(text: str):
    return [float(v) for v in re.findall(r"\d+\.\d+|\d+\.(?=\s|\])|\b\d+\b", text)]


def _check_outputs_agree(nb) -> str:
    """What every run of the notebook must show, and its printed numbers checked against each other."""
    outputs = _outputs(nb)
    assert not [o for o in outputs if o.get("output_type") == "error"]
    warnings = [o["text"] for o in outputs if o.get("name") == "stderr" and "arning" in o["text"]]
    assert not warnings, warnings
    assert sum("image/png" in o.get("data", {}) for o in outputs) >= 3  # samples, curves, Grad-CAM
    text = "".join(_cell_text(c) for c in nb.cells if c.cell_type == "code")
    assert "| accuracy |" in text and "the model" in text
    # The summary cell reads report.json; fit printed the same run's numbers as it ended.
    fit, summary = FIT_LINE.search(text), SUMMARY_LINE.search(text)
    assert fit and summary, text[-2000:]
    for printed, run in zip(summary.groups(), fit.groups(), strict=True):
        assert float(printed) == pytest.approx(float(run), abs=5.1e-4)
    # predict's probabilities and evaluate's accuracy come from one implementation: on the same 16 images
    # the printed probabilities give the printed accuracy.
    probs = np.array(_floats(re.search(r"\[([\d.\s]+)\]", _cell_text(_cell_with(nb, "probs = clf.predict"))).group(1)))
    table = _cell_text(_cell_with(nb, "fracjax.evaluate("))
    n = int(re.search(r"test \(n=(\d+)\)", table).group(1))
    accuracy = float(re.search(r"\| accuracy \| ([\d.]+)", table).group(1))
    labels_src = _cell_with(nb, "probs = clf.predict").source
    assert "generate_arrays(16" in labels_src and n == probs.size == 16
    _, labels = _generated_test_labels()
    on_threshold = int(np.sum(np.abs(probs - 0.5) < 5e-4))  # rounding may have moved these across it
    assert abs(float(np.mean((probs >= 0.5) == labels)) - accuracy) <= on_threshold / 16 + 1e-9
    return text


def test_the_committed_outputs_are_one_fresh_full_run_with_relative_paths():
    nb = _read()
    code = [c for c in nb.cells if c.cell_type == "code"]
    # One kernel, top to bottom, nothing re-run: execution counts 1..n.
    assert [c.execution_count for c in code] == list(range(1, len(code) + 1))
    text = _check_outputs_agree(nb)
    assert "small setting: False" in text  # the full run, not the test suite's small one
    found = ABSOLUTE_PATH.findall(text + "".join(c.source for c in nb.cells))
    assert not found, found
    # The committed run learned, as the markdown promises (its interval above chance).
    low = float(SUMMARY_LINE.search(text).group(3))
    assert low > 0.5 and "separates fractured from not fractured" in text


def _generated_test_labels():
    import fracjax  # the notebook's 16 test images, drawn as it draws them

    return fracjax.data.generate_arrays(16, "test", seed=0, config=fracjax.data.SyntheticConfig(size=128))


def test_quickstart_notebook_runs(tmp_path):
    from nbclient import NotebookClient

    nb = _read()
    # No MPLBACKEND: the kernel's own inline backend must survive fit()'s figures.
    env = {"FRACJAX_QUICKSTART_SMALL": "1", "FRACJAX_QUICKSTART_DIR": str(tmp_path / "runs"), "MPLBACKEND": None}
    old = {k: os.environ.get(k) for k in env}
    for k, v in env.items():  # the kernel inherits this process's environment
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    try:
        NotebookClient(
            nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
        ).execute()
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    text = _check_outputs_agree(nb)
    run_dir = tmp_path / "runs" / "quickstart"
    assert (run_dir / "report.html").is_file()
    report = json.loads((run_dir / "report.json").read_text())
    assert all(f"WARNING: {w}" in text for w in report["warnings"])  # the run's warnings are shown
    # The numbers printed are the ones the run wrote.
    test = report["test"]
    printed = [float(v) for v in SUMMARY_LINE.search(text).groups()]
    assert printed == pytest.approx([test["accuracy"], test["auroc"], *test["intervals"]["auroc"]], abs=5.1e-4)
