import chex
import jax
import jax.numpy as jnp
import pytest

from fracjax import ops


@pytest.mark.parametrize(
    "size,kernel,stride,padding",
    [
        (12, 3, 1, "SAME"),
        (13, 3, 1, "SAME"),
        (12, 3, 2, "KERAS"),
        (13, 3, 2, "KERAS"),
        (12, 5, 1, "SAME"),
        (11, 5, 1, "VALID"),
        (14, 5, 2, "KERAS"),
        (15, 5, 2, "KERAS"),
        (9, 3, 2, "SAME"),
        (12, 3, 2, "VALID"),  # the last row and column are read by no window
        (14, 5, 2, "VALID"),
        (10, 3, 1, ((3, 2), (0, 3))),  # padding wider than the kernel: the generic input gradient
    ],
)
def test_shift_depthwise_matches_lax_value_and_gradients(size, kernel, stride, padding):
    kx, kk, kg = jax.random.split(jax.random.key(size * 100 + kernel * 10 + stride), 3)
    channels = 6
    x = jax.random.normal(kx, (2, size, size + 1, channels))  # non-square on purpose
    w = jax.random.normal(kk, (kernel, kernel, 1, channels))

    def run(impl):
        def f(x, w):
            return ops.depthwise_conv(x, w, (stride, stride), padding, impl=impl)

        y = f(x, w)
        cot = jax.random.normal(kg, y.shape)
        _, vjp = jax.vjp(f, x, w)
        return y, vjp(cot)

    y_shift, (dx_shift, dw_shift) = jax.jit(lambda: run("shift"))()
    y_lax, (dx_lax, dw_lax) = jax.jit(lambda: run("lax"))()
    chex.assert_equal_shape([y_shift, y_lax])
    chex.assert_trees_all_close(y_shift, y_lax, rtol=1e-5, atol=1e-5)
    chex.assert_trees_all_close(dx_shift, dx_lax, rtol=1e-5, atol=1e-5)
    chex.assert_trees_all_close(dw_shift, dw_lax, rtol=1e-5, atol=1e-4)


def test_shift_depthwise_second_call_does_not_recompile():
    x = jnp.ones((1, 8, 8, 4))
    w = jnp.ones((3, 3, 1, 4))
    f = jax.jit(jax.grad(lambda x, w: ops.depthwise_conv(x, w, impl="shift").sum(), argnums=1))
    f(x, w)
    f(x + 1, w)
    assert f._cache_size() == 1


def test_depthwise_rejects_wrong_kernel_shape():
    with pytest.raises(ValueError, match="kernel must be"):
        ops.depthwise_conv(jnp.ones((1, 8, 8, 4)), jnp.ones((3, 3, 4, 1)))


def test_keras_correct_pad_even_and_odd():
    assert ops.keras_correct_pad((224, 224), (3, 3)) == ((0, 1), (0, 1))
    assert ops.keras_correct_pad((224, 224), (5, 5)) == ((1, 2), (1, 2))
    assert ops.keras_correct_pad((225, 28), (3, 5)) == ((1, 1), (1, 2))
    # At even sizes it equals "SAME".
    assert ops.resolve_padding("KERAS", (56, 56), (5, 5), (2, 2)) == ops.same_pad((56, 56), (5, 5), (2, 2))
    assert ops.resolve_padding("KERAS", (57, 57), (3, 3), (1, 1)) == ((1, 1), (1, 1))
    with pytest.raises(ValueError, match="padding"):
        ops.resolve_padding("FULL", (8, 8), (3, 3), (1, 1))




def test_depthwise_rejects_an_unknown_impl():
    with pytest.raises(ValueError, match="depthwise impl"):
        ops.depthwise_conv(jnp.ones((1, 8, 8, 4)), jnp.ones((3, 3, 1, 4)), impl="fast")
