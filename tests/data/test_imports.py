"""The on-device parts (augmentation, train step, models) import without
tensorflow_datasets or grain: the GPU machines and users' inference hosts may
not have them."""

import subprocess
import sys


def test_train_step_and_models_do_not_import_tfds_or_grain():
    code = (
        "import sys, fracjax, fracjax.data, fracjax.train.steps, fracjax.inference\n"
        "bad = [m for m in ('tensorflow_datasets', 'grain', 'tensorflow') if m in sys.modules]\n"
        "assert not bad, bad\n"
        "import fracjax.data as d\n"
        "d.SyntheticFracture\n"
        "assert 'tensorflow_datasets' in sys.modules\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
