"""Kernels as pure functions (with their custom VJPs), apart from the Flax
modules that call them (:mod:`fracjax.models.layers`).

Each op takes ``impl``: the CPU form written for XLA:CPU, "lax" (portable), or
"auto", decided per platform when the function is lowered
(:mod:`fracjax.ops.platform`). Nothing here reads a process global.
"""

from fracjax.ops.batch_norm import batch_norm_eval, batch_norm_train, running_average
from fracjax.ops.conv import (
    CONV_IMPLS,
    SMALL_PATCH,
    conv2d,
    patch_matmul_conv,
    patch_sum_conv,
    pointwise_matmul_conv,
    small_patch_conv,
)
from fracjax.ops.depthwise import DEPTHWISE_IMPLS, depthwise_conv, depthwise_conv_lax, depthwise_conv_shift
from fracjax.ops.fold import FOLD_WIDENING, conv_batch_norm_train, fold_kind, pointwise_conv_batch_norm_train
from fracjax.ops.platform import by_platform, env_impl
from fracjax.ops.windows import keras_correct_pad, resolve_padding, same_pad

__all__ = [
    "CONV_IMPLS",
    "DEPTHWISE_IMPLS",
    "FOLD_WIDENING",
    "SMALL_PATCH",
    "batch_norm_eval",
    "batch_norm_train",
    "by_platform",
    "conv2d",
    "conv_batch_norm_train",
    "depthwise_conv",
    "depthwise_conv_lax",
    "depthwise_conv_shift",
    "env_impl",
    "fold_kind",
    "keras_correct_pad",
    "patch_matmul_conv",
    "patch_sum_conv",
    "pointwise_conv_batch_norm_train",
    "pointwise_matmul_conv",
    "resolve_padding",
    "running_average",
    "same_pad",
    "small_patch_conv",
]
