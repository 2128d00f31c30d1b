import chex
import jax
import jax.numpy as jnp
import pytest

from fracjax import ops


def _value_and_vjp(impl, x, w, stride, padding, key):
    def f(x, w):
        return ops.conv2d(x, w, (stride, stride), padding, impl=impl)

    y = f(x, w)
    _, vjp = jax.vjp(f, x, w)
    return y, vjp(jax.random.normal(key, y.shape))


@pytest.mark.parametrize(
    "kernel,stride,padding,c_in",
    [((1, 1), 1, "SAME", 8), ((1, 1), 1, "VALID", 40), ((1, 1), 2, "SAME", 8), ((3, 3), 1, "SAME", 8),
     ((1, 1), 1, ((0, 0), (0, 0)), 40), ((3, 3), 2, "SAME", 3), ((3, 3), 1, "SAME", 1), ((2, 3), 2, "SAME", 2)],
)
def test_conv_matmul_matches_lax_value_and_gradients(kernel, stride, padding, c_in):
    kx, kk, kg = jax.random.split(jax.random.key(7), 3)
    x = jax.random.normal(kx, (2, 9, 10, c_in))
    w = jax.random.normal(kk, (*kernel, c_in, 12))
    got = jax.jit(lambda: _value_and_vjp("matmul", x, w, stride, padding, kg))()
    want = jax.jit(lambda: _value_and_vjp("lax", x, w, stride, padding, kg))()
    chex.assert_equal_shape([got[0], want[0]])
    chex.assert_trees_all_close(got, want, rtol=1e-5, atol=1e-4)


def _primitives(fn, *args):
    return {e.primitive.name for e in jax.make_jaxpr(fn)(*args).jaxpr.eqns}


def test_conv_matmul_takes_pointwise_and_small_patch_convolutions_only():
    x = jnp.ones((2, 6, 6, 40))  # 3x3x40 and 1x1x40 patches: too big for the patch path

    def primitives(kernel, strides, x=x):
        w = jnp.ones((*kernel, x.shape[-1], 3))
        return _primitives(lambda x, w: ops.conv2d(x, w, strides, "SAME", impl="matmul"), x, w)

    assert "dot_general" in primitives((1, 1), (1, 1))
    assert "conv_general_dilated" not in primitives((1, 1), (1, 1))
    assert "conv_general_dilated" in primitives((3, 3), (1, 1))
    assert "conv_general_dilated" in primitives((1, 1), (2, 2))
    assert "conv_general_dilated" not in primitives((3, 3), (2, 2), x[..., :3])
    assert "conv_general_dilated" in _primitives(lambda x, w: ops.conv2d(x, w, impl="lax"), x, jnp.ones((1, 1, 40, 3)))


def test_small_patch_conv_has_no_lax_convolution_forward_or_backward():
    x = jnp.ones((2, 11, 12, 1))
    w = jnp.ones((3, 3, 1, 5))
    grad = jax.grad(lambda x, w: ops.conv2d(x, w, (2, 2), impl="matmul").sum(), argnums=(0, 1))
    assert "conv_general_dilated" not in str(jax.make_jaxpr(grad)(x, w))


def test_conv_rejects_an_unknown_impl():
    with pytest.raises(ValueError, match="conv impl"):
        ops.conv2d(jnp.ones((1, 4, 4, 2)), jnp.ones((1, 1, 2, 3)), impl="onednn")
