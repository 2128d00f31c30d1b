"""ResNet v1 (50, 101, 152) matching ``keras.applications.ResNet*`` with
``include_top=False``: RGB (or grey) pixels in [0, 255] in, Keras's "caffe"
preprocessing built in, the last stage's feature map out (2048 channels).

Keras's ResNet is v1, not the v1.5 that flax's example and torchvision use:
the stride sits on the first 1x1 conv of a bottleneck, not on the 3x3; every
conv has a bias; the stem pads explicitly (3, then 1 before the max pool).
"""

from __future__ import annotations

import functools
from typing import Any, Optional, Sequence

import jax.numpy as jnp
from flax import linen as nn

from fracjax.models.layers import BatchNorm, Conv, ModuleDef, batch_norm_def, imagenet_stem, preprocess_input

# Keras ResNet BatchNorm constants.
BN_EPSILON = 1.001e-5
BN_MOMENTUM = 0.99

# Bottlenecks per stage; the stages have 64, 128, 256, 512 filters (x4 out).
RESNET50_STAGES = (3, 4, 6, 3)
RESNET101_STAGES = (3, 4, 23, 3)
RESNET152_STAGES = (3, 8, 36, 3)


class Bottleneck(nn.Module):
    """1x1 (stride) -> BN -> ReLU -> 3x3 -> BN -> ReLU -> 1x1 (x4) -> BN, plus
    the input, or a 1x1 projection of it in the first block of a stage."""

    filters: int
    strides: int
    projection: bool
    conv: ModuleDef
    norm: ModuleDef
    zero_init_residual: bool = False

    @nn.compact
    def __call__(self, x):
        s = (self.strides, self.strides)
        y = self.conv(self.filters, (1, 1), strides=s, name="conv1")(x)
        y = nn.relu(self.norm(name="bn1")(y))
        y = self.conv(self.filters, (3, 3), padding="SAME", name="conv2")(y)
        y = nn.relu(self.norm(name="bn2")(y))
        # The call order below is Keras's layer order (its functional graph
        # sorts the shortcut's conv and BN between the main path's), which
        # is the order weight files list them in. Numerically it is free.
        if self.projection:
            shortcut = self.conv(4 * self.filters, (1, 1), strides=s, name="shortcut_conv")(x)
        else:
            shortcut = x
        y = self.conv(4 * self.filters, (1, 1), name="conv3")(y)
        if self.projection:
            shortcut = self.norm(name="shortcut_bn")(shortcut)
        y = self.norm(name="bn3", **({"scale_init": nn.initializers.zeros} if self.zero_init_residual else {}))(y)
        return nn.relu(y + shortcut)


class ResNet(nn.Module):
    """ResNet v1 feature extractor.

    Input: (N, H, W, 3) RGB or (N, H, W, 1) grey pixels in [0, 255].
    Output: (N, ~H/32, ~W/32, 2048). Submodules: ``stem_conv``, ``stem_bn``,
    ``block<stage>_<i>`` (stages 1-4, as Keras's conv2-conv5).
    """

    stages: Sequence[int] = RESNET50_STAGES
    dtype: Any = jnp.float32
    bn_axis_name: Optional[str] = None
    bn_momentum: float = BN_MOMENTUM
    # Each bottleneck starts as its shortcut (last BN scale 0; Goyal et al.
    # 2017), for training from scratch; loaded weights replace it.
    zero_init_residual: bool = True
    conv: ModuleDef = Conv
    norm: ModuleDef = BatchNorm

    @nn.compact
    def __call__(self, x, train: bool = False):
        conv = functools.partial(self.conv, use_bias=True, padding="VALID", dtype=self.dtype)
        norm = batch_norm_def(train, self.bn_momentum, BN_EPSILON, self.dtype, self.bn_axis_name, self.norm)
        x = preprocess_input(jnp.asarray(x).astype(self.dtype), "caffe")
        x = imagenet_stem(x, conv, norm)
        for stage, blocks in enumerate(self.stages):
            for i in range(blocks):
                x = Bottleneck(
                    filters=64 * 2**stage,
                    strides=2 if (i == 0 and stage > 0) else 1,
                    projection=i == 0,
                    conv=conv,
                    norm=norm,
                    zero_init_residual=self.zero_init_residual,
                    name=f"block{stage + 1}_{i + 1}",
                )(x)
        return x


ResNet50 = functools.partial(ResNet, stages=RESNET50_STAGES)
ResNet101 = functools.partial(ResNet, stages=RESNET101_STAGES)
ResNet152 = functools.partial(ResNet, stages=RESNET152_STAGES)
