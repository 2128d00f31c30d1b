"""The import-layer check (.ci/check_layers.py, run by CI) passes on the tree and fails on a planted
breach: an upward import hidden in a function, a cycle within one layer, a lazy ``fracjax.x``
attribute, and a KNOWN entry that no longer occurs."""

import pathlib
import shutil
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
CHECK = ROOT / ".ci" / "check_layers.py"


def _check(root):
    done = subprocess.run([sys.executable, str(CHECK), str(root)], capture_output=True, text=True, timeout=120)
    return done.returncode, done.stdout


def _copy(tmp_path):
    shutil.copytree(ROOT / "fracjax", tmp_path / "fracjax", ignore=shutil.ignore_patterns("__pycache__"))
    return tmp_path


def _append(path, text):
    path.write_text(path.read_text() + text)


def test_the_tree_keeps_its_layers():
    code, out = _check(ROOT)
    assert code == 0, out
    assert "no new breach" in out


def test_an_upward_import_inside_a_function_fails(tmp_path):
    root = _copy(tmp_path)
    _append(root / "fracjax/models/vgg.py", "\n\ndef _planted():\n    from fracjax.train import loop  # noqa\n")
    code, out = _check(root)
    assert code == 1
    assert "fracjax/models/vgg.py" in out and "'models' may not import the higher layer 'train'" in out


def test_a_cycle_within_a_layer_fails(tmp_path):
    root = _copy(tmp_path)
    _append(root / "fracjax/ops/conv.py", "\n\ndef _planted():\n    from fracjax.ops import fold  # noqa\n")
    _append(root / "fracjax/ops/fold.py", "\n\ndef _planted():\n    import fracjax.ops.conv  # noqa\n")
    code, out = _check(root)
    assert code == 1
    assert "import cycle: fracjax.ops.conv -> fracjax.ops.fold -> fracjax.ops.conv" in out


def test_a_lazy_attribute_counts_as_an_import(tmp_path):
    root = _copy(tmp_path)
    _append(root / "fracjax/data/augment.py", "\n\nimport fracjax  # noqa\n\n\ndef _planted():\n"
            "    return fracjax.evaluate\n")
    code, out = _check(root)
    assert code == 1
    assert "fracjax/data/augment.py" in out and "'data' may not import the higher layer 'evaluation'" in out


def test_siblings_may_not_import_each_other(tmp_path):
    root = _copy(tmp_path)
    _append(root / "fracjax/metrics.py", "\n\ndef _planted():\n    from fracjax import checkpoint  # noqa\n")
    code, out = _check(root)
    assert code == 1
    assert "'metrics' and 'checkpoint' are siblings" in out


def test_a_builder_importing_the_preparation_is_a_cycle(tmp_path):
    """The cycle issue 32 removed (a builder that prepares itself through prepare.py) cannot come back."""
    root = _copy(tmp_path)
    _append(
        root / "fracjax/data/builders/image_folder.py",
        "\n\ndef _planted():\n    from fracjax.data import prepare  # noqa\n",
    )
    code, out = _check(root)
    assert code == 1
    assert "fracjax.data.builders.image_folder -> fracjax.data.prepare" in out and "import cycle" in out


def test_a_known_breach_that_is_gone_must_be_deleted(tmp_path):
    root = _copy(tmp_path)
    script = tmp_path / "check_layers.py"
    text = CHECK.read_text()
    assert "KNOWN = {}" in text
    script.write_text(
        text.replace("KNOWN = {}", 'KNOWN = {("cycle", "fracjax.a -> fracjax.b -> fracjax.a"): "planted"}')
    )
    done = subprocess.run([sys.executable, str(script), str(root)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert "fracjax.a -> fracjax.b -> fracjax.a" in done.stdout and "no longer occurs" in done.stdout
