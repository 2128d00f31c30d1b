"""Keras weight import: the hard errors, and the classifier helper."""

import chex
import h5py
import jax
import numpy as np
import pytest

import fracjax
from fracjax.models import KerasWeightsError, weights
from tests.helpers import init_once

from .conftest import build_oracle, write_legacy_h5


@pytest.fixture(scope="module")
def oracle(keras):
    return build_oracle("MobileNetV3Small", 224, seed=11)


@pytest.fixture(scope="module")
def files(oracle, tmp_path_factory):
    d = tmp_path_factory.mktemp("weights")
    keras3 = d / "small.weights.h5"
    oracle.save_weights(keras3)
    legacy = d / "small_legacy.h5"
    write_legacy_h5(oracle, legacy)
    return {"keras3": keras3, "legacy": legacy, "dir": d}


def test_both_formats_give_identical_variables(files):
    a = fracjax.models.load_keras_weights("mobilenet_v3_small", files["keras3"])
    b = fracjax.models.load_keras_weights("mobilenet_v3_small", files["legacy"])
    assert set(a) == {"params", "batch_stats"}
    chex.assert_trees_all_equal(a, b)


def test_layer_order_covers_every_variable():
    model = fracjax.models.create("mobilenet_v3_small", head=None)
    slots = weights.keras_layer_order(model, (1, 224, 224, 3))
    kinds = [s.kind for s in slots]
    assert kinds.count("depthwise_conv2d") == 11
    assert kinds.count("batch_normalization") == 34
    assert slots[0].path == ("stem_conv",) and slots[-1].path == ("last_conv", "last_bn")


def test_not_hdf5_is_a_clear_error(tmp_path):
    bad = tmp_path / "weights.h5"
    bad.write_text("this is not an HDF5 file\n")
    with pytest.raises(KerasWeightsError, match="weights.h5 is not a readable HDF5 file"):
        fracjax.models.load_keras_weights("mobilenet_v3_small", bad)


def test_truncated_file_is_a_clear_error(files, tmp_path):
    data = files["keras3"].read_bytes()
    cut = tmp_path / "cut.weights.h5"
    cut.write_bytes(data[: len(data) // 3])
    with pytest.raises(KerasWeightsError, match="cut.weights.h5"):
        fracjax.models.load_keras_weights("mobilenet_v3_small", cut)


@pytest.mark.parametrize("reach", ["external storage", "virtual", "soft link loop", "external link"])
def test_a_file_that_reaches_past_itself_is_refused_before_reading(tmp_path, reach):
    secret = tmp_path / "secret.bin"
    secret.write_bytes(np.arange(8, dtype=np.float32).tobytes())
    bad = tmp_path / "bad.weights.h5"
    with h5py.File(bad, "w") as f:
        layer = f.create_group("layers/stem_bn/vars")
        if reach == "external storage":
            layer.create_dataset("0", shape=(8,), dtype="<f4", external=[(str(secret), 0, 32)])
        elif reach == "virtual":
            with h5py.File(tmp_path / "other.h5", "w") as other:
                other.create_dataset("x", data=np.ones(8, np.float32))
            source = h5py.VirtualSource(str(tmp_path / "other.h5"), "x", shape=(8,))
            plan = h5py.VirtualLayout(shape=(8,), dtype="f4")
            plan[:] = source
            layer.create_virtual_dataset("0", plan)
        elif reach == "soft link loop":
            layer["0"] = h5py.SoftLink("/layers/stem_bn/vars/1")
            layer["1"] = h5py.SoftLink("/layers/stem_bn/vars/0")
        else:
            layer["0"] = h5py.ExternalLink(str(tmp_path / "other.h5"), "/x")
    with pytest.raises(KerasWeightsError, match=r"bad.weights.h5: /layers/stem_bn/vars/0 (is a|keeps its values)"):
        fracjax.models.load_keras_weights("mobilenet_v3_small", bad)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.h5"):
        fracjax.models.load_keras_weights("mobilenet_v3_small", tmp_path / "nowhere.h5")


def test_other_architecture_is_rejected(files):
    with pytest.raises(KerasWeightsError, match="small.weights.h5"):
        fracjax.models.load_keras_weights("mobilenet_v3_large", files["keras3"])
    with pytest.raises(KerasWeightsError, match="layers with weights"):
        fracjax.models.load_keras_weights("mobilenet_v3_large", files["legacy"])


def test_file_with_keras_top_has_extra_weights(keras, tmp_path):
    with_top = build_oracle("MobileNetV3Small", 224, seed=0, include_top=True, classes=5)
    path = tmp_path / "top.weights.h5"
    with_top.save_weights(path)
    with pytest.raises(KerasWeightsError, match="the model does not have: layers/conv2d_"):
        fracjax.models.load_keras_weights("mobilenet_v3_small", path)
    legacy = tmp_path / "top.h5"
    write_legacy_h5(with_top, legacy)
    with pytest.raises(KerasWeightsError, match="the first extra is"):
        fracjax.models.load_keras_weights("mobilenet_v3_small", legacy)


def _copy_h5(src, dst, edit):
    with h5py.File(src, "r") as f, h5py.File(dst, "w") as g:
        for k, v in f.attrs.items():
            g.attrs[k] = v
        for k in f:
            f.copy(f[k], g, k)
        edit(g)


def test_missing_layer_is_named(files, tmp_path):
    path = tmp_path / "missing.weights.h5"
    _copy_h5(files["keras3"], path, lambda g: g.__delitem__("layers/depthwise_conv2d_10"))
    with pytest.raises(KerasWeightsError, match="missing weights layers/depthwise_conv2d_10 for block10/depthwise"):
        fracjax.models.load_keras_weights("mobilenet_v3_small", path)


def test_misshaped_weight_is_named(files, tmp_path):
    path = tmp_path / "shape.weights.h5"

    def edit(g):
        del g["layers/conv2d/vars/0"]
        g["layers/conv2d/vars"].create_dataset("0", data=np.zeros((5, 5, 3, 16), np.float32))

    _copy_h5(files["keras3"], path, edit)
    with pytest.raises(KerasWeightsError, match=r"layers/conv2d var 0 has shape \(5, 5, 3, 16\).*stem_conv/kernel"):
        fracjax.models.load_keras_weights("mobilenet_v3_small", path)


def test_legacy_missing_weight_array_is_named(files, tmp_path):
    path = tmp_path / "legacy_missing.h5"
    _copy_h5(files["legacy"], path, lambda g: g.__delitem__("Conv_1/BatchNorm/Conv_1/BatchNorm/gamma:0"))
    with pytest.raises(KerasWeightsError, match="Conv_1/BatchNorm"):
        fracjax.models.load_keras_weights("mobilenet_v3_small", path)


def test_with_backbone_variables_keeps_the_head(files):
    model = fracjax.models.create("mobilenet_v3_small", head="hybrid")
    # The parameters do not depend on the image size; a small jitted init is cheap.
    x = np.zeros((1, 64, 64, 1), np.float32)
    variables = init_once(model, x, train=False)
    imported = fracjax.models.load_keras_weights("mobilenet_v3_small", files["keras3"])
    merged = fracjax.models.with_backbone_variables(variables, imported)
    chex.assert_trees_all_equal(merged["params"]["backbone"], imported["params"])
    chex.assert_trees_all_equal(merged["batch_stats"]["backbone"], imported["batch_stats"])
    chex.assert_trees_all_equal(merged["params"]["head"], variables["params"]["head"])
    # The original is untouched.
    with pytest.raises(AssertionError):
        chex.assert_trees_all_equal(variables["params"]["backbone"], imported["params"])


def test_with_backbone_variables_rejects_another_backbone(files):
    model = fracjax.models.create("mobilenet_v3_large", head="linear")
    variables = jax.eval_shape(
        lambda: model.init(jax.random.key(0), np.zeros((1, 224, 224, 3), np.float32))
    )
    imported = fracjax.models.load_keras_weights("mobilenet_v3_small", files["keras3"])
    with pytest.raises(KerasWeightsError, match="backbone"):
        fracjax.models.with_backbone_variables(variables, imported)


def test_a_huge_declared_tensor_is_refused_from_its_shape_before_any_read(files, tmp_path):
    path = tmp_path / "huge.weights.h5"

    def edit(g):  # 4e12 floats declared, none written: the file stays small
        del g["layers/conv2d/vars/0"]
        g["layers/conv2d/vars"].create_dataset("0", shape=(100_000, 100_000, 3, 16), dtype=np.float32,
                                               chunks=(1, 1, 3, 16))

    _copy_h5(files["keras3"], path, edit)
    assert path.stat().st_size < 50_000_000
    with pytest.raises(KerasWeightsError, match=r"layers/conv2d var 0 has shape \(100000, 100000, 3, 16\)"):
        fracjax.models.load_keras_weights("mobilenet_v3_small", path)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_weights_are_refused_naming_the_array(files, tmp_path, bad):
    path = tmp_path / "nan.weights.h5"

    def edit(g):
        values = np.asarray(g["layers/batch_normalization_3/vars/1"])
        values[2] = bad
        g["layers/batch_normalization_3/vars/1"][...] = values

    _copy_h5(files["keras3"], path, edit)
    with pytest.raises(KerasWeightsError, match="layers/batch_normalization_3 var 1 holds NaN or infinite values"):
        fracjax.models.load_keras_weights("mobilenet_v3_small", path)
