"""2-D convolution (NHWC input, HWIO kernel) in the forms XLA:CPU runs fast.

XLA:CPU computes a 1x1 convolution's kernel gradient as a convolution with
the batch and feature dimensions swapped: both operands are transposed in
memory (full activation copies) and the contraction runs at a fraction of the
matmul peak. Written as a matmul of (N*H*W, C_in) by (C_in, C_out), the
kernel gradient is x^T @ g, which the CPU matmul library takes without
copies (:func:`pointwise_matmul_conv`).

A k x k convolution whose patch (k*k*C_in values) is at most SMALL_PATCH, e.g.
a stem on grey or RGB pixels, runs without a gradient as k*k*C_in broadcast
multiply-adds of strided windows, which XLA fuses with the following
BatchNorm and activation into one loop; under differentiation as explicit
patches times a matrix, because lax's kernel gradient transposes the whole
input (N last) and runs at a few GFLOP/s while patches^T @ g is one matmul
(:func:`small_patch_conv`). Other convolutions, and GPU and TPU (where merging
N, H, W can force a relayout), keep lax's convolution. Measured figures:
``benchmarks/NOTES.md``.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from fracjax.ops.platform import by_platform, check_impl
from fracjax.ops.windows import Padding, PadPairs, patch_windows, resolve_padding

Array = jax.Array
CONV_IMPLS = ("auto", "matmul", "lax")
SMALL_PATCH = 32


def is_pointwise(kernel_shape, strides, pads: PadPairs) -> bool:
    """1x1, stride 1, no padding: a matmul over the channel axis."""
    return (tuple(kernel_shape[:2]) == (1, 1) and all(int(s) == 1 for s in strides)
            and all(tuple(p) == (0, 0) for p in pads))


def is_small_patch(kernel_shape) -> bool:
    """A kernel whose patch (kh*kw*C_in values) is at most SMALL_PATCH."""
    kh, kw, c_in = kernel_shape[:3]
    return kh * kw * c_in <= SMALL_PATCH


def pointwise_matmul_conv(x: Array, kernel: Array, precision=None) -> Array:
    """A 1x1 stride-1 NHWC convolution as a (N*H*W, C_in) by (C_in, C_out) matmul."""
    c_in, c_out = kernel.shape[-2:]
    y = lax.dot(x.reshape(-1, c_in), kernel.reshape(c_in, c_out), precision=precision)
    return y.reshape(*x.shape[:-1], c_out)


def patch_matmul_conv(x: Array, kernel: Array, strides, padding: Padding, precision=None) -> Array:
    """Correlation as (N*Ho*Wo, kh*kw*C_in) patches times (kh*kw*C_in, C_out)."""
    kh, kw, c_in, c_out = kernel.shape
    windows, (ho, wo) = patch_windows(x, (kh, kw), strides, padding)
    patches = jnp.concatenate(windows, axis=-1).reshape(-1, kh * kw * c_in)
    y = lax.dot(patches, kernel.reshape(kh * kw * c_in, c_out), precision=precision)
    return y.reshape(x.shape[0], ho, wo, c_out)


def patch_sum_conv(x: Array, kernel: Array, strides, padding: Padding) -> Array:
    """The same correlation as k*k*C_in broadcast multiply-adds, one per
    window channel and output row of the kernel (for small patches only)."""
    kh, kw, c_in, c_out = kernel.shape
    windows, _ = patch_windows(x, (kh, kw), strides, padding)
    dtype = jnp.result_type(x, kernel)
    taps = kernel.reshape(kh * kw, c_in, c_out).astype(dtype)
    acc = None
    for t, window in enumerate(windows):
        for ci in range(c_in):
            term = window[..., ci:ci + 1].astype(dtype) * taps[t, ci]
            acc = term if acc is None else acc + term
    return acc


def _matmul_conv(x, kernel, strides, padding, precision):
    if is_pointwise(kernel.shape, strides, padding):
        return pointwise_matmul_conv(x, kernel, precision)
    return patch_matmul_conv(x, kernel, strides, padding, precision)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def small_patch_conv(x: Array, kernel: Array, strides, padding: PadPairs, precision=None) -> Array:
    """:func:`patch_sum_conv` forward; under differentiation a matmul."""
    return patch_sum_conv(x, kernel, strides, padding)


def _small_patch_fwd(x, kernel, strides, padding, precision):
    return jax.vjp(lambda x, k: _matmul_conv(x, k, strides, padding, precision), x, kernel)


def _small_patch_bwd(strides, padding, precision, vjp, g):
    return vjp(g)


small_patch_conv.defvjp(_small_patch_fwd, _small_patch_bwd)


def conv_lax(x: Array, kernel: Array, strides, pads: PadPairs, precision=None) -> Array:
    """lax's convolution, NHWC input, HWIO kernel."""
    return lax.conv_general_dilated(x, kernel, strides, pads, dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                    precision=precision)


def conv_matmul(x: Array, kernel: Array, strides, pads: PadPairs, precision=None) -> Array:
    """The CPU form: small patches as :func:`small_patch_conv`, 1x1 stride-1
    as :func:`pointwise_matmul_conv`, anything else through lax."""
    if is_small_patch(kernel.shape):
        return small_patch_conv(x, kernel, strides, pads, precision)
    if is_pointwise(kernel.shape, strides, pads):
        return pointwise_matmul_conv(x, kernel, precision)
    return conv_lax(x, kernel, strides, pads, precision)


def conv2d(x: Array, kernel: Array, strides=(1, 1), padding: Padding = "SAME", impl: str = "auto",
           precision=None) -> Array:
    """NHWC correlation with an HWIO kernel, the result of
    ``lax.conv_general_dilated``. ``impl``: "matmul" (:func:`conv_matmul`),
    "lax", or "auto" (matmul where lowered for CPU, lax elsewhere)."""
    check_impl(impl, CONV_IMPLS, "conv impl")
    strides = tuple(int(s) for s in strides)
    pads = resolve_padding(padding, x.shape[1:3], tuple(kernel.shape[:2]), strides)
    if not (is_small_patch(kernel.shape) or is_pointwise(kernel.shape, strides, pads)):
        return conv_lax(x, kernel, strides, pads, precision)
    return by_platform(impl, "matmul", lambda x, k: conv_matmul(x, k, strides, pads, precision),
                       lambda x, k: conv_lax(x, k, strides, pads, precision), x, kernel)
