"""Every Python block of README.md runs, in order, in one namespace (as a
reader would paste them into one notebook), with small sizes and generated
files standing in for the downloads. A block that drifts from the code fails
here; a substitution that no longer matches the README fails too."""

import os
import re

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# (README text, what the test runs instead): only sizes and budgets shrink.
SUBSTITUTIONS = [
    ("np.zeros((4, 224, 224, 1), np.float32)", "np.zeros((4, 64, 64, 1), np.float32)"),
    ("fracjax.train.make_config(phase2_epochs=3)",
     "fracjax.train.make_config(phase2_epochs=0, dataset='synthetic_fracture/tiny', data_dir=D, image_size=32, "
     "train_examples=32, batch_size=16, progress=False, bootstrap=100)"),
]


def python_blocks(text):
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def _kaggle_folder(root, images):
    """The Kaggle layout (doubled folder, a space in a class name), 2 images per class and split."""
    from PIL import Image

    base = root / "Bone_Fracture_Binary_Classification" / "Bone_Fracture_Binary_Classification"
    k = 0
    for split in ("train", "val", "test"):
        for label in ("fractured", "not fractured"):
            folder = base / split / label
            folder.mkdir(parents=True)
            for _ in range(2):
                Image.fromarray(images[k % len(images)][..., 0]).save(folder / f"{k}.png")
                k += 1


def _cached_imagenet_file(cache, monkeypatch):
    """A Keras-made MobileNetV3-Small weights file in the fracjax cache, under
    the name keras.applications uses; its hash is the one expected."""
    from fracjax.models import pretrained
    from tests.models.conftest import build_oracle, write_legacy_h5

    relative, _ = pretrained.KERAS_NO_TOP["mobilenet_v3_small"]
    path = cache / "weights" / os.path.basename(relative)
    path.parent.mkdir(parents=True)
    write_legacy_h5(build_oracle("MobileNetV3Small", 224, seed=2), path)
    monkeypatch.setitem(pretrained.KERAS_NO_TOP, "mobilenet_v3_small", (relative, pretrained.md5sum(str(path))))


def test_readme_python_blocks_run(tmp_path, monkeypatch):

    import fracjax.data

    with open(os.path.join(ROOT, "README.md")) as f:
        blocks = python_blocks(f.read())
    assert len(blocks) >= 4
    for old, _ in SUBSTITUTIONS:
        assert sum(old in b for b in blocks) == 1, f"README no longer holds {old!r}"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FRACJAX_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("FRACJAX_WEIGHTS_URL", "http://127.0.0.1:9/")  # nothing is downloaded
    _cached_imagenet_file(tmp_path / "cache", monkeypatch)
    images, _ = fracjax.data.generate_arrays(12, "test", seed=3, config=fracjax.data.SyntheticConfig(size=64))
    _kaggle_folder(tmp_path / "M", images)
    fracjax.data.samples("samples", image_size=64)  # the README's `fracjax samples samples/`
    namespace = {"D": str(tmp_path / "D"), "M": str(tmp_path / "M")}
    for index, block in enumerate(blocks):
        for old, new in SUBSTITUTIONS:
            block = block.replace(old, new)
        if "audit.json" in block and not os.path.exists("audit.json"):
            # The README's shell step before this block.
            from fracjax.commands.audit import main as audit_main

            assert audit_main(["--dataset", "fracture_xray", "--data-dir", namespace["D"], "--json", "audit.json",
                               "--clean-test"]) == 0
        try:
            exec(compile(block, f"README.md python block {index + 1}", "exec"), namespace)
        except Exception as err:  # name the block in the failure
            pytest.fail(f"README python block {index + 1} failed: {type(err).__name__}: {err}\n{block}")
    # What the blocks computed is what they say.
    assert namespace["logits"].shape == (4, 1)
    assert namespace["report"]["test"]["n"] == 64
    probability = namespace["clf"].predict(["samples/fractured/fractured_01.dcm"])
    assert probability.shape == (1,) and 0.0 <= probability[0] <= 1.0
    skipped = namespace["clf"].predict(["samples/fractured/fractured_01.dcm", "broken.png"], errors="skip")
    assert list(skipped.failed) == [1] and "broken.png" in skipped.failed[1]
    assert skipped.probabilities[0] == probability[0]
    assert namespace["result"].metrics["n"] == 4 and namespace["result"].clean is not None
    assert np.asarray(fracjax.data.read_image("samples/fractured/fractured_01.dcm")).ndim == 3
    assert np.shape(namespace["probability"]) == (3,) and np.isfinite(namespace["probability"]).all()
