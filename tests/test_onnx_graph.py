"""fracjax's ONNX converter (fracjax.deploy.onnx_graph, onnx_layers, onnx_fuse): layers in any
configuration compute in onnxruntime what they compute in JAX; every architecture converts
channels-first with its BatchNorms folded and no transposes; the rewrites keep the numbers;
what it cannot convert is refused by name."""

import collections

import jax
import jax.numpy as jnp
import numpy as np
import onnxruntime
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fracjax
from fracjax.deploy import ExportError, onnx_model
from fracjax.deploy.common import serving_function
from fracjax.deploy.onnx_graph import ConversionError
from fracjax.inference import Classifier, build_model
from fracjax.models.layers import hard_swish
from tests.helpers import random_variables


def run(model, pixels):
    session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"pixels": np.asarray(pixels, np.float32)})


def ops(model):
    return collections.Counter(node.op_type for node in model.graph.node)


def pixels(count, size, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (count, size, size, 1)).astype(np.float32)


def layer_stack(kernel, stride, padding, groups, pool, activation, seed):
    """pixels -> a 1x1 widening, a (grouped) convolution with a BatchNorm-like affine, an
    activation, a squeeze-and-excitation-like gate, a pool: NHWC out, as the models compute."""
    rng = np.random.default_rng(seed)
    channels = 2 * groups
    widen = jnp.asarray(rng.normal(size=(1, 1, 1, channels)), jnp.float32)
    weight = jnp.asarray(rng.normal(size=(kernel, kernel, 2, channels)) * 0.3, jnp.float32)
    mean, scale = (jnp.asarray(rng.normal(size=channels), jnp.float32) for _ in range(2))
    var = jnp.asarray(rng.uniform(0.5, 2.0, channels), jnp.float32)

    def fn(x):
        x = jax.lax.conv_general_dilated(x / 255.0, widen, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))
        y = jax.lax.conv_general_dilated(x, weight, (stride, stride), padding, feature_group_count=groups,
                                         dimension_numbers=("NHWC", "HWIO", "NHWC"))
        y = (y - mean) * (jax.lax.rsqrt(var + 1e-3) * scale) + 0.1
        y = {"relu": jax.nn.relu, "hard_swish": hard_swish, "none": lambda v: v}[activation](y)
        y = y * jax.nn.sigmoid(jnp.mean(y, axis=(1, 2), keepdims=True))
        if pool == "max":
            y = fracjax.models.layers.padded_max_pool(y, 3, 2, 1)
        elif pool == "avg":
            y = jax.lax.reduce_window(y, 0.0, jax.lax.add, (1, 2, 2, 1), (1, 2, 2, 1), "VALID") / 4.0
        return (y,)

    return fn


@settings(max_examples=24, deadline=None)
@given(kernel=st.sampled_from([1, 3, 5]), stride=st.sampled_from([1, 2]),
       padding=st.sampled_from(["SAME", "VALID", ((0, 1), (0, 1)), ((2, 1), (1, 2))]),
       groups=st.sampled_from([1, 3]), pool=st.sampled_from(["none", "max", "avg"]),
       activation=st.sampled_from(["relu", "hard_swish", "none"]), seed=st.integers(0, 2**16))
def test_a_layer_in_onnx_computes_what_it_computes_in_jax(kernel, stride, padding, groups, pool, activation, seed):
    fn = layer_stack(kernel, stride, padding, groups, pool, activation, seed)
    model = onnx_model.convert(fn, 12, ["out"])
    x = pixels(3, 12, seed)
    (expected,) = fn(jnp.asarray(x))
    (got,) = run(model, x)
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, np.asarray(expected), rtol=1e-4, atol=1e-4)
    assert ops(model)["Transpose"] <= 1  # the output's, back to NHWC; none between the layers


def perturbed_classifier(name, size, seed=0):
    """A random classifier whose BatchNorms are far from the identity (so folding them shows)."""
    model = fracjax.models.create(name, head="hybrid")
    variables = random_variables(model, size, seed)
    rng = np.random.default_rng(seed)

    def perturb(path, leaf):
        key = str(getattr(path[-1], "key", ""))
        low, high = {"scale": (0.5, 1.5), "var": (0.5, 2.0), "mean": (-0.3, 0.3), "bias": (-0.3, 0.3)}.get(key, (0, 0))
        return leaf + jnp.asarray(rng.uniform(low, high, leaf.shape), leaf.dtype) if high else leaf

    variables = jax.tree_util.tree_map_with_path(perturb, dict(variables))
    spec = {"model": name, "head": "hybrid", "image_size": size, "threshold": 0.5,
            "variables_layout": fracjax.models.migrate.VARIABLES_LAYOUT}
    return Classifier(spec, {"params": variables["params"], "batch_stats": variables["batch_stats"]}, batch_size=4)


@pytest.mark.parametrize("name", ["mobilenet_v3_small", "mobilenet_v3_large", "resnet50", "vgg16", "densenet121"])
def test_every_architecture_converts_channels_first_with_its_batchnorms_folded(name):
    classifier = perturbed_classifier(name, 32)
    fn = serving_function(classifier, build_model(classifier.spec, kernels="portable"))
    model = onnx_model.convert(fn, 32, ["probability", "logit"])
    x = pixels(3, 32)
    probability, logit = run(model, x)
    np.testing.assert_allclose(logit, classifier.logits(x), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(probability, classifier.predict(x), atol=1e-5)
    counted = ops(model)
    layers = sum(1 for p, _ in jax.tree_util.tree_leaves_with_path(classifier.variables["params"])
                 if str(getattr(p[-1], "key", "")) == "kernel" and _.ndim == 4)
    assert counted["Conv"] == layers  # one Conv per convolution, nothing else left of BatchNorm
    assert not {"Transpose", "Sqrt", "Reciprocal", "ReduceSum"} & set(counted)
    # No BatchNorm's arithmetic is left: one Sub centres the input, one Div is the temperature's.
    # A BatchNorm before its convolution (DenseNet: each of its 58 layers' first, the 3
    # transitions', the last) has none to go into: it is one BatchNormalization op, and so is
    # DenseNet's input normalisation (Keras's "torch" mode: divide, subtract, divide).
    assert counted["Sub"] <= 1 and counted["Div"] == 1
    assert counted["BatchNormalization"] == (58 + 3 + 1 + 1 if name == "densenet121" else 0)
    if name.startswith("mobilenet"):
        assert counted["HardSwish"] and counted["HardSigmoid"] and counted["GlobalAveragePool"]


def conv_then(op, constant):
    """A convolution followed by ``op`` with a per-channel or scalar constant, NCHW-shaped."""
    weight = jnp.asarray(np.random.default_rng(1).normal(size=(3, 3, 1, 4)), jnp.float32)

    def fn(x):
        y = jax.lax.conv_general_dilated(x, weight, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return (op(y, constant),)

    return fn


@pytest.mark.parametrize("op", [jnp.add, jnp.subtract, jnp.multiply, jnp.divide])
@pytest.mark.parametrize("constant", [np.float32(0.7), np.asarray([1.5, -2.0, 0.25, 3.0], np.float32)])
def test_a_constant_after_a_convolution_goes_into_its_weights(op, constant):
    fn = conv_then(op, constant)
    model = onnx_model.convert(fn, 8, ["out"])
    assert ops(model)["Conv"] == 1 and set(ops(model)) <= {"Reshape", "Conv", "Transpose", "Identity"}
    x = pixels(2, 8)
    np.testing.assert_allclose(run(model, x)[0], np.asarray(fn(jnp.asarray(x))[0]), rtol=1e-5, atol=1e-4)


def test_a_constant_before_the_convolution_is_not_folded_into_it():
    # (constant - y) is not y's affine map with the constant as shift: it must stay a Sub.
    fn = conv_then(lambda y, c: c - y, np.float32(0.5))
    model = onnx_model.convert(fn, 8, ["out"])
    assert ops(model)["Sub"] == 1
    x = pixels(2, 8)
    np.testing.assert_allclose(run(model, x)[0], np.asarray(fn(jnp.asarray(x))[0]), rtol=1e-5, atol=1e-4)


def test_the_input_rescaling_goes_into_the_first_convolution_and_its_padding_still_means_zero():
    weight = jnp.asarray(np.random.default_rng(2).normal(size=(3, 3, 1, 4)), jnp.float32)

    def fn(x):
        x = jnp.clip(jnp.round(x), 0.0, 255.0) * (1.0 / 127.5) - 1.0
        return (jax.lax.conv_general_dilated(x, weight, (2, 2), ((0, 1), (0, 1)),
                                             dimension_numbers=("NHWC", "HWIO", "NHWC")),)

    model = onnx_model.convert(fn, 9, ["out"])
    counted = ops(model)
    assert not {"Mul", "Add", "Pad"} & set(counted) and counted["Sub"] == 1 and counted["Clip"] == 1
    x = pixels(2, 9) + 0.4  # not integers: the rounding is in the graph
    np.testing.assert_allclose(run(model, x)[0], np.asarray(fn(jnp.asarray(x))[0]), rtol=1e-5, atol=1e-4)


def test_what_it_cannot_convert_is_refused_by_name():
    with pytest.raises(ConversionError, match="cumsum"):
        onnx_model.convert(lambda x: (jnp.cumsum(x, axis=1),), 4, ["out"])
    with pytest.raises(ConversionError, match="dilated input"):
        onnx_model.convert(lambda x: (jax.lax.conv_general_dilated(
            x, jnp.ones((2, 2, 1, 1)), (1, 1), ((0, 0), (0, 0)), lhs_dilation=(2, 2),
            dimension_numbers=("NHWC", "HWIO", "NHWC")),), 4, ["out"])


def test_export_says_why_it_cannot_convert_and_writes_nothing(tmp_path, monkeypatch):
    from tests.helpers import random_classifier

    classifier = random_classifier(seed=3, batch_size=2)
    monkeypatch.setattr(onnx_model, "serving_function", lambda *a, **k: lambda x: (jnp.cumsum(x, axis=1)[:, 0, 0, 0],))
    with pytest.raises(ExportError, match="cumsum.*nothing written"):
        fracjax.export(classifier, str(tmp_path / "out"), format="onnx")
    assert not (tmp_path / "out").exists()


def test_a_constant_as_large_as_the_batch_stays_small_in_the_graph():
    def fn(x):
        return (x * jnp.full_like(x, 0.5) + jnp.arange(2.0).sum(),)  # a constant the shape of the (symbolic) batch

    model = onnx_model.convert(fn, 6, ["out"])
    assert all(np.prod(t.dims) <= 1 for t in model.graph.initializer if t.data_type == 1)  # float constants
    x = pixels(3, 6)
    np.testing.assert_allclose(run(model, x)[0], np.asarray(fn(jnp.asarray(x))[0]), rtol=1e-6)
