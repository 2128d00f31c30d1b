"""BatchNorm as functions: the train mode with a closed-form gradient, the
running-average mode, and a convolution folded into the train mode.

Autodiff of flax's BatchNorm goes through the mean and the variance as
separate steps and leaves XLA:CPU several passes over the activations; the
closed form (:func:`batch_norm_train`) needs one reduction pass (sum g,
sum g*xhat) and one elementwise pass. Measured figures: ``benchmarks/NOTES.md``.
"""

from __future__ import annotations

import functools
from typing import Tuple

import jax
import jax.numpy as jnp
from jax import lax

Array = jax.Array


def _batch_stats(x32: Array, axis_name) -> Tuple[Array, Array]:
    """Mean and (biased, E[x^2] - E[x]^2, clipped at 0) variance over every
    axis but the last, averaged over ``axis_name`` when given (as flax does)."""
    axes = tuple(range(x32.ndim - 1))
    moments = jnp.stack([jnp.mean(x32, axes), jnp.mean(jnp.square(x32), axes)])
    if axis_name is not None:
        moments = lax.pmean(moments, axis_name)
    mean, mean_sq = moments[0], moments[1]
    return mean, jnp.maximum(0.0, mean_sq - jnp.square(mean))


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def batch_norm_train(x: Array, scale: Array, bias: Array, epsilon: float, axis_name=None):
    """Normalise ``x`` with its own batch statistics (channels last):
    returns ``(y, mean, var)``; ``mean``/``var`` (float32) carry no gradient
    and feed the running averages. ``axis_name``: average the statistics (and
    the gradient's batch terms) over that mapped axis, as a per-device (shard_map) step needs."""
    y, mean, var, _ = _batch_norm_train_fwd_impl(x, scale, bias, epsilon, axis_name)
    return y, mean, var


def _batch_norm_train_fwd_impl(x, scale, bias, epsilon, axis_name):
    x32 = x.astype(jnp.promote_types(x.dtype, jnp.float32))
    mean, var = _batch_stats(x32, axis_name)
    inv = lax.rsqrt(var + epsilon)
    y = ((x32 - mean) * (scale.astype(x32.dtype) * inv) + bias.astype(x32.dtype)).astype(x.dtype)
    return y, mean, var, (x, mean, inv, scale)


def _batch_norm_train_fwd(x, scale, bias, epsilon, axis_name):
    y, mean, var, residuals = _batch_norm_train_fwd_impl(x, scale, bias, epsilon, axis_name)
    return (y, mean, var), residuals


def _batch_norm_train_bwd(epsilon, axis_name, residuals, cotangents):
    x, mean, inv, scale = residuals
    g = cotangents[0]  # the statistics' cotangents are dropped: they only feed running averages
    x32 = x.astype(mean.dtype)
    g32 = g.astype(mean.dtype)
    axes = tuple(range(x.ndim - 1))
    xhat = (x32 - mean) * inv
    sum_g = jnp.sum(g32, axes)
    sum_g_xhat = jnp.sum(g32 * xhat, axes)
    count = x.size // x.shape[-1]
    means = jnp.stack([sum_g, sum_g_xhat]) / count
    if axis_name is not None:
        # The loss of every device depends on this device's x through the
        # shared statistics: the batch terms are global means.
        means = lax.pmean(means, axis_name)
    dx = (scale.astype(mean.dtype) * inv) * (g32 - means[0] - xhat * means[1])
    return dx.astype(x.dtype), sum_g_xhat.astype(scale.dtype), sum_g.astype(scale.dtype)


batch_norm_train.defvjp(_batch_norm_train_fwd, _batch_norm_train_bwd)


def batch_norm_eval(x: Array, mean: Array, var: Array, scale: Array, bias: Array, epsilon: float,
                    dtype=None) -> Array:
    """Normalise with running statistics, in the order of operations of
    ``flax.linen.BatchNorm(use_running_average=True)`` (so the same floats)."""
    y = x - mean
    mul = lax.rsqrt(var + epsilon)
    mul = mul * scale
    y = y * mul
    y = y + bias
    return jnp.asarray(y, dtype or jnp.result_type(x, scale, bias))


def running_average(old: Array, batch: Array, momentum: float) -> Array:
    """``momentum * old + (1 - momentum) * batch``, flax's update."""
    return momentum * old + (1.0 - momentum) * batch
