import jax
import jax.numpy as jnp
import pytest
from jax import export

from fracjax import ops


def _stablehlo(fn, platforms, *args) -> str:
    return export.export(jax.jit(fn), platforms=platforms)(*args).mlir_module()


def test_auto_depthwise_is_decided_by_the_platform_lowered_for():
    x, k = jnp.ones((2, 8, 8, 4)), jnp.ones((3, 3, 1, 4))
    grad = jax.grad(lambda x, k: ops.depthwise_conv(x, k).sum(), argnums=(0, 1))
    for_gpu = _stablehlo(grad, ["cuda"], x, k)
    for_cpu = _stablehlo(grad, ["cpu"], x, k)
    assert "feature_group_count = 4" in for_gpu and "stablehlo.slice" not in for_gpu
    assert "feature_group_count = 4" not in for_cpu and "stablehlo.slice" in for_cpu
    # Traced once on this (CPU) host, the same function serves both platforms.
    both = _stablehlo(grad, ["cpu", "cuda"], x, k)
    assert "feature_group_count = 4" in both and "stablehlo.slice" in both


def test_auto_pointwise_conv_and_fold_are_decided_by_the_platform_lowered_for():
    x, k = jnp.ones((2, 8, 8, 4)), jnp.ones((1, 1, 4, 16))

    def train(x, k):
        return ops.conv_batch_norm_train(x, k, jnp.ones(16), jnp.zeros(16))[0].sum()

    for fn in (lambda x, k: ops.conv2d(x, k).sum(), train):
        grad = jax.grad(fn, argnums=(0, 1))
        assert "stablehlo.convolution" in _stablehlo(grad, ["cuda"], x, k)
        assert "stablehlo.convolution" not in _stablehlo(grad, ["cpu"], x, k)


def test_explicit_impls_ignore_the_platform():
    x, k = jnp.ones((2, 8, 8, 4)), jnp.ones((3, 3, 1, 4))
    assert "stablehlo.slice" in _stablehlo(lambda x, k: ops.depthwise_conv(x, k, impl="shift"), ["cuda"], x, k)
    assert "feature_group_count = 4" in _stablehlo(lambda x, k: ops.depthwise_conv(x, k, impl="lax"), ["cpu"], x, k)


def test_env_impl_reads_and_checks_the_variable(monkeypatch):
    monkeypatch.delenv("FRACJAX_CONV_IMPL", raising=False)
    assert ops.env_impl("FRACJAX_CONV_IMPL", ops.CONV_IMPLS) == "auto"
    monkeypatch.setenv("FRACJAX_CONV_IMPL", "lax")
    assert ops.env_impl("FRACJAX_CONV_IMPL", ops.CONV_IMPLS) == "lax"
    monkeypatch.setenv("FRACJAX_CONV_IMPL", "onednn")
    with pytest.raises(ValueError, match="FRACJAX_CONV_IMPL"):
        ops.env_impl("FRACJAX_CONV_IMPL", ops.CONV_IMPLS)
