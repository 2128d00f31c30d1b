"""MobileNetV3 (Small and Large) matching ``keras.applications.MobileNetV3*``
with ``include_top=False``: RGB (or grey) pixels in [0, 255] in, the last
1x1 conv's feature map out (576 channels for Small, 960 for Large).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Optional, Sequence

import jax.numpy as jnp
from flax import linen as nn

from fracjax.models.layers import (
    BatchNorm,
    Conv,
    ConvBN,
    DepthwiseConv2D,
    ModuleDef,
    SqueezeExcite,
    batch_norm_def,
    conv_bn_def,
    hard_swish,
    make_divisible,
    preprocess_grey,
    preprocess_input,
)

# Keras MobileNetV3: every BatchNorm uses these (flax defaults differ).
BN_MOMENTUM = 0.999
BN_EPSILON = 1e-3
SE_RATIO = 0.25


@dataclasses.dataclass(frozen=True)
class BlockSpec:
    """One inverted-residual block. ``expansion`` multiplies the block's input
    channels (rounded by ``make_divisible``), as Keras does."""

    expansion: float
    out: int
    kernel: int
    stride: int
    se: bool
    act: str  # "relu" or "hard_swish"


def _table(rows):
    return tuple(BlockSpec(*row) for row in rows)


# fmt: off
SMALL_BLOCKS = _table([
    # expansion, out, kernel, stride, se, act
    (1,         16, 3, 2, True,  "relu"),
    (72 / 16,   24, 3, 2, False, "relu"),
    (88 / 24,   24, 3, 1, False, "relu"),
    (4,         40, 5, 2, True,  "hard_swish"),
    (6,         40, 5, 1, True,  "hard_swish"),
    (6,         40, 5, 1, True,  "hard_swish"),
    (3,         48, 5, 1, True,  "hard_swish"),
    (3,         48, 5, 1, True,  "hard_swish"),
    (6,         96, 5, 2, True,  "hard_swish"),
    (6,         96, 5, 1, True,  "hard_swish"),
    (6,         96, 5, 1, True,  "hard_swish"),
])

LARGE_BLOCKS = _table([
    (1,    16,  3, 1, False, "relu"),
    (4,    24,  3, 2, False, "relu"),
    (3,    24,  3, 1, False, "relu"),
    (3,    40,  5, 2, True,  "relu"),
    (3,    40,  5, 1, True,  "relu"),
    (3,    40,  5, 1, True,  "relu"),
    (6,    80,  3, 2, False, "hard_swish"),
    (2.5,  80,  3, 1, False, "hard_swish"),
    (2.3,  80,  3, 1, False, "hard_swish"),
    (2.3,  80,  3, 1, False, "hard_swish"),
    (6,    112, 3, 1, True,  "hard_swish"),
    (6,    112, 3, 1, True,  "hard_swish"),
    (6,    160, 5, 2, True,  "hard_swish"),
    (6,    160, 5, 1, True,  "hard_swish"),
    (6,    160, 5, 1, True,  "hard_swish"),
])
# fmt: on

ACTIVATIONS = {"relu": nn.relu, "hard_swish": hard_swish}


class InvertedResidual(nn.Module):
    """[1x1 expand -> BN -> act] -> depthwise -> BN -> act -> [SE] -> 1x1
    project -> BN, plus the input when the shape allows. Keras skips the
    expansion conv in the first block only (``expand=False``)."""

    spec: BlockSpec
    expand: bool
    conv: ModuleDef
    norm: ModuleDef
    conv_bn: ModuleDef
    depthwise: ModuleDef
    zero_init_residual: bool = False

    @nn.compact
    def __call__(self, x):
        spec = self.spec
        act = ACTIVATIONS[spec.act]
        in_channels = x.shape[-1]
        expanded = make_divisible(in_channels * spec.expansion)
        shortcut = x
        if self.expand:
            x = act(self.conv_bn(expanded, (1, 1), name="expand", norm_name="expand_bn")(x))
        # "KERAS" padding: "same" at stride 1, correct_pad + "valid" at stride 2.
        x = self.depthwise(
            kernel_size=(spec.kernel, spec.kernel),
            strides=(spec.stride, spec.stride),
            padding="KERAS",
            name="depthwise",
        )(x)
        x = act(self.norm(name="depthwise_bn")(x))
        if spec.se:
            x = SqueezeExcite(make_divisible(expanded * SE_RATIO), conv=self.conv, name="se")(x)
        residual = spec.stride == 1 and in_channels == spec.out
        zero = residual and self.zero_init_residual
        x = self.conv_bn(spec.out, (1, 1), name="project", norm_name="project_bn",
                         **({"scale_init": nn.initializers.zeros} if zero else {}))(x)
        if residual:
            x = x + shortcut
        return x


class MobileNetV3(nn.Module):
    """MobileNetV3 feature extractor.

    Input: (N, H, W, 3) RGB or (N, H, W, 1) grey pixels in [0, 255]; the Keras
    rescaling to [-1, 1] is built in. Output: (N, H/32, W/32, last_channels).
    ``train`` switches BatchNorm to batch statistics (and running-average
    updates, with ``mutable=["batch_stats"]``).
    """

    blocks: Sequence[BlockSpec] = SMALL_BLOCKS
    stem_channels: int = 16
    last_channels: Optional[int] = None  # default: 6 x the last block's output
    dtype: Any = jnp.float32
    bn_axis_name: Optional[str] = None
    # Keras's 0.999 suits long ImageNet runs; a short run from scratch needs
    # running statistics that catch up within an epoch (e.g. 0.9).
    bn_momentum: float = BN_MOMENTUM
    # Residual blocks start as the identity (their last BN scale is 0; Goyal
    # et al. 2017): trained from scratch on the synthetic set, this halves the
    # steps before MobileNetV3-Small starts to learn. Only the random
    # initialisation changes; loaded weights replace it.
    zero_init_residual: bool = True
    conv: ModuleDef = Conv  # the squeeze-and-excitation convolutions
    norm: ModuleDef = BatchNorm  # after each depthwise convolution
    conv_bn: ModuleDef = ConvBN  # stem, expand, project and last convolutions with their BatchNorm
    depthwise: ModuleDef = DepthwiseConv2D
    act: Callable = hard_swish

    @nn.compact
    def __call__(self, x, train: bool = False):
        conv = functools.partial(self.conv, padding="SAME", dtype=self.dtype)
        norm = batch_norm_def(train, self.bn_momentum, BN_EPSILON, self.dtype, self.bn_axis_name, self.norm)
        conv_bn = conv_bn_def(train, self.bn_momentum, BN_EPSILON, self.dtype, self.bn_axis_name, self.conv_bn)
        depthwise = functools.partial(self.depthwise, dtype=self.dtype)

        x = jnp.asarray(x).astype(self.dtype)
        # Grey X-rays stay one channel: "tf" preprocessing treats the three
        # repeated channels alike, so the stem sums its RGB kernel over them
        # instead of convolving three copies (3x less stem work, same parameters).
        x = preprocess_grey(x, "tf") if x.shape[-1] == 1 else preprocess_input(x, "tf")
        x = self.act(conv_bn(self.stem_channels, (3, 3), strides=(2, 2), in_channels=3, name="stem_conv",
                             norm_name="stem_bn")(x))
        for i, spec in enumerate(self.blocks):
            x = InvertedResidual(
                spec, expand=i > 0, conv=conv, norm=norm, conv_bn=conv_bn, depthwise=depthwise,
                zero_init_residual=self.zero_init_residual, name=f"block{i}",
            )(x)
        last = self.last_channels or make_divisible(x.shape[-1] * 6)
        x = self.act(conv_bn(last, (1, 1), name="last_conv", norm_name="last_bn")(x))
        return x


MobileNetV3Small = functools.partial(MobileNetV3, blocks=SMALL_BLOCKS)
MobileNetV3Large = functools.partial(MobileNetV3, blocks=LARGE_BLOCKS)
