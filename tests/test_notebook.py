"""examples/quickstart.ipynb runs top to bottom (small setting)."""

import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_quickstart_notebook_runs(tmp_path):
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(os.path.join(ROOT, "examples", "quickstart.ipynb"), as_version=4)
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
    errors = [
        o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.get("output_type") == "error"
    ]
    assert not errors
    assert (tmp_path / "runs" / "quickstart" / "report.html").is_file()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    text = "".join(o.get("text", "") for o in outputs)
    assert "| accuracy |" in text  # the metrics table was printed
    assert "test accuracy" in text and "the model" in text  # the cell that says what was learned
    import json

    report = json.loads((tmp_path / "runs" / "quickstart" / "report.json").read_text())
    assert all(f"WARNING: {w}" in text for w in report["warnings"])  # the run's warnings are shown
    # Every figure cell shows its figure: samples, training curves, Grad-CAM.
    assert sum("image/png" in o.get("data", {}) for o in outputs) >= 3
    warnings = [o["text"] for o in outputs if o.get("name") == "stderr" and "arning" in o["text"]]
    assert not warnings, warnings
