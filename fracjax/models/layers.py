"""Layers shared by every architecture: activations, Keras-compatible padding,
a depthwise convolution that is fast on CPU, squeeze-and-excitation.

Modules here take their building blocks (``conv``, ``norm``, ``act``) as
``ModuleDef`` arguments, in the style of flax's ``examples/imagenet``, so an
architecture decides precision, BatchNorm constants and train/eval mode in one
place.
"""

from __future__ import annotations

import functools
import os
from typing import Any, Callable, Sequence, Tuple, Union

import jax
import jax.numpy as jnp
from flax import linen as nn
from jax import lax

ModuleDef = Any
Array = jax.Array
PadPairs = Tuple[Tuple[int, int], Tuple[int, int]]

# --------------------------------------------------------------------------
# Activations (Keras MobileNetV3 definitions).
# --------------------------------------------------------------------------


def hard_sigmoid(x: Array) -> Array:
    """``relu6(x + 3) / 6``, the gate Keras MobileNetV3 uses."""
    return jax.nn.relu6(x + 3.0) * (1.0 / 6.0)


def hard_swish(x: Array) -> Array:
    """``x * hard_sigmoid(x)``."""
    return x * hard_sigmoid(x)


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round a channel count to a multiple of ``divisor`` (Keras ``_depth``).

    Never goes below ``min_value`` (default ``divisor``) and never rounds down
    by more than 10%.
    """
    if min_value is None:
        min_value = divisor
    rounded = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


# --------------------------------------------------------------------------
# Padding.
# --------------------------------------------------------------------------


def keras_correct_pad(size: Tuple[int, int], kernel: Tuple[int, int]) -> PadPairs:
    """The explicit padding Keras ``imagenet_utils.correct_pad`` puts before a
    stride-2 "valid" layer: ``(k//2 - 1, k//2)`` on an even side (the same as
    "SAME"), ``(k//2, k//2)`` on an odd side (one more than "SAME" on top).
    """
    pads = []
    for n, k in zip(size, kernel):
        adjust = 1 if n % 2 == 0 else 0
        pads.append((k // 2 - adjust, k // 2))
    return tuple(pads)  # type: ignore[return-value]


def same_pad(size: Tuple[int, int], kernel: Tuple[int, int], strides: Tuple[int, int]) -> PadPairs:
    """TensorFlow/XLA "SAME" padding (the smaller half before)."""
    return tuple(lax.padtype_to_pads(size, kernel, strides, "SAME"))  # type: ignore[return-value]


def resolve_padding(
    padding: Union[str, Sequence[Tuple[int, int]]],
    size: Tuple[int, int],
    kernel: Tuple[int, int],
    strides: Tuple[int, int],
) -> PadPairs:
    """``"SAME"``, ``"VALID"``, ``"KERAS"`` (correct_pad at stride 2, else same)
    or explicit pairs -> explicit ``((top, bottom), (left, right))``."""
    if isinstance(padding, str):
        mode = padding.upper()
        if mode == "SAME":
            return same_pad(size, kernel, strides)
        if mode == "VALID":
            return ((0, 0), (0, 0))
        if mode == "KERAS":
            if tuple(strides) == (1, 1):
                return same_pad(size, kernel, strides)
            return keras_correct_pad(size, kernel)
        raise ValueError(f"padding must be 'SAME', 'VALID', 'KERAS' or pairs, got {padding!r}")
    pairs = tuple((int(a), int(b)) for a, b in padding)
    if len(pairs) != 2:
        raise ValueError(f"padding needs two (before, after) pairs, got {padding!r}")
    return pairs  # type: ignore[return-value]


# --------------------------------------------------------------------------
# Depthwise convolution.
#
# XLA:CPU lowers a grouped convolution (feature_group_count = C) to a slow
# generic loop: about 20x slower forward and 50x slower backward than the same
# arithmetic written as k*k shifted, broadcast multiply-adds, which XLA fuses
# into one vectorised loop. The "shift" implementation below does that, with a
# custom VJP whose residual is the padded input (written once, fused into its
# producer): at stride 1 the input gradient is the same windowed sum over the
# padded output gradient with the flipped kernel, at other strides the
# autodiff of the windowed sum; the kernel gradient is k*k channel-wise
# reductions over windows of the padded input, one after the other in a scan.
# GPU and TPU keep lax's convolution.
# --------------------------------------------------------------------------

DEPTHWISE_IMPLS = ("auto", "shift", "lax")
_default_impl = os.environ.get("FRACJAX_DEPTHWISE_IMPL", "auto")


def _check_impl(impl: str, choices: Tuple[str, ...], kind: str, source: str = "") -> None:
    if impl not in choices:
        raise ValueError(f"{source or kind + ' impl'} must be one of {choices}, got {impl!r}")


def _resolve_impl(impl: str, choices: Tuple[str, ...], default: str, cpu_impl: str, kind: str, env: str) -> str:
    """``"auto"`` -> the process default (set_default_*, or ``env``) -> on
    "auto" again, ``cpu_impl`` on CPU and "lax" elsewhere."""
    _check_impl(impl, choices, kind)
    if impl == "auto":
        impl = default
        _check_impl(impl, choices, kind, source=env)
    if impl == "auto":
        impl = cpu_impl if jax.default_backend() == "cpu" else "lax"
    return impl


def set_default_depthwise_impl(impl: str) -> None:
    """Choose the implementation every ``DepthwiseConv2D(impl="auto")`` uses:
    ``"auto"`` (shift on CPU, lax elsewhere), ``"shift"`` or ``"lax"``.
    The environment variable ``FRACJAX_DEPTHWISE_IMPL`` sets the initial value.
    Takes effect for functions traced afterwards."""
    global _default_impl
    _check_impl(impl, DEPTHWISE_IMPLS, "depthwise")
    _default_impl = impl


def resolve_depthwise_impl(impl: str = "auto") -> str:
    """Turn ``"auto"`` into the implementation to use on the default backend."""
    return _resolve_impl(impl, DEPTHWISE_IMPLS, _default_impl, "shift", "depthwise", "FRACJAX_DEPTHWISE_IMPL")


def _output_size(padded: int, k: int, s: int) -> int:
    return (padded - k) // s + 1


def _window_pad(size: Tuple[int, int], kernel_hw: Tuple[int, int], strides: Tuple[int, int],
                padding: PadPairs) -> Tuple[Tuple[int, int], Tuple[int, int]]:
    """(output size, padding) where the end padding is set so that the padded
    input has exactly the s * (out - 1) + k rows and columns the windows read
    (negative: trailing rows no window reads are cropped)."""
    out, pads = [], []
    for n, k, s, (before, after) in zip(size, kernel_hw, strides, padding):
        o = _output_size(n + before + after, k, s)
        out.append(o)
        pads.append((before, s * (o - 1) + k - n - before))
    return tuple(out), tuple(pads)  # type: ignore[return-value]


def _pad_for_taps(x: Array, kernel_hw, strides, padding) -> Array:
    """The input padded by :func:`_window_pad`. Both the forward and the kernel
    gradient read their windows from it, so XLA writes it once, fused into
    the producer of ``x``."""
    _, pads = _window_pad(x.shape[1:3], kernel_hw, strides, padding)
    zero = jnp.zeros((), x.dtype)
    return lax.pad(x, zero, ((0, 0, 0), (*pads[0], 0), (*pads[1], 0), (0, 0, 0)))


def _tap_window(xp: Array, i, j, strides: Tuple[int, int], out_hw: Tuple[int, int]) -> Array:
    """Tap (i, j)'s (n, ho, wo, c) strided window of :func:`_pad_for_taps`'s
    array; ``i, j`` static or traced."""
    sh, sw = strides
    ho, wo = out_hw
    n, c = xp.shape[0], xp.shape[-1]
    span = (n, sh * (ho - 1) + 1, sw * (wo - 1) + 1, c)
    if isinstance(i, int) and isinstance(j, int):
        return lax.slice(xp, (0, i, j, 0), (n, i + span[1], j + span[2], c), (1, sh, sw, 1))
    window = lax.dynamic_slice(xp, (0, i, j, 0), span)
    return window if (sh, sw) == (1, 1) else window[:, ::sh, ::sw]


def _taps_forward(xp: Array, kernel: Array, strides: Tuple[int, int], out_hw: Tuple[int, int]) -> Array:
    """Depthwise correlation of :func:`_pad_for_taps`'s array: k*k windows
    times per-channel weights, summed (XLA fuses them into one loop)."""
    kh, kw = kernel.shape[:2]
    w = kernel.reshape(kh, kw, -1)
    acc = None
    for i in range(kh):
        for j in range(kw):
            term = _tap_window(xp, i, j, strides, out_hw) * w[i, j]
            acc = term if acc is None else acc + term
    return acc


def _shift_forward(x: Array, kernel: Array, strides: Tuple[int, int], padding: PadPairs) -> Array:
    """Depthwise correlation as k*k strided windows times per-channel weights."""
    out_hw, _ = _window_pad(x.shape[1:3], kernel.shape[:2], strides, padding)
    return _taps_forward(_pad_for_taps(x, kernel.shape[:2], strides, padding), kernel, strides, out_hw)


def _shift_kernel_grad(xp: Array, g: Array, kernel_hw: Tuple[int, int], strides: Tuple[int, int]) -> Array:
    """dL/dkernel[i, j, c] = sum_{n,h,w} xpad[n, s*h + i, s*w + j, c] * g[n, h, w, c],
    ``xp`` from :func:`_pad_for_taps`. The k*k reductions run one after the
    other in a scan: unrolled, XLA's concurrent CPU scheduler starts all window
    copies at once and is 3-4x slower."""
    kh, kw = kernel_hw
    acc_dtype = jnp.promote_types(g.dtype, jnp.float32)

    def tap(_, t):
        window = _tap_window(xp, t // kw, t % kw, strides, g.shape[1:3])
        return None, jnp.sum(window * g, axis=(0, 1, 2), dtype=acc_dtype)

    _, per_tap = lax.scan(tap, None, jnp.arange(kh * kw))
    return per_tap.reshape(kh, kw, 1, g.shape[-1])


def _shift_input_grad(xp: Array, kernel: Array, g: Array, strides: Tuple[int, int], padding: PadPairs,
                      in_hw: Tuple[int, int]) -> Array:
    """dL/dx for an (h, w) = ``in_hw`` input, from the padded input's shape."""
    kh, kw = kernel.shape[:2]
    flipped_pads = ((kh - 1 - padding[0][0], kh - 1 - padding[0][1]),
                    (kw - 1 - padding[1][0], kw - 1 - padding[1][1]))
    if strides == (1, 1) and all(0 <= p <= k - 1 for pair, k in zip(padding, (kh, kw)) for p in pair):
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
    """Depthwise 2-D correlation, NHWC input, kernel (kh, kw, 1, C), explicit
    padding; same result as ``lax.conv_general_dilated(feature_group_count=C)``."""
    return _shift_forward(x, kernel, strides, padding)


def _depthwise_shift_fwd(x, kernel, strides, padding):
    out_hw, _ = _window_pad(x.shape[1:3], kernel.shape[:2], strides, padding)
    xp = _pad_for_taps(x, kernel.shape[:2], strides, padding)
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
    """Depthwise 2-D correlation through XLA's grouped convolution."""
    return lax.conv_general_dilated(
        x,
        kernel,
        window_strides=strides,
        padding=padding,
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=x.shape[-1],
    )


def depthwise_conv(
    x: Array,
    kernel: Array,
    strides: Tuple[int, int] = (1, 1),
    padding: Union[str, Sequence[Tuple[int, int]]] = "SAME",
    impl: str = "auto",
) -> Array:
    """Depthwise 2-D correlation of NHWC ``x`` with a (kh, kw, 1, C) kernel.

    ``impl``: "auto" (shift on CPU, lax on GPU/TPU, unless
    :func:`set_default_depthwise_impl` says otherwise), "shift" or "lax".
    """
    if x.ndim != 4:
        raise ValueError(f"depthwise_conv wants NHWC input, got shape {x.shape}")
    kh, kw, one, c = kernel.shape
    if one != 1 or c != x.shape[-1]:
        raise ValueError(
            f"depthwise kernel must be (kh, kw, 1, {x.shape[-1]}) for input {x.shape}, got {kernel.shape}"
        )
    strides = tuple(int(s) for s in strides)
    pads = resolve_padding(padding, x.shape[1:3], (kh, kw), strides)
    if resolve_depthwise_impl(impl) == "shift":
        return depthwise_conv_shift(x, kernel, strides, pads)
    return depthwise_conv_lax(x, kernel, strides, pads)


# --------------------------------------------------------------------------
# Convolution.
#
# XLA:CPU computes a 1x1 convolution's kernel gradient as a convolution with
# the batch and feature dimensions swapped: both operands are transposed in
# memory (full activation copies) and the contraction runs at a fraction of the
# matmul peak. Written as a matmul of (N*H*W, C_in) by (C_in, C_out), the
# kernel gradient is x^T @ g, which the CPU matmul library takes without
# copies. Measured on the hybrid MobileNetV3-Small (batch 32, 224, 2 cores):
# gradient 660 -> 488 ms (benchmarks/NOTES.md). Other convolutions, and GPU and
# TPU (where merging N, H, W can force a relayout), keep lax's convolution.
# --------------------------------------------------------------------------

CONV_IMPLS = ("auto", "matmul", "lax")
_default_conv_impl = os.environ.get("FRACJAX_CONV_IMPL", "auto")


def set_default_conv_impl(impl: str) -> None:
    """Choose how :class:`Conv` runs 1x1 stride-1 and small-patch
    convolutions: ``"auto"`` (matmul on CPU, lax elsewhere), ``"matmul"`` or
    ``"lax"``. The environment variable ``FRACJAX_CONV_IMPL`` sets the initial
    value. Takes effect for functions traced afterwards."""
    global _default_conv_impl
    _check_impl(impl, CONV_IMPLS, "conv")
    _default_conv_impl = impl


def resolve_conv_impl(impl: str = "auto") -> str:
    """Turn ``"auto"`` into the implementation to use on the default backend."""
    return _resolve_impl(impl, CONV_IMPLS, _default_conv_impl, "matmul", "conv", "FRACJAX_CONV_IMPL")


def _is_plain_channels_last(lhs, rhs, lhs_dilation, rhs_dilation, dimension_numbers, feature_group_count,
                            batch_group_count) -> bool:
    """Undilated, ungrouped, NHWC input and output, HWIO kernel."""
    def ones(v):
        return v is None or all(int(d) == 1 for d in v)

    if lhs.ndim != 4 or feature_group_count != 1 or batch_group_count != 1:
        return False
    if not (ones(lhs_dilation) and ones(rhs_dilation)):
        return False
    numbers = lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
    return (tuple(numbers.lhs_spec) == (0, 3, 1, 2) and tuple(numbers.out_spec) == (0, 3, 1, 2)
            and tuple(numbers.rhs_spec) == (3, 2, 0, 1))


def _is_pointwise(rhs, window_strides, padding) -> bool:
    """1x1, stride 1, no padding: a matmul over the channel axis."""
    return (rhs.shape[:2] == (1, 1) and all(int(s) == 1 for s in window_strides)
            and (isinstance(padding, str) or all(tuple(p) == (0, 0) for p in padding)))


# A k x k convolution whose patch (k*k*C_in values) is this small, e.g. a stem
# on grey or RGB pixels, is computed in two ways. Without a gradient (inference)
# as k*k*C_in broadcast multiply-adds of strided windows, which XLA fuses with
# the following BatchNorm and activation into one loop (the hybrid model's stem
# at batch 32, 224: patches, concatenate and a K=9 matmul, ~19 ms, became one
# ~6 ms loop that also applies BatchNorm, hard-swish and the next pad). Under
# differentiation as explicit patches times a matrix: lax's kernel gradient
# transposes the whole input (N last) and runs at a few GFLOP/s, while
# patches^T @ g is one matmul (the fused form's kernel gradient, k*k*C_in
# reductions over the output gradient, measured slower).
SMALL_PATCH = 32


def _patch_windows(x: Array, kernel_hw, strides, padding):
    """(windows, output size): the kh*kw strided (n, ho, wo, C_in) windows of
    the padded input, tap-major (the order of ``kernel.reshape(kh*kw, ...)``);
    the depthwise convolution's windowing."""
    strides = tuple(int(s) for s in strides)
    pads = resolve_padding(padding, x.shape[1:3], tuple(kernel_hw), strides)
    out_hw, _ = _window_pad(x.shape[1:3], kernel_hw, strides, pads)
    xp = _pad_for_taps(x, kernel_hw, strides, pads)
    windows = [_tap_window(xp, i, j, strides, out_hw) for i in range(kernel_hw[0]) for j in range(kernel_hw[1])]
    return windows, out_hw


def patch_matmul_conv(x: Array, kernel: Array, strides, padding, precision=None,
                      preferred_element_type=None) -> Array:
    """NHWC correlation with an HWIO kernel as (N*Ho*Wo, kh*kw*C_in) patches
    times (kh*kw*C_in, C_out); the same result as ``lax.conv_general_dilated``."""
    kh, kw, c_in, c_out = kernel.shape
    windows, (ho, wo) = _patch_windows(x, (kh, kw), strides, padding)
    patches = jnp.concatenate(windows, axis=-1).reshape(-1, kh * kw * c_in)
    y = lax.dot(patches, kernel.reshape(kh * kw * c_in, c_out), precision=precision,
                preferred_element_type=preferred_element_type)
    return y.reshape(x.shape[0], ho, wo, c_out)


def pointwise_matmul_conv(x: Array, kernel: Array, precision=None, preferred_element_type=None) -> Array:
    """A 1x1 stride-1 NHWC convolution as a (N*H*W, C_in) by (C_in, C_out) matmul."""
    c_in, c_out = kernel.shape[-2:]
    y = lax.dot(x.reshape(-1, c_in), kernel.reshape(c_in, c_out), precision=precision,
                preferred_element_type=preferred_element_type)
    return y.reshape(*x.shape[:-1], c_out)


def _matmul_conv(x, kernel, strides, padding, precision=None, preferred_element_type=None):
    if _is_pointwise(kernel, strides, padding):
        return pointwise_matmul_conv(x, kernel, precision, preferred_element_type)
    return patch_matmul_conv(x, kernel, strides, padding, precision, preferred_element_type)


def patch_sum_conv(x: Array, kernel: Array, strides, padding, preferred_element_type=None) -> Array:
    """The same correlation as k*k*C_in broadcast multiply-adds, one per
    window channel and output row of the kernel (for small patches only)."""
    kh, kw, c_in, c_out = kernel.shape
    windows, _ = _patch_windows(x, (kh, kw), strides, padding)
    dtype = preferred_element_type or jnp.result_type(x, kernel)
    taps = kernel.reshape(kh * kw, c_in, c_out).astype(dtype)
    acc = None
    for t, window in enumerate(windows):
        for ci in range(c_in):
            term = window[..., ci:ci + 1].astype(dtype) * taps[t, ci]
            acc = term if acc is None else acc + term
    return acc


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def small_patch_conv(x: Array, kernel: Array, strides, padding, precision=None,
                     preferred_element_type=None) -> Array:
    """:func:`patch_sum_conv` forward; under differentiation a matmul
    (:func:`pointwise_matmul_conv` or :func:`patch_matmul_conv`; see SMALL_PATCH)."""
    return patch_sum_conv(x, kernel, strides, padding, preferred_element_type)


def _small_patch_fwd(x, kernel, strides, padding, precision, preferred_element_type):
    y, vjp = jax.vjp(lambda x, k: _matmul_conv(x, k, strides, padding, precision, preferred_element_type),
                     x, kernel)
    return y, vjp


def _small_patch_bwd(strides, padding, precision, preferred_element_type, vjp, g):
    return vjp(g)


small_patch_conv.defvjp(_small_patch_fwd, _small_patch_bwd)


def conv_general_dilated(
    lhs: Array,
    rhs: Array,
    window_strides,
    padding,
    lhs_dilation=None,
    rhs_dilation=None,
    dimension_numbers=None,
    feature_group_count: int = 1,
    batch_group_count: int = 1,
    precision=None,
    preferred_element_type=None,
    impl: str = "auto",
) -> Array:
    """``lax.conv_general_dilated`` where ``impl`` resolves to "matmul" (see
    :func:`resolve_conv_impl`) runs NHWC 1x1 stride-1 convolutions as a 2-D
    matmul and small-patch ones as :func:`small_patch_conv`. Same
    signature, same result."""
    if resolve_conv_impl(impl) == "matmul" and _is_plain_channels_last(
        lhs, rhs, lhs_dilation, rhs_dilation, dimension_numbers, feature_group_count, batch_group_count
    ):
        if rhs.shape[0] * rhs.shape[1] * rhs.shape[2] <= SMALL_PATCH:
            return small_patch_conv(lhs, rhs, tuple(int(v) for v in window_strides),
                                    padding if isinstance(padding, str) else tuple(map(tuple, padding)),
                                    precision, preferred_element_type)
        if _is_pointwise(rhs, window_strides, padding):
            return pointwise_matmul_conv(lhs, rhs, precision, preferred_element_type)
    return lax.conv_general_dilated(
        lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation, rhs_dilation=rhs_dilation,
        dimension_numbers=dimension_numbers, feature_group_count=feature_group_count,
        batch_group_count=batch_group_count, precision=precision, preferred_element_type=preferred_element_type,
    )


class Conv(nn.Conv):
    """``flax.linen.Conv`` (same fields, same parameters) whose 1x1 stride-1
    case runs as a matmul on CPU (:func:`conv_general_dilated`)."""

    conv_general_dilated: Any = conv_general_dilated


class RepeatedChannelConv(Conv):
    """A convolution with an ``in_channels``-channel kernel (an RGB stem) that
    also takes one-channel input as that channel repeated ``in_channels``
    times, without repeating it: the kernel is summed over its input channels
    first (exact, up to float rounding). The parameters are those of
    ``Conv(features, kernel_size)`` on RGB input; gradients reach every input
    channel's weights equally, as they would through the repeated input.

    Only valid where the layer before treats every channel alike (Keras "tf"
    preprocessing); a per-channel mean, as in "caffe", breaks the equality at
    zero-padded borders.
    """

    in_channels: int = 3

    @nn.compact
    def __call__(self, inputs: Array) -> Array:
        c = inputs.shape[-1]
        if c not in (1, self.in_channels):
            raise ValueError(f"{self.name}: expected 1 or {self.in_channels} input channels, got shape {inputs.shape}")
        kernel_size = tuple(self.kernel_size)
        kernel = self.param("kernel", self.kernel_init, (*kernel_size, self.in_channels, self.features),
                            self.param_dtype)
        bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype) if self.use_bias else None
        inputs, kernel, bias = nn.dtypes.promote_dtype(inputs, kernel, bias, dtype=self.dtype)
        if c == 1:
            kernel = jnp.sum(kernel, axis=2, keepdims=True)
        strides = (1,) * len(kernel_size) if self.strides is None else self.strides
        strides = (strides,) * len(kernel_size) if isinstance(strides, int) else tuple(strides)
        pads = resolve_padding(self.padding, inputs.shape[1:3], kernel_size, strides)
        y = self.conv_general_dilated(inputs, kernel, strides, pads, dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                      precision=self.precision)
        return y if bias is None else y + bias


class DepthwiseConv2D(nn.Module):
    """Depthwise convolution (depth multiplier 1).

    The kernel is stored as (kh, kw, 1, C), the layout of a flax grouped
    ``nn.Conv``, so parameters do not depend on ``impl``.
    """

    kernel_size: Tuple[int, int] = (3, 3)
    strides: Tuple[int, int] = (1, 1)
    padding: Union[str, Sequence[Tuple[int, int]]] = "SAME"
    use_bias: bool = False
    impl: str = "auto"
    dtype: Any = None
    param_dtype: Any = jnp.float32
    kernel_init: Callable = nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal")
    bias_init: Callable = nn.initializers.zeros

    @nn.compact
    def __call__(self, x: Array) -> Array:
        channels = x.shape[-1]
        kernel = self.param("kernel", self.kernel_init, (*self.kernel_size, 1, channels), self.param_dtype)
        bias = self.param("bias", self.bias_init, (channels,), self.param_dtype) if self.use_bias else None
        x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
        y = depthwise_conv(x, kernel, self.strides, self.padding, self.impl)
        if bias is not None:
            y = y + bias
        return y


class SqueezeExcite(nn.Module):
    """Channel gate: global average pool -> 1x1 conv (bias) -> ReLU -> 1x1 conv
    (bias) -> gate activation -> rescale the input."""

    squeeze_channels: int
    conv: ModuleDef = Conv
    act: Callable = nn.relu
    gate: Callable = hard_sigmoid

    @nn.compact
    def __call__(self, x: Array) -> Array:
        s = jnp.mean(x, axis=(1, 2), keepdims=True)
        s = self.conv(self.squeeze_channels, (1, 1), use_bias=True, name="squeeze")(s)
        s = self.act(s)
        s = self.conv(x.shape[-1], (1, 1), use_bias=True, name="excite")(s)
        return x * self.gate(s)


# --------------------------------------------------------------------------
# BatchNorm in train mode with a hand-written gradient.
#
# Autodiff of flax's BatchNorm goes through the mean and the variance as
# separate steps and leaves XLA:CPU several passes over the activations; the
# closed form needs one reduction pass (sum g, sum g*xhat) and one elementwise
# pass. Measured fwd+bwd (2 cores): 23.2 -> 7.5 ms at (32, 112, 112, 16),
# 15.6 -> 13.3 at (32, 56, 56, 72), 3.4 -> 2.3 at (32, 14, 14, 240).
# --------------------------------------------------------------------------


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
    the gradient's batch terms) over that mapped axis, as ``pmap`` needs."""
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


# --------------------------------------------------------------------------
# A widening 1x1 convolution and the train-mode BatchNorm after it, in one.
#
# With z = x W (x: (P, C_in), W: (C_in, C_out)), the batch statistics of z
# follow from those of x: mean_z = mean_x W and var_z = diag(W^T Cov_x W),
# where Cov_x comes from x^T x, a (C_in, C_in) matmul that is cheap when
# C_in << C_out (MobileNetV3's expand convolutions widen 3-6x). So z is never
# written or read: the forward is one matmul with the normalisation folded
# into the kernel and bias. In the backward, with g the gradient of the
# output, BatchNorm's input gradient is g_z = a*g + c*z + b with per-channel
# a, b, c; so the kernel gradient is x^T g plus (C_in, C_out) corrections
# from x^T x, and the input gradient is g (a W)^T + x (W c W^T) + b W^T --
# two matmuls over g, where conv + BatchNorm make ~6 passes over z and g.
# Measured fwd+bwd at batch 32 (ms, conv + BatchNorm -> folded): 16->72 at
# 56x56 24.7 -> 12.4, 24->88 at 28x28 6.7 -> 3.3, 40->240 at 14x14 5.4 -> 3.2,
# 96->576 at 7x7 3.8 -> 3.4; narrowing convolutions (72->24, 576->96) get 2-4x
# slower (x^T x costs P*C_in^2), so only C_out >= FOLD_WIDENING * C_in folds.
# A small-patch convolution (the grey stem) folds the same way on its patches
# (:func:`conv_batch_norm`). Against a float64 run of the whole model the
# folded gradients were within 2-4e-6, conv + BatchNorm's within 2-7e-4.
# --------------------------------------------------------------------------

FOLD_WIDENING = 2


# Above this many rows, x^T x and x^T g are summed per image: XLA:CPU may
# emit a transposed-operand dot as one running float32 sum over all rows (in
# a trial on the stem's 401,408 patch rows, built in the same jit: variance
# off by 8e-5 and gradients by 1e-3; per image, 5e-7).
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


class BatchNorm(nn.BatchNorm):
    """``flax.linen.BatchNorm`` (same fields, variables and results) whose
    train mode runs :func:`batch_norm_train`. Channels-last (``axis=-1``),
    scale and bias on, no mask; other settings fall back to flax's code."""

    @nn.compact
    def __call__(self, x, use_running_average: Union[bool, None] = None, *, mask=None, pointwise_kernel=None):
        """``pointwise_kernel`` (a (1, 1, C_in, C_out) kernel): ``x`` is the
        input of that 1x1 stride-1 convolution, and the result is this
        BatchNorm of its output (see :func:`conv_batch_norm`)."""
        running = nn.merge_param("use_running_average", self.use_running_average, use_running_average)
        fast = not (running or mask is not None or self.axis not in (-1, x.ndim - 1) or not self.use_scale
                    or not self.use_bias or self.axis_index_groups is not None or not self.use_fast_variance
                    or not self.force_float32_reductions)
        if pointwise_kernel is not None and not (fast and _folds(x, pointwise_kernel, self.dtype)):
            x = pointwise_matmul_conv(x, pointwise_kernel)
            pointwise_kernel = None
        features = x.shape[-1] if pointwise_kernel is None else pointwise_kernel.shape[-1]
        if not fast:
            return super().__call__(x, use_running_average, mask=mask)
        ra_mean = self.variable("batch_stats", "mean", lambda s: jnp.zeros(s, jnp.float32), (features,))
        ra_var = self.variable("batch_stats", "var", lambda s: jnp.ones(s, jnp.float32), (features,))
        scale = self.param("scale", self.scale_init, (features,), self.param_dtype)
        bias = self.param("bias", self.bias_init, (features,), self.param_dtype)
        dtype = self.dtype or jnp.result_type(x, scale, bias)
        axis_name = None if self.is_initializing() else self.axis_name
        if pointwise_kernel is not None:
            y, mean, var = pointwise_conv_batch_norm_train(x, pointwise_kernel, scale, bias, self.epsilon, axis_name)
        else:
            y, mean, var = batch_norm_train(x.astype(dtype), scale.astype(dtype), bias.astype(dtype), self.epsilon,
                                            axis_name)
        if not self.is_initializing():
            m = self.momentum
            ra_mean.value = m * ra_mean.value + (1.0 - m) * mean
            ra_var.value = m * ra_var.value + (1.0 - m) * var
        return y


def _folds(x: Array, kernel: Array, norm_dtype) -> bool:
    """Whether :func:`pointwise_conv_batch_norm_train` applies: float32
    NHWC input, a (1, 1, C_in, C_out) float32 kernel, float32 BatchNorm."""
    return (x.ndim == 4 and x.dtype == jnp.float32 and kernel.dtype == jnp.float32
            and kernel.shape[:3] == (1, 1, x.shape[-1])
            and (norm_dtype is None or jnp.dtype(norm_dtype) == jnp.float32))


def _pair(v, default: int = 1) -> tuple:
    """A flax kernel size or stride (None, an int or a sequence) as a tuple."""
    if v is None:
        return (default, default)
    return (v, v) if isinstance(v, int) else tuple(v)


def _ones(v) -> bool:
    """A flax stride or dilation (None, an int or a sequence) that is 1 everywhere."""
    return v is None or (v == 1 if isinstance(v, int) else all(int(d) == 1 for d in v))


def _fold_kind(conv: nn.Module, norm: nn.Module, x: Array) -> Union[str, None]:
    """"pointwise", "patch" or None: whether and how :func:`conv_batch_norm`
    folds ``norm(conv(x))``."""
    if not (type(conv) in (Conv, RepeatedChannelConv) and isinstance(norm, BatchNorm)
            and norm.use_running_average is False and not conv.use_bias and conv.feature_group_count == 1
            and _ones(conv.input_dilation) and _ones(conv.kernel_dilation) and conv.precision is None
            and (conv.dtype is None or jnp.dtype(conv.dtype) == jnp.float32)
            and jnp.dtype(conv.param_dtype) == jnp.float32 and x.ndim == 4 and x.dtype == jnp.float32
            and resolve_conv_impl() == "matmul"):
        return None
    kernel_size = _pair(conv.kernel_size)
    if isinstance(conv.padding, str):
        known_padding = conv.padding.upper() in ("SAME", "VALID", "KERAS")
    else:
        known_padding = len(conv.padding) == 2 and all(isinstance(p, Sequence) and len(p) == 2 for p in conv.padding)
    if not (known_padding and len(kernel_size) == 2):
        return None
    zero_padding = conv.padding in ("SAME", "VALID") or (
        not isinstance(conv.padding, str) and all(tuple(p) == (0, 0) for p in conv.padding))
    if (type(conv) is Conv and kernel_size == (1, 1) and _ones(conv.strides) and zero_padding
            and conv.features >= FOLD_WIDENING * x.shape[-1]):
        return "pointwise"
    patch = kernel_size[0] * kernel_size[1] * x.shape[-1]
    if kernel_size != (1, 1) and patch <= SMALL_PATCH and conv.features >= patch:
        return "patch"
    return None


def conv_batch_norm(conv: nn.Module, norm: nn.Module, x: Array) -> Array:
    """``norm(conv(x))`` for a convolution and a BatchNorm the caller made
    (both get their usual names, parameters and running statistics). On CPU,
    with a train-mode :class:`BatchNorm` after a :class:`Conv` (or
    :class:`RepeatedChannelConv`) without bias, two cases run as
    :func:`pointwise_conv_batch_norm_train` (one matmul instead of a matmul
    and the normalisation's passes over its output): a widening 1x1 stride-1
    convolution (C_out >= FOLD_WIDENING * C_in), and a small-patch one (a
    stem: kh*kw*C_in <= SMALL_PATCH values and C_out >= that) on its patches.
    Measured fwd+bwd at batch 32, 224: the grey stem with BatchNorm and
    hard-swish 25.0 -> 12.8 ms."""
    kind = _fold_kind(conv, norm, x)
    if kind is None:
        return norm(conv(x))
    kh, kw = _pair(conv.kernel_size)
    c_in = x.shape[-1]
    # The kernel is the convolution's own parameter: calling it on a tiny
    # input creates (init) or binds (apply) it; XLA drops the unused result.
    conv(jnp.zeros((1, kh, kw, c_in), x.dtype))
    kernel = conv.variables["params"]["kernel"]
    if kind == "pointwise":
        return norm(x, pointwise_kernel=kernel)
    if kernel.shape[2] != c_in:  # RepeatedChannelConv on grey input: its RGB kernel summed, as it does
        kernel = jnp.sum(kernel, axis=2, keepdims=True)
    windows, _ = _patch_windows(x, (kh, kw), _pair(conv.strides), conv.padding)
    patches = jnp.concatenate(windows, axis=-1)
    return norm(patches, pointwise_kernel=kernel.reshape(1, 1, kh * kw * c_in, kernel.shape[-1]))


def to_rgb(x: Array) -> Array:
    """Accept (..., H, W, 1) grey or (..., H, W, 3) RGB; return RGB."""
    if x.shape[-1] == 1:
        return jnp.repeat(x, 3, axis=-1)
    if x.shape[-1] != 3:
        raise ValueError(f"expected 1 (grey) or 3 (RGB) channels last, got shape {x.shape}")
    return x


# --------------------------------------------------------------------------
# Keras preprocess_input, built into each model, and Keras-style pooling.
# --------------------------------------------------------------------------

# Keras imagenet_utils constants. "caffe" works in BGR order.
CAFFE_BGR_MEAN = (103.939, 116.779, 123.68)
TORCH_RGB_MEAN = (0.485, 0.456, 0.406)
TORCH_RGB_STD = (0.229, 0.224, 0.225)
PREPROCESSING_MODES = ("tf", "caffe", "torch")


def preprocess_input(x: Array, mode: str) -> Array:
    """RGB or grey pixels in [0, 255] -> what a Keras ImageNet model was
    trained on (``keras.applications.<family>.preprocess_input``).

    ``tf``: [-1, 1]. ``caffe``: RGB -> BGR, minus the ImageNet mean, not
    scaled. ``torch``: [0, 1], minus the mean, over the standard deviation.
    """
    x = to_rgb(x)
    if mode == "tf":
        return x * (1.0 / 127.5) - 1.0
    if mode == "caffe":
        return x[..., ::-1] - jnp.asarray(CAFFE_BGR_MEAN, x.dtype)
    if mode == "torch":
        mean = jnp.asarray(TORCH_RGB_MEAN, x.dtype)
        std = jnp.asarray(TORCH_RGB_STD, x.dtype)
        return (x * (1.0 / 255.0) - mean) / std
    raise ValueError(f"preprocessing mode must be one of {PREPROCESSING_MODES}, got {mode!r}")


def preprocess_grey(x: Array, mode: str) -> Array:
    """:func:`preprocess_input` for one-channel input, kept one channel: only
    for modes that treat every channel alike ("tf"); the result equals one
    channel of ``preprocess_input(x, mode)``."""
    if x.shape[-1] != 1:
        raise ValueError(f"preprocess_grey wants one channel last, got shape {x.shape}")
    if mode != "tf":
        raise ValueError(f"only 'tf' preprocessing treats channels alike; got mode {mode!r}")
    return x * (1.0 / 127.5) - 1.0


def zero_pad(x: Array, pad: int) -> Array:
    """Keras ``ZeroPadding2D(pad)`` on NHWC."""
    return jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))


def padded_max_pool(x: Array, window: int = 3, stride: int = 2, pad: int = 1) -> Array:
    """Keras stems' ``ZeroPadding2D(pad)`` then a "valid" max pool. The
    padding is zeros, not -inf: the same here, since the stems pool after a
    ReLU, but stated as Keras does it."""
    return nn.max_pool(zero_pad(x, pad), (window, window), strides=(stride, stride), padding="VALID")


def batch_norm_def(
    train: bool,
    momentum: float,
    epsilon: float,
    dtype: Any = None,
    axis_name: Union[str, None] = None,
    norm: Union[ModuleDef, None] = None,
) -> ModuleDef:
    """An architecture's BatchNorm, bound once: batch statistics (and running
    average updates) when ``train``, the running averages otherwise."""
    return functools.partial(
        norm or BatchNorm, use_running_average=not train, momentum=momentum, epsilon=epsilon, dtype=dtype, axis_name=axis_name
    )


def imagenet_stem(x: Array, conv: ModuleDef, norm: ModuleDef, features: int = 64) -> Array:
    """The Keras ResNet / DenseNet stem: ZeroPadding(3) + 7x7/2 "valid" conv ->
    BN -> ReLU -> ZeroPadding(1) + 3x3/2 max pool. Call it from a compact
    ``__call__``: it makes the caller's ``stem_conv`` and ``stem_bn``."""
    x = conv(features, (7, 7), strides=(2, 2), padding="VALID", name="stem_conv")(zero_pad(x, 3))
    x = nn.relu(norm(name="stem_bn")(x))
    return padded_max_pool(x, 3, 2, 1)
