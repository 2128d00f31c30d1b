import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from fracjax import ops
from fracjax.ops import fold


def test_batch_norm_eval_gives_flax_s_floats():
    x = jax.random.normal(jax.random.key(0), (4, 6, 5, 8)) * 3 + 2
    module = nn.BatchNorm(use_running_average=True, epsilon=1e-3)
    v = jax.tree.map(lambda a: a + 0.3 * jax.random.normal(jax.random.key(3), a.shape) ** 2,
                     module.init(jax.random.key(2), x))
    p, s = v["params"], v["batch_stats"]
    got = jax.jit(lambda: ops.batch_norm_eval(x, s["mean"], s["var"], p["scale"], p["bias"], 1e-3))()
    want = jax.jit(lambda: module.apply(v, x))()
    np.testing.assert_array_equal(got, want)


def _parameters(kernel_shape):
    """A kernel as initialised (lecun normal) and BatchNorm's scale and bias, all moved off their start."""
    k1, k2, k3, k4 = jax.random.split(jax.random.key(2), 4)
    fan_in = kernel_shape[0] * kernel_shape[1] * kernel_shape[2]
    kernel = jax.random.normal(k1, kernel_shape) / fan_in ** 0.5 + 0.3 * jax.random.normal(k2, kernel_shape)
    features = kernel_shape[-1]
    return kernel, 1 + 0.3 * jax.random.normal(k3, (features,)), 0.3 * jax.random.normal(k4, (features,))


def _fold_against_conv_then_norm(x, kernel, scale, bias, strides, r):
    """Values, statistics and gradients of the folded train step ("matmul")
    against the convolution, then BatchNorm's own pass ("lax")."""
    def run(impl):
        def loss(x, kernel, scale, bias):
            y, mean, var = ops.conv_batch_norm_train(x, kernel, scale, bias, strides, "SAME", 1e-3, None, impl)
            return (y * r).sum() + (y ** 2).sum(), (y, mean, var)

        return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3), has_aux=True))(x, kernel, scale, bias)

    got, want = run("matmul"), run("lax")
    # The folded kernel gradient sums terms that cancel (x^T g against the x^T x correction) before
    # BatchNorm's projection, so its float32 error scales with the largest entry, not each entry
    # (against float64: ~3e-5 of the largest kernel gradient, conv + BN ~7e-6).
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=5e-5 * float(jnp.max(jnp.abs(b)))),
                 got, want)
    chex.assert_tree_all_finite(got)


@pytest.mark.parametrize("c_in,c_out,chunked_rows", [(3, 8, 65536), (4, 24, 65536), (4, 24, 0)])
def test_a_widening_pointwise_conv_folds_with_the_same_results(monkeypatch, c_in, c_out, chunked_rows):
    monkeypatch.setattr(fold, "CHUNKED_ROWS", chunked_rows)  # 0: x^T x and x^T g summed per image
    # Non-zero-mean, correlated input channels: the statistics come from x^T x.
    base = jax.random.normal(jax.random.key(0), (4, 5, 6, c_in))
    x = jax.nn.relu(base + 0.5 * base[..., :1]) + 0.3
    kernel, scale, bias = _parameters((1, 1, c_in, c_out))
    r = jax.random.normal(jax.random.key(1), (*x.shape[:-1], c_out))
    _fold_against_conv_then_norm(x, kernel, scale, bias, (1, 1), r)


@pytest.mark.parametrize("strides,features", [((2, 2), 16), ((1, 1), 12)])
def test_a_small_patch_stem_folds_on_its_patches(strides, features):
    x = jax.random.uniform(jax.random.key(0), (3, 9, 10, 1), minval=-1.0, maxval=1.0) + 0.2
    kernel, scale, bias = _parameters((3, 3, 1, features))
    out = ops.conv2d(x, kernel, strides, "SAME", impl="lax")
    r = jax.random.normal(jax.random.key(1), out.shape)
    _fold_against_conv_then_norm(x, kernel, scale, bias, strides, r)


def _folds(x, kernel, strides=(1, 1), impl="matmul", fold=True) -> bool:
    features = kernel.shape[-1]
    jaxpr = jax.make_jaxpr(lambda x, k: ops.conv_batch_norm_train(
        x, k, jnp.ones(features), jnp.zeros(features), strides, "SAME", 1e-3, None, impl, fold))(x, kernel)
    return "pointwise_conv_batch_norm_train" in str(jaxpr)


def test_only_widening_pointwise_and_small_patch_convs_fold():
    x = jnp.ones((2, 4, 4, 8))
    assert _folds(x, jnp.ones((1, 1, 8, 16)))
    assert not _folds(x, jnp.ones((1, 1, 8, 12)))  # 1.5x: x^T x too dear
    assert not _folds(x, jnp.ones((1, 1, 8, 16)), strides=(2, 2))
    assert not _folds(x, jnp.ones((1, 1, 8, 16)), impl="lax")
    assert not _folds(x, jnp.ones((1, 1, 8, 16)), fold=False)
    grey, rgb = jnp.ones((2, 8, 8, 1)), jnp.ones((2, 8, 8, 3))
    assert _folds(grey, jnp.ones((3, 3, 1, 16)), strides=(2, 2))
    assert not _folds(rgb, jnp.ones((3, 3, 3, 16)), strides=(2, 2))  # 27-value patches outgrow 16 features
    assert not _folds(x.astype(jnp.bfloat16), jnp.ones((1, 1, 8, 16), jnp.bfloat16))


def test_folded_conv_batch_norm_axis_name_matches_conv_then_batch_norm():
    x = jax.nn.relu(jax.random.normal(jax.random.key(0), (2, 3, 4, 4, 4)) + 0.2)  # (devices, batch, h, w, c)
    r = jax.random.normal(jax.random.key(1), (*x.shape[:-1], 12))
    kernel = jax.random.normal(jax.random.key(2), (1, 1, 4, 12))
    scale, bias = 1 + 0.1 * jnp.arange(12.0), 0.05 * jnp.arange(12.0)

    def per_device(fn):
        def loss(x, kernel, scale, bias, r):
            y, mean, var = fn(x, kernel, scale, bias)
            return (y * r).sum() + (y ** 2).sum(), (mean, var)

        grad = jax.grad(loss, argnums=(0, 1, 2, 3), has_aux=True)
        return jax.vmap(grad, in_axes=(0, None, None, None, 0), axis_name="devices")(x, kernel, scale, bias, r)

    got = per_device(lambda x, k, s, b: ops.pointwise_conv_batch_norm_train(x, k, s, b, 1e-3, "devices"))
    want = per_device(lambda x, k, s, b: ops.batch_norm_train(ops.pointwise_matmul_conv(x, k), s, b, 1e-3,
                                                                 "devices"))
    # Two float32 summation orders: on 2026-12-01's machine one input-gradient element of 384 (values up
    # to ~10) differed by 2.3e-5, at the session's first commit too; a wrong term in the fold is >= 1e-2.
    chex.assert_trees_all_close(got, want, rtol=1e-4, atol=1e-4)


