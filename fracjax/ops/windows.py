"""Padding and strided windows of NHWC arrays: the common ground of the
depthwise, small-patch and folded convolutions."""

from __future__ import annotations

from typing import Sequence, Tuple, Union

import jax
import jax.numpy as jnp
from jax import lax

Array = jax.Array
PadPairs = Tuple[Tuple[int, int], Tuple[int, int]]
Padding = Union[str, Sequence[Tuple[int, int]]]


def keras_correct_pad(size: Tuple[int, int], kernel: Tuple[int, int]) -> PadPairs:
    """The explicit padding Keras ``imagenet_utils.correct_pad`` puts before a
    stride-2 "valid" layer: ``(k//2 - 1, k//2)`` on an even side (the same as
    "SAME"), ``(k//2, k//2)`` on an odd side (one more than "SAME" on top).
    """
    pads = []
    for n, k in zip(size, kernel, strict=True):
        adjust = 1 if n % 2 == 0 else 0
        pads.append((k // 2 - adjust, k // 2))
    return tuple(pads)  # type: ignore[return-value]


def same_pad(size: Tuple[int, int], kernel: Tuple[int, int], strides: Tuple[int, int]) -> PadPairs:
    """TensorFlow/XLA "SAME" padding (the smaller half before)."""
    return tuple(lax.padtype_to_pads(size, kernel, strides, "SAME"))  # type: ignore[return-value]


def resolve_padding(padding: Padding, size: Tuple[int, int], kernel: Tuple[int, int],
                    strides: Tuple[int, int]) -> PadPairs:
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


def window_pad(size: Tuple[int, int], kernel_hw: Tuple[int, int], strides: Tuple[int, int],
               padding: PadPairs) -> Tuple[Tuple[int, int], PadPairs]:
    """(output size, padding) where the end padding is set so that the padded
    input has exactly the s * (out - 1) + k rows and columns the windows read
    (negative: trailing rows no window reads are cropped)."""
    out, pads = [], []
    for n, k, s, (before, after) in zip(size, kernel_hw, strides, padding, strict=True):
        o = (n + before + after - k) // s + 1
        out.append(o)
        pads.append((before, s * (o - 1) + k - n - before))
    return tuple(out), tuple(pads)  # type: ignore[return-value]


def pad_for_taps(x: Array, kernel_hw, strides, padding: PadPairs) -> Array:
    """The input padded by :func:`window_pad`. Both the forward and the kernel
    gradient read their windows from it, so XLA writes it once, fused into
    the producer of ``x``."""
    _, pads = window_pad(x.shape[1:3], kernel_hw, strides, padding)
    zero = jnp.zeros((), x.dtype)
    return lax.pad(x, zero, ((0, 0, 0), (*pads[0], 0), (*pads[1], 0), (0, 0, 0)))


def tap_window(xp: Array, i, j, strides: Tuple[int, int], out_hw: Tuple[int, int]) -> Array:
    """Tap (i, j)'s (n, ho, wo, c) strided window of :func:`pad_for_taps`'s
    array; ``i, j`` static or traced."""
    sh, sw = strides
    ho, wo = out_hw
    n, c = xp.shape[0], xp.shape[-1]
    span = (n, sh * (ho - 1) + 1, sw * (wo - 1) + 1, c)
    if isinstance(i, int) and isinstance(j, int):
        return lax.slice(xp, (0, i, j, 0), (n, i + span[1], j + span[2], c), (1, sh, sw, 1))
    window = lax.dynamic_slice(xp, (0, i, j, 0), span)
    return window if (sh, sw) == (1, 1) else window[:, ::sh, ::sw]


def patch_windows(x: Array, kernel_hw, strides, padding: Padding):
    """(windows, output size): the kh*kw strided (n, ho, wo, C_in) windows of
    the padded input, tap-major (the order of ``kernel.reshape(kh*kw, ...)``)."""
    strides = tuple(int(s) for s in strides)
    pads = resolve_padding(padding, x.shape[1:3], tuple(kernel_hw), strides)
    out_hw, _ = window_pad(x.shape[1:3], kernel_hw, strides, pads)
    xp = pad_for_taps(x, kernel_hw, strides, pads)
    windows = [tap_window(xp, i, j, strides, out_hw) for i in range(kernel_hw[0]) for j in range(kernel_hw[1])]
    return windows, out_hw
