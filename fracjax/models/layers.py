"""Layers shared by every architecture: activations, the convolution,
depthwise convolution, BatchNorm and conv+BatchNorm modules, squeeze-and-
excitation, Keras preprocessing and pooling.

The arithmetic lives in :mod:`fracjax.ops` as pure functions; each module
here takes the implementation as a field (``impl``), which
:func:`fracjax.models.create` fills from a kit (:mod:`fracjax.models.kits`).
Architectures take their building blocks (``conv``, ``norm``, ``conv_bn``,
``depthwise``) as ``ModuleDef`` arguments, in the style of flax's
``examples/imagenet``, so an architecture decides precision, BatchNorm
constants and train/eval mode in one place.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Optional, Tuple, Union

import jax
import jax.numpy as jnp
from flax import linen as nn

from fracjax import ops
from fracjax.ops.windows import Padding

ModuleDef = Any
Array = jax.Array

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
# Modules. Parameter names and shapes are those of flax's nn.Conv and
# nn.BatchNorm, so Keras imports and checkpoints do not depend on the
# implementation chosen.
# --------------------------------------------------------------------------

default_kernel_init = nn.initializers.lecun_normal()  # nn.Conv's


def _pair(v, default: int = 1) -> Tuple[int, int]:
    """A kernel size or stride (None, an int or a sequence) as a tuple."""
    if v is None:
        return (default, default)
    return (int(v), int(v)) if isinstance(v, int) else tuple(int(d) for d in v)


def _kernel_for_input(kernel: Array, channels: int, stored: int, name: str) -> Array:
    """A kernel stored for ``stored`` input channels applied to ``channels``
    (one grey channel: the kernel summed over its channels, see :class:`Conv`)."""
    if channels == stored:
        return kernel
    if channels == 1:
        return jnp.sum(kernel, axis=2, keepdims=True)
    raise ValueError(f"{name}: expected 1 or {stored} input channels, got {channels}")


class Conv(nn.Module):
    """A 2-D convolution, NHWC, with ``nn.Conv``'s fields, parameters and
    initialisation; ``impl`` picks the arithmetic (:func:`fracjax.ops.conv2d`).

    ``in_channels``: store the kernel for that many channels (an RGB stem) and
    also take one-channel input as that channel repeated, without repeating
    it: the kernel is summed over its input channels (exact up to rounding;
    gradients reach every channel's weights equally, as through the repeated
    input). Only valid where the layer before treats every channel alike
    (Keras "tf" preprocessing; a per-channel mean breaks it at zero padding).
    """

    keras_layer = "conv2d"  # the Keras class whose weights it takes (fracjax.models.weights)
    features: int
    kernel_size: Tuple[int, int]
    strides: Union[int, Tuple[int, int], None] = 1
    padding: Padding = "SAME"
    use_bias: bool = True
    in_channels: Optional[int] = None
    impl: str = "auto"
    dtype: Any = None
    param_dtype: Any = jnp.float32
    precision: Any = None
    kernel_init: Callable = default_kernel_init
    bias_init: Callable = nn.initializers.zeros

    @nn.compact
    def __call__(self, x: Array) -> Array:
        stored = self.in_channels or x.shape[-1]
        kernel = self.param("kernel", self.kernel_init, (*_pair(self.kernel_size), stored, self.features),
                            self.param_dtype)
        bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype) if self.use_bias else None
        x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
        kernel = _kernel_for_input(kernel, x.shape[-1], stored, self.name)
        y = ops.conv2d(x, kernel, _pair(self.strides), self.padding, self.impl, self.precision)
        return y if bias is None else y + bias


class DepthwiseConv2D(nn.Module):
    """Depthwise convolution (depth multiplier 1); ``impl`` picks the
    arithmetic (:func:`fracjax.ops.depthwise_conv`). The kernel is stored as
    (kh, kw, 1, C), the layout of a flax grouped ``nn.Conv``."""

    keras_layer = "depthwise_conv2d"
    kernel_size: Tuple[int, int] = (3, 3)
    strides: Tuple[int, int] = (1, 1)
    padding: Padding = "SAME"
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
        y = ops.depthwise_conv(x, kernel, self.strides, self.padding, self.impl)
        return y if bias is None else y + bias


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


class BatchNorm(nn.BatchNorm):
    """``flax.linen.BatchNorm`` (same fields, variables and results) whose
    train mode runs :func:`fracjax.ops.batch_norm_train` (a closed-form
    gradient). Channels-last, scale and bias on, no mask; other settings
    fall back to flax's code."""

    @nn.compact
    def __call__(self, x, use_running_average: Union[bool, None] = None, *, mask=None):
        running = nn.merge_param("use_running_average", self.use_running_average, use_running_average)
        if running or mask is not None or not self._closed_form_applies(x):
            return super().__call__(x, use_running_average, mask=mask)
        features = x.shape[-1]
        ra_mean, ra_var, scale, bias = _norm_variables(self, features, self.scale_init, self.bias_init,
                                                       self.param_dtype)
        dtype = self.dtype or jnp.result_type(x, scale, bias)
        axis_name = None if self.is_initializing() else self.axis_name
        y, mean, var = ops.batch_norm_train(x.astype(dtype), scale.astype(dtype), bias.astype(dtype), self.epsilon,
                                            axis_name)
        if not self.is_initializing():
            ra_mean.value = ops.running_average(ra_mean.value, mean, self.momentum)
            ra_var.value = ops.running_average(ra_var.value, var, self.momentum)
        return y

    def _closed_form_applies(self, x) -> bool:
        return (self.axis in (-1, x.ndim - 1) and self.use_scale and self.use_bias and self.axis_index_groups is None
                and self.use_fast_variance and self.force_float32_reductions)


def _norm_variables(owner, features: int, scale_init, bias_init, param_dtype):
    """A BatchNorm's variables, declared as flax does, in ``owner`` (a module):
    running mean and variance (float32, ``batch_stats``), scale and bias."""
    ra_mean = owner.variable("batch_stats", "mean", lambda s: jnp.zeros(s, jnp.float32), (features,))
    ra_var = owner.variable("batch_stats", "var", lambda s: jnp.ones(s, jnp.float32), (features,))
    scale = owner.param("scale", scale_init, (features,), param_dtype)
    bias = owner.param("bias", bias_init, (features,), param_dtype)
    return ra_mean, ra_var, scale, bias


class BatchNormVariables(nn.Module):
    """A BatchNorm's variables (``params`` scale and bias, ``batch_stats`` mean
    and var, declared as :class:`BatchNorm` declares them) for a parent that
    computes with them itself: :class:`ConvBN`, which may fold its convolution
    into the normalisation. Calling it gives (mean, var, scale, bias);
    :meth:`update` moves the running averages."""

    features: int
    scale_init: Callable = nn.initializers.ones
    bias_init: Callable = nn.initializers.zeros
    param_dtype: Any = jnp.float32

    def setup(self):
        self.ra_mean, self.ra_var, self.scale, self.bias = _norm_variables(
            self, self.features, self.scale_init, self.bias_init, self.param_dtype
        )

    def __call__(self) -> Tuple[Array, Array, Array, Array]:
        return self.ra_mean.value, self.ra_var.value, self.scale, self.bias

    def update(self, mean: Array, var: Array, momentum: float) -> None:
        self.ra_mean.value = ops.running_average(self.ra_mean.value, mean, momentum)
        self.ra_var.value = ops.running_average(self.ra_var.value, var, momentum)


class ConvBN(nn.Module):
    """A bias-free convolution and the BatchNorm after it, as one module that
    owns its variables: ``<name>/kernel`` and the BatchNorm's under
    ``<name>/<norm_name>`` (a :class:`BatchNormVariables` child named as the
    Keras BatchNorm layer is). Checkpoints written before this layout (the
    BatchNorm beside the convolution, in the caller's scope) are moved into it
    by :func:`fracjax.models.migrate.upgrade_variables`. In train mode with ``fold``
    on, where the CPU form runs (``impl`` "matmul", or "auto" lowered for
    CPU) and the shapes pay (see :func:`fracjax.ops.conv_batch_norm_train`),
    the convolution is folded into the normalisation; otherwise it is the
    convolution, then BatchNorm. ``in_channels`` as in :class:`Conv`. Its
    output is the normalised one (no pre-BatchNorm tensor exists when folded).
    """

    features: int
    kernel_size: Tuple[int, int]
    norm_name: str
    strides: Union[int, Tuple[int, int], None] = 1
    padding: Padding = "SAME"
    in_channels: Optional[int] = None
    train: bool = False
    momentum: float = 0.99
    epsilon: float = 1e-3
    axis_name: Optional[str] = None
    impl: str = "auto"
    fold: bool = True
    dtype: Any = None
    param_dtype: Any = jnp.float32
    kernel_init: Callable = default_kernel_init
    scale_init: Callable = nn.initializers.ones

    use_bias = False  # its convolution has none (the BatchNorm's bias follows)

    def keras_slots(self):
        """(path below this module, Keras class) of the two Keras layers this
        module stands for (:mod:`fracjax.models.weights`)."""
        return (((), "conv2d"), ((self.norm_name,), "batch_normalization"))

    @nn.compact
    def __call__(self, x: Array) -> Array:
        stored = self.in_channels or x.shape[-1]
        kernel = self.param("kernel", self.kernel_init, (*_pair(self.kernel_size), stored, self.features),
                            self.param_dtype)
        norm = BatchNormVariables(self.features, self.scale_init, param_dtype=self.param_dtype, name=self.norm_name)
        ra_mean, ra_var, scale, bias = norm()
        x, kernel = nn.dtypes.promote_dtype(x, kernel, dtype=self.dtype)
        kernel = _kernel_for_input(kernel, x.shape[-1], stored, self.name)
        strides = _pair(self.strides)
        dtype = self.dtype or jnp.result_type(x, scale, bias)
        if not self.train:
            y = ops.conv2d(x, kernel, strides, self.padding, self.impl)
            return ops.batch_norm_eval(y, ra_mean, ra_var, scale, bias, self.epsilon, self.dtype)
        axis_name = None if self.is_initializing() else self.axis_name
        y, mean, var = ops.conv_batch_norm_train(x, kernel, scale.astype(dtype), bias.astype(dtype), strides,
                                                 self.padding, self.epsilon, axis_name, self.impl, self.fold)
        if not self.is_initializing():
            norm.update(mean, var, self.momentum)
        return y


def to_rgb(x: Array) -> Array:
    """Accept (..., H, W, 1) grey or (..., H, W, 3) RGB; return RGB."""
    if x.shape[-1] == 1:  # a broadcast, not a repeat: the ONNX graph expands it channels-first, in place
        return jnp.broadcast_to(x, (*x.shape[:-1], 3))
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
    return nn.max_pool(zero_pad(x, pad), window_shape=(window, window), strides=(stride, stride), padding="VALID")


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
        norm or BatchNorm,
        use_running_average=not train,
        momentum=momentum,
        epsilon=epsilon,
        dtype=dtype,
        axis_name=axis_name,
    )


def conv_bn_def(
    train: bool,
    momentum: float,
    epsilon: float,
    dtype: Any = None,
    axis_name: Union[str, None] = None,
    conv_bn: Union[ModuleDef, None] = None,
) -> ModuleDef:
    """An architecture's :class:`ConvBN`, bound once with the constants of
    its BatchNorm (see :func:`batch_norm_def`)."""
    return functools.partial(
        conv_bn or ConvBN, train=train, momentum=momentum, epsilon=epsilon, dtype=dtype, axis_name=axis_name
    )


def imagenet_stem(x: Array, conv: ModuleDef, norm: ModuleDef, features: int = 64) -> Array:
    """The Keras ResNet / DenseNet stem: ZeroPadding(3) + 7x7/2 "valid" conv ->
    BN -> ReLU -> ZeroPadding(1) + 3x3/2 max pool. Call it from a compact
    ``__call__``: it makes the caller's ``stem_conv`` and ``stem_bn``."""
    x = conv(features, (7, 7), strides=(2, 2), padding="VALID", name="stem_conv")(zero_pad(x, 3))
    x = nn.relu(norm(name="stem_bn")(x))
    return padded_max_pool(x, 3, 2, 1)
