"""MobileNetV3 against keras.applications (random weights, randomised BN)."""

import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fracjax
from fracjax.models import mobilenet_v3
from tests.helpers import init_once, random_variables

from .conftest import build_oracle, keras_forward, write_legacy_h5


def relative_error(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a) - np.asarray(b))) / np.max(np.abs(np.asarray(b))))


def count(tree) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(tree))


@pytest.fixture(scope="module")
def small_oracles(keras):
    # One Keras model per input size (Keras fixes the size at build time),
    # sharing weights: the 160 model loads the 224 model's file.
    m224 = build_oracle("MobileNetV3Small", 224, seed=3)
    m160 = build_oracle("MobileNetV3Small", 160, seed=4)
    m160.set_weights(m224.get_weights())
    return {224: m224, 160: m160}


@pytest.fixture(scope="module")
def small_files(small_oracles, tmp_path_factory):
    d = tmp_path_factory.mktemp("mnv3s")
    keras3 = d / "mobilenet_v3_small.weights.h5"
    small_oracles[224].save_weights(keras3)
    legacy = d / "weights_mobilenet_v3_small_224_1.0_float_no_top_v2.h5"
    write_legacy_h5(small_oracles[224], legacy)
    return {"keras3": keras3, "legacy": legacy}


def test_legacy_writer_is_what_keras_loads(small_oracles, small_files, keras):
    # The test file must be one Keras itself accepts, or the legacy test proves nothing.
    other = build_oracle("MobileNetV3Small", 224, seed=99)
    other.load_weights(small_files["legacy"])
    for a, b in zip(other.get_weights(), small_oracles[224].get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("fmt", ["keras3", "legacy"])
@pytest.mark.parametrize("size", [224, 160])
def test_parity_with_keras_mobilenet_v3_small(small_oracles, small_files, fmt, size):
    variables = fracjax.models.load_keras_weights("mobilenet_v3_small", small_files[fmt])
    model = fracjax.models.create("mobilenet_v3_small", head=None)
    x = np.random.default_rng(size).uniform(0, 255, (2, size, size, 3)).astype(np.float32)
    expected = keras_forward(small_oracles[size], x)
    with jax.default_matmul_precision("highest"):
        got = jax.jit(model.apply)(variables, x)
    chex.assert_shape(got, expected.shape)
    assert relative_error(got, expected) <= 1e-4


def test_parity_with_the_portable_kernels_too(small_oracles, small_files):
    variables = fracjax.models.load_keras_weights("mobilenet_v3_small", small_files["keras3"])
    model = fracjax.models.create("mobilenet_v3_small", head=None, kernels="portable")
    x = np.random.default_rng(7).uniform(0, 255, (1, 224, 224, 3)).astype(np.float32)
    expected = keras_forward(small_oracles[224], x)
    with jax.default_matmul_precision("highest"):
        got = jax.jit(model.apply)(variables, x)
    assert relative_error(got, expected) <= 1e-4


def test_parity_with_keras_mobilenet_v3_large(keras, tmp_path):
    oracle = build_oracle("MobileNetV3Large", 192, seed=5)
    path = tmp_path / "large.weights.h5"
    oracle.save_weights(path)
    variables = fracjax.models.load_keras_weights("mobilenet_v3_large", path, image_size=192)
    assert count(variables) == oracle.count_params()
    model = fracjax.models.create("mobilenet_v3_large", head=None)
    x = np.random.default_rng(5).uniform(0, 255, (1, 192, 192, 3)).astype(np.float32)
    with jax.default_matmul_precision("highest"):
        got = jax.jit(model.apply)(variables, x)
    assert relative_error(got, keras_forward(oracle, x)) <= 1e-4


def test_parameter_count_small(small_oracles):
    model = fracjax.models.create("mobilenet_v3_small", head=None)
    variables = jax.eval_shape(model.init, jax.random.key(0), np.zeros((1, 224, 224, 3), np.float32))
    assert count(variables) == 939_120 == small_oracles[224].count_params()
    # BN statistics count too: 939,120 includes them, as Keras's count_params does.
    assert count(variables["batch_stats"]) > 0


def test_shapes_batch_one_and_grey_input():
    model = fracjax.models.create("mobilenet_v3_small", head=None)
    rgb_one = np.random.default_rng(0).uniform(0, 255, (1, 224, 224, 1)).astype(np.float32)
    variables = random_variables(model, 224, seed=0)
    apply = jax.jit(model.apply)
    grey = apply(variables, rgb_one)
    chex.assert_shape(grey, (1, 7, 7, 576))
    rgb = apply(variables, np.repeat(rgb_one, 3, axis=-1))
    chex.assert_trees_all_close(grey, rgb, rtol=1e-6, atol=1e-6)
    chex.assert_tree_all_finite(grey)
    # Odd size: Keras's correct_pad path.
    chex.assert_shape(apply(variables, np.zeros((2, 97, 131, 3), np.float32)), (2, 4, 5, 576))


def test_block_table_matches_reference():
    exp = []
    in_ch = 16
    for spec in mobilenet_v3.SMALL_BLOCKS:
        exp.append(mobilenet_v3.make_divisible(in_ch * spec.expansion))
        in_ch = spec.out
    assert exp == [16, 72, 88, 96, 240, 240, 120, 144, 288, 576, 576]


@pytest.mark.parametrize("name", ["mobilenet_v3_small", "resnet50"])
def test_zero_init_residual_starts_residual_blocks_as_identity(name):
    """The last BN scale of exactly the residual blocks starts at 0 (and at 1
    with zero_init_residual=False); the other BNs are untouched."""
    import flax

    x = np.zeros((1, 64, 64, 1), np.float32)
    zeroed = {}
    for flag in (True, False):
        model = fracjax.models.create(name, head=None, zero_init_residual=flag)
        params = init_once(model, x)["params"]
        flat = flax.traverse_util.flatten_dict(params)
        zeroed[flag] = sorted("/".join(k[:-1]) for k, v in flat.items() if k[-1] == "scale" and not np.any(v))
        scales = [v for k, v in flat.items() if k[-1] == "scale"]
        assert all(np.all((v == 0) | (v == 1)) for v in scales)
    assert zeroed[False] == []
    if name == "mobilenet_v3_small":
        residual = [f"block{i}/project/project_bn" for i, spec in enumerate(mobilenet_v3.SMALL_BLOCKS)
                    if i > 0 and spec.stride == 1 and spec.out == mobilenet_v3.SMALL_BLOCKS[i - 1].out]
        assert zeroed[True] == sorted(residual) and len(residual) == 6
    else:
        assert len(zeroed[True]) == 16 and all(z.endswith("/bn3") for z in zeroed[True])


def test_train_mode_folds_the_expand_last_and_grey_stem_batch_norms_on_cpu(monkeypatch):
    # MobileNetV3-Small on grey input: 10 expand convs, the last conv and the stem run as
    # ops.pointwise_conv_batch_norm_train in train mode (benchmarks/NOTES.md, session 6);
    # eval mode and the portable kit keep conv + BatchNorm.
    x = np.zeros((2, 64, 64, 1), np.float32)

    def folds(model, train):
        v = jax.eval_shape(model.init, jax.random.key(0), x)  # tracing needs shapes only
        jaxpr = jax.make_jaxpr(lambda v, x: model.apply(v, x, train=train, mutable=["batch_stats"]))(v, x)
        return str(jaxpr).count("name=pointwise_conv_batch_norm_train")

    cpu = fracjax.models.create("mobilenet_v3_small", head=None, kernels="cpu")
    assert folds(cpu, True) == 12
    assert folds(cpu, False) == 0
    assert folds(fracjax.models.create("mobilenet_v3_small", head=None, kernels="portable"), True) == 0
    monkeypatch.setenv("FRACJAX_CONV_IMPL", "lax")  # the environment sets create's default kit
    assert folds(fracjax.models.create("mobilenet_v3_small", head=None), True) == 0
    monkeypatch.setenv("FRACJAX_CONV_IMPL", "matmul")
    assert folds(fracjax.models.create("mobilenet_v3_small", head=None), True) == 12


def test_kits_change_the_code_not_the_parameters():
    x = np.random.default_rng(0).uniform(0, 255, (2, 64, 64, 1)).astype(np.float32)
    models = {name: fracjax.models.create("mobilenet_v3_small", kernels=name) for name in fracjax.models.KITS}
    v = init_once(models["auto"], x)
    expected = jax.jit(models["portable"].apply)(v, x)
    for model in models.values():
        # The same initialisers in the same order: the same values from one key (checked on one kit pair;
        # the tree of every kit).
        chex.assert_trees_all_equal_shapes_and_dtypes(jax.eval_shape(model.init, jax.random.key(0), x), v)
        chex.assert_trees_all_close(jax.jit(model.apply)(v, x), expected, rtol=1e-4, atol=1e-4)
    chex.assert_trees_all_equal(init_once(models["cpu"], x), v)
    with pytest.raises(ValueError, match="kernels must be one of"):
        fracjax.models.create("mobilenet_v3_small", kernels="gpu")
    with pytest.raises(ValueError, match="Kernels.depthwise"):
        fracjax.models.Kernels(depthwise="matmul")


def test_a_model_traced_on_cpu_exports_the_portable_ops_for_gpu():
    from jax import export

    model = fracjax.models.create("mobilenet_v3_small")
    x = jax.ShapeDtypeStruct((1, 64, 64, 1), jnp.float32)
    v = jax.eval_shape(model.init, jax.random.key(0), x)
    forward = jax.jit(lambda v, x: model.apply(v, x))
    for_gpu = export.export(forward, platforms=["cuda"])(v, x).mlir_module()
    for_cpu = export.export(forward, platforms=["cpu"])(v, x).mlir_module()
    grouped = re.compile(r"feature_group_count = (?!1\b)\d+")  # the depthwise convolutions
    assert len(grouped.findall(for_gpu)) == 11 and not grouped.findall(for_cpu)
