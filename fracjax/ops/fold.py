"""A convolution and the train-mode BatchNorm after it, in one.

With z = x W (x: (P, C_in), W: (C_in, C_out)), the batch statistics of z
follow from those of x: mean_z = mean_x W and var_z = diag(W^T Cov_x W),
where Cov_x comes from x^T x, a (C_in, C_in) matmul that is cheap when
C_in << C_out (MobileNetV3's expand convolutions widen 3-6x). So z is never
written or read: the forward is one matmul with the normalisation folded
into the kernel and bias. In the backward, with g the gradient of the
output, BatchNorm's input gradient is g_z = a*g + c*z + b with per-channel
a, b, c; so the kernel gradient is x^T g plus (C_in, C_out) corrections
from x^T x, and the input gradient is g (a W)^T + x (W c W^T) + b W^T --
two matmuls over g, where conv + BatchNorm make ~6 passes over z and g.
Narrowing convolutions get slower (x^T x costs P*C_in^2), so only
C_out >= FOLD_WIDENING * C_in folds; a small-patch convolution (a stem)
folds the same way on its patches. Measured figures: ``benchmarks/NOTES.md``.
"""

from __future__ import annotations

import functools
from typing import Optional

import jax
import jax.numpy as jnp
from jax import lax

from fracjax.ops.batch_norm import batch_norm_train
from fracjax.ops.conv import CONV_IMPLS, conv_lax, conv_matmul, is_pointwise, is_small_patch
from fracjax.ops.platform import by_platform, check_impl
from fracjax.ops.windows import Padding, PadPairs, patch_windows, resolve_padding

Array = jax.Array
FOLD_WIDENING = 2

# Above this many rows, x^T x and x^T g are summed per image: XLA:CPU may
# emit a transposed-operand dot as one running float32 sum over all rows (in
# a trial on the stem's 401,408 patch rows: variance off by 8e-5 and
# gradients by 1e-3; per image, 5e-7).
CHUNKED_ROWS = 65536


def _row_products(a: Array, b: Array, batch: int) -> Array:
    """a^T b for (P, ·) row matrices; per-image partial products when P is large."""
    if a.shape[0] <= CHUNKED_ROWS or batch < 2:
        return lax.dot(a.T, b)
    a3, b3 = a.reshape(batch, -1, a.shape[-1]), b.reshape(batch, -1, b.shape[-1])
    return jnp.sum(lax.dot_general(a3, b3, (((1,), (1,)), ((0,), (0,)))), axis=0)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def pointwise_conv_batch_norm_train(x: Array, kernel: Array, scale: Array, bias: Array, epsilon: float,
                                    axis_name=None):
    """``batch_norm_train(pointwise_matmul_conv(x, kernel), scale, bias,
    epsilon, axis_name)`` without materialising the convolution's output
    (float32). Returns ``(y, mean, var)``: the statistics are those of the
    convolution's output, for the running averages, and carry no gradient."""
    out, _ = _pointwise_bn_fwd(x, kernel, scale, bias, epsilon, axis_name)
    return out


def _pointwise_bn_fwd(x, kernel, scale, bias, epsilon, axis_name):
    c_in, c_out = kernel.shape[-2:]
    w = kernel.reshape(c_in, c_out)
    x2 = x.reshape(-1, c_in)
    count = x2.shape[0]
    sum_x = jnp.sum(x2, axis=0)
    gram = _row_products(x2, x2, x.shape[0])  # x^T x, (C_in, C_in)
    moments = jnp.concatenate([sum_x, gram.reshape(-1)]) / count
    if axis_name is not None:
        moments = lax.pmean(moments, axis_name)
    mean_x, second = moments[:c_in], moments[c_in:].reshape(c_in, c_in)
    cov = second - jnp.outer(mean_x, mean_x)
    mean = mean_x @ w
    var = jnp.maximum(0.0, jnp.sum(w * (cov @ w), axis=0))
    inv = lax.rsqrt(var + epsilon)
    a = scale * inv
    y = lax.dot(x2, w * a) + (bias - mean * a)
    residuals = (x2, w, a, mean, inv, sum_x, gram, x.shape)
    return (y.reshape(*x.shape[:-1], c_out), mean, var), residuals


def _pointwise_bn_bwd(epsilon, axis_name, residuals, cotangents):
    x2, w, a, mean, inv, sum_x, gram, x_shape = residuals
    g = cotangents[0].reshape(-1, w.shape[1])  # the statistics' cotangents only feed running averages
    count = g.shape[0]
    xtg = _row_products(x2, g, x_shape[0])  # x^T g, (C_in, C_out)
    sum_g = jnp.sum(g, axis=0)
    sum_g_z = jnp.sum(w * xtg, axis=0)  # sum over rows of g * z, as z = x w
    sum_g_zhat = (sum_g_z - mean * sum_g) * inv
    means = jnp.stack([sum_g, sum_g_zhat]) / count
    if axis_name is not None:
        means = lax.pmean(means, axis_name)  # as in batch_norm_train: global batch terms
    # BatchNorm's input gradient a*(g - mean(g) - zhat*mean(g*zhat)) as a*g + c*z + b.
    c = -a * inv * means[1]
    b = -a * means[0] - c * mean
    dw = xtg * a + jnp.outer(sum_x, b) + gram @ (w * c)
    dx = lax.dot(g, (w * a).T) + lax.dot(x2, (w * c) @ w.T) + b @ w.T
    return dx.reshape(x_shape), dw.reshape(1, 1, *w.shape), sum_g_zhat, sum_g


pointwise_conv_batch_norm_train.defvjp(_pointwise_bn_fwd, _pointwise_bn_bwd)


def fold_kind(x: Array, kernel: Array, strides, pads: PadPairs) -> Optional[str]:
    """"pointwise", "patch" or None: whether and how a float32 convolution of
    ``x`` by ``kernel`` folds into the BatchNorm after it."""
    if x.ndim != 4 or x.dtype != jnp.float32 or kernel.dtype != jnp.float32 or kernel.shape[2] != x.shape[-1]:
        return None
    kh, kw, c_in, c_out = kernel.shape
    if is_pointwise(kernel.shape, strides, pads) and c_out >= FOLD_WIDENING * c_in:
        return "pointwise"
    if (kh, kw) != (1, 1) and is_small_patch(kernel.shape) and c_out >= kh * kw * c_in:
        return "patch"
    return None


def _folded(x, kernel, scale, bias, strides, pads, epsilon, axis_name, kind):
    if kind == "patch":
        kh, kw, c_in, c_out = kernel.shape
        windows, _ = patch_windows(x, (kh, kw), strides, pads)
        x = jnp.concatenate(windows, axis=-1)
        kernel = kernel.reshape(1, 1, kh * kw * c_in, c_out)
    return pointwise_conv_batch_norm_train(x, kernel, scale, bias, epsilon, axis_name)


def conv_batch_norm_train(x: Array, kernel: Array, scale: Array, bias: Array, strides=(1, 1),
                          padding: Padding = "SAME", epsilon: float = 1e-3, axis_name=None,
                          impl: str = "auto", fold: bool = True):
    """``batch_norm_train(conv2d(x, kernel, strides, padding), ...)`` ->
    ``(y, mean, var)``. With ``impl`` "matmul" (or "auto" lowered for CPU)
    a widening 1x1 stride-1 convolution (C_out >= FOLD_WIDENING * C_in) or a
    small-patch one (kh*kw*C_in <= SMALL_PATCH, C_out >= that) runs folded,
    as :func:`pointwise_conv_batch_norm_train`; otherwise the convolution's
    output is materialised and normalised (always, when ``fold`` is off)."""
    check_impl(impl, CONV_IMPLS, "conv impl")
    strides = tuple(int(s) for s in strides)
    pads = resolve_padding(padding, x.shape[1:3], tuple(kernel.shape[:2]), strides)
    kind = fold_kind(x, kernel, strides, pads) if fold else None

    def cpu(x, kernel, scale, bias):
        if kind is not None:
            return _folded(x, kernel, scale, bias, strides, pads, epsilon, axis_name, kind)
        return batch_norm_train(conv_matmul(x, kernel, strides, pads), scale, bias, epsilon, axis_name)

    def portable(x, kernel, scale, bias):
        return batch_norm_train(conv_lax(x, kernel, strides, pads), scale, bias, epsilon, axis_name)

    return by_platform(impl, "matmul", cpu, portable, x, kernel, scale, bias)
