"""``import fracjax.data`` registers the TFDS builders where
tensorflow_datasets is installed; where it (or grain) is not, the on-device
parts (augmentation, train step, models, inference) still import: the GPU
machines and users' inference hosts may not have them."""

import subprocess
import sys

# Makes `import tensorflow_datasets` / `import grain` fail as if not installed.
BLOCK = (
    "import importlib.abc, sys\n"
    "class Block(importlib.abc.MetaPathFinder):\n"
    "    def find_spec(self, name, path=None, target=None):\n"
    "        if name.split('.')[0] in ('tensorflow_datasets', 'grain'):\n"
    "            raise ModuleNotFoundError(name)\n"
    "sys.meta_path.insert(0, Block())\n"
)


def _run(code):
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_without_tfds_or_grain_the_device_parts_import():
    out = _run(
        BLOCK
        + "import fracjax, fracjax.data, fracjax.train.steps, fracjax.inference\n"
        "fracjax.data.augment_batch, fracjax.data.read_image, fracjax.models.create\n"
        "try:\n"
        "    fracjax.data.SyntheticFracture\n"
        "except ImportError as err:\n"
        "    print('ImportError', err)\n"
    )
    assert "ImportError" in out and "tensorflow_datasets" in out


def test_import_fracjax_data_registers_the_builders():
    out = _run(
        "import fracjax.data, tensorflow_datasets as tfds\n"
        "print(tfds.builder_cls('fracture_xray').__name__, tfds.builder_cls('synthetic_fracture').__name__)\n"
    )
    assert out.split() == ["FractureXray", "SyntheticFracture"]


def test_the_audit_command_runs_without_a_runpy_warning():
    done = subprocess.run([sys.executable, "-W", "error::RuntimeWarning", "-m", "fracjax.cli", "audit", "--help"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "RuntimeWarning" not in done.stderr and "near-duplicate" in done.stdout
