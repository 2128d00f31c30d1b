"""Depthwise 2-D convolution (depth multiplier 1), NHWC input, (kh, kw, 1, C) kernel.

XLA:CPU lowers a grouped convolution (feature_group_count = C) to a slow
generic loop: about 20x slower forward and 50x slower backward than the same
arithmetic written as k*k shifted, broadcast multiply-adds, which XLA fuses
into one vectorised loop. :func:`depthwise_conv_shift` does that, with a
custom VJP whose residual is the padded input (written once, fused into its
producer): at stride 1 the input gradient is the same windowed sum over the
padded output gradient with the flipped kernel, at other strides the
autodiff of the windowed sum; the kernel gradient is k*k channel-wise
reductions over windows of the padded input, one after the other in a scan.
GPU and TPU keep lax's convolution (:func:`depthwise_conv_lax`).
"""

from __future__ import annotations

import functools
from typing import Tuple

import jax
import jax.numpy as jnp
from jax import lax

from fracjax.ops.platform import by_platform, check_impl
from fracjax.ops.windows import Padding, PadPairs, pad_for_taps, resolve_padding, tap_window, window_pad

Array = jax.Array
DEPTHWISE_IMPLS = ("auto", "shift", "lax")


def _taps_forward(xp: Array, kernel: Array, strides: Tuple[int, int], out_hw: Tuple[int, int]) -> Array:
    """Depthwise correlation of :func:`pad_for_taps`'s array: k*k windows
    times per-channel weights, summed (XLA fuses them into one loop)."""
    kh, kw = kernel.shape[:2]
    w = kernel.reshape(kh, kw, -1)
    acc = None
    for i in range(kh):
        for j in range(kw):
            term = tap_window(xp, i, j, strides, out_hw) * w[i, j]
            acc = term if acc is None else acc + term
    return acc


def _shift_forward(x: Array, kernel: Array, strides: Tuple[int, int], padding: PadPairs) -> Array:
    out_hw, _ = window_pad(x.shape[1:3], kernel.shape[:2], strides, padding)
    return _taps_forward(pad_for_taps(x, kernel.shape[:2], strides, padding), kernel, strides, out_hw)


def _shift_kernel_grad(xp: Array, g: Array, kernel_hw: Tuple[int, int], strides: Tuple[int, int]) -> Array:
    """dL/dkernel[i, j, c] = sum_{n,h,w} xpad[n, s*h + i, s*w + j, c] * g[n, h, w, c].
    The k*k reductions run one after the other in a scan: unrolled, XLA's
    concurrent CPU scheduler starts all window copies at once and is 3-4x slower."""
    kh, kw = kernel_hw
    acc_dtype = jnp.promote_types(g.dtype, jnp.float32)

    def tap(_, t):
        window = tap_window(xp, t // kw, t % kw, strides, g.shape[1:3])
        return None, jnp.sum(window * g, axis=(0, 1, 2), dtype=acc_dtype)

    _, per_tap = lax.scan(tap, None, jnp.arange(kh * kw))
    return per_tap.reshape(kh, kw, 1, g.shape[-1])


def _shift_input_grad(xp: Array, kernel: Array, g: Array, strides: Tuple[int, int], padding: PadPairs,
                      in_hw: Tuple[int, int]) -> Array:
    """dL/dx for an (h, w) = ``in_hw`` input, from the padded input's shape."""
    kh, kw = kernel.shape[:2]
    flipped_pads = ((kh - 1 - padding[0][0], kh - 1 - padding[0][1]),
                    (kw - 1 - padding[1][0], kw - 1 - padding[1][1]))
    if strides == (1, 1) and all(0 <= p <= k - 1 for pair, k in zip(padding, (kh, kw), strict=True) for p in pair):
        # At stride 1 the input gradient is the correlation of g with the
        # flipped kernel: the same padded-window form as the forward (the pad
        # fuses into g's producer), where autodiff's transposed slices become
        # k*k bounds-checked pads in one loop, ~2x slower for 5x5 kernels.
        return _shift_forward(g, kernel[::-1, ::-1], (1, 1), flipped_pads)
    _, vjp = jax.vjp(lambda inp: _taps_forward(inp, kernel, strides, g.shape[1:3]), xp)
    (dxp,) = vjp(g)
    top, left = padding[0][0], padding[1][0]
    h, w = in_hw
    # Rows and columns the padding cropped get no gradient: pad them back.
    dx = dxp[:, top:top + h, left:left + w]
    return jnp.pad(dx, ((0, 0), (0, h - dx.shape[1]), (0, w - dx.shape[2]), (0, 0)))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def depthwise_conv_shift(x: Array, kernel: Array, strides: Tuple[int, int], padding: PadPairs) -> Array:
    """Depthwise correlation as k*k strided windows times per-channel weights;
    the same result as :func:`depthwise_conv_lax`."""
    return _shift_forward(x, kernel, strides, padding)


def _depthwise_shift_fwd(x, kernel, strides, padding):
    out_hw, _ = window_pad(x.shape[1:3], kernel.shape[:2], strides, padding)
    xp = pad_for_taps(x, kernel.shape[:2], strides, padding)
    # The padded input is the residual: the forward's producer already wrote
    # it padded, and the kernel gradient reads its windows without re-padding.
    # (A zero-size array carries the input's static height and width.)
    return _taps_forward(xp, kernel, strides, out_hw), (xp, kernel, jnp.zeros((*x.shape[1:3], 0), x.dtype))


def _depthwise_shift_bwd(strides, padding, residuals, g):
    xp, kernel, in_hw_marker = residuals
    dx = _shift_input_grad(xp, kernel, g, strides, padding, in_hw_marker.shape[:2])
    dk = _shift_kernel_grad(xp, g, kernel.shape[:2], strides)
    return dx.astype(xp.dtype), dk.astype(kernel.dtype)


depthwise_conv_shift.defvjp(_depthwise_shift_fwd, _depthwise_shift_bwd)


def depthwise_conv_lax(x: Array, kernel: Array, strides: Tuple[int, int], padding: PadPairs) -> Array:
    """Depthwise correlation through XLA's grouped convolution."""
    return lax.conv_general_dilated(x, kernel, window_strides=strides, padding=padding,
                                    dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=x.shape[-1])


def depthwise_conv(x: Array, kernel: Array, strides: Tuple[int, int] = (1, 1), padding: Padding = "SAME",
                   impl: str = "auto") -> Array:
    """Depthwise 2-D correlation of NHWC ``x`` with a (kh, kw, 1, C) kernel.

    ``impl``: "shift" (:func:`depthwise_conv_shift`), "lax" or "auto" (shift
    where lowered for CPU, lax elsewhere: :func:`fracjax.ops.platform.by_platform`).
    """
    check_impl(impl, DEPTHWISE_IMPLS, "depthwise impl")
    if x.ndim != 4:
        raise ValueError(f"depthwise_conv wants NHWC input, got shape {x.shape}")
    kh, kw, one, c = kernel.shape
    if one != 1 or c != x.shape[-1]:
        raise ValueError(
            f"depthwise kernel must be (kh, kw, 1, {x.shape[-1]}) for input {x.shape}, got {kernel.shape}"
        )
    strides = tuple(int(s) for s in strides)
    pads = resolve_padding(padding, x.shape[1:3], (kh, kw), strides)
    return by_platform(impl, "shift", lambda x, k: depthwise_conv_shift(x, k, strides, pads),
                       lambda x, k: depthwise_conv_lax(x, k, strides, pads), x, kernel)
