"""DenseNet (121, 169, 201) matching ``keras.applications.DenseNet*`` with
``include_top=False``: RGB (or grey) pixels in [0, 255] in, Keras's "torch"
preprocessing built in, the final BN-ReLU feature map out (1024 channels
for DenseNet121).
"""

from __future__ import annotations

import functools
from typing import Any, Optional, Sequence

import jax.numpy as jnp
from flax import linen as nn

from fracjax.models.layers import BatchNorm, Conv, ModuleDef, batch_norm_def, imagenet_stem, preprocess_input

# Keras DenseNet BatchNorm constants.
BN_EPSILON = 1.001e-5
BN_MOMENTUM = 0.99
GROWTH_RATE = 32
BOTTLENECK_WIDTH = 4  # the 1x1 conv has 4 x growth channels
COMPRESSION = 0.5  # transitions halve the channels

DENSENET121_BLOCKS = (6, 12, 24, 16)
DENSENET169_BLOCKS = (6, 12, 32, 32)
DENSENET201_BLOCKS = (6, 12, 48, 32)


class DenseLayer(nn.Module):
    """BN -> ReLU -> 1x1 conv -> BN -> ReLU -> 3x3 conv (growth channels),
    concatenated to the input."""

    growth: int
    conv: ModuleDef
    norm: ModuleDef

    @nn.compact
    def __call__(self, x):
        y = nn.relu(self.norm(name="bn1")(x))
        y = self.conv(BOTTLENECK_WIDTH * self.growth, (1, 1), name="conv1")(y)
        y = nn.relu(self.norm(name="bn2")(y))
        y = self.conv(self.growth, (3, 3), padding="SAME", name="conv2")(y)
        return jnp.concatenate([x, y], axis=-1)


class Transition(nn.Module):
    """BN -> ReLU -> 1x1 conv (channels x compression) -> 2x2/2 average pool."""

    conv: ModuleDef
    norm: ModuleDef

    @nn.compact
    def __call__(self, x):
        x = nn.relu(self.norm(name="bn")(x))
        x = self.conv(int(x.shape[-1] * COMPRESSION), (1, 1), name="conv")(x)
        return nn.avg_pool(x, window_shape=(2, 2), strides=(2, 2), padding="VALID")


class DenseNet(nn.Module):
    """DenseNet-BC feature extractor.

    Input: (N, H, W, 3) RGB or (N, H, W, 1) grey pixels in [0, 255].
    Output: (N, ~H/32, ~W/32, C). Submodules: ``stem_conv``, ``stem_bn``,
    ``block<stage>_<i>`` (dense layers), ``transition<stage>``, ``last_bn``.
    """

    blocks: Sequence[int] = DENSENET121_BLOCKS
    growth: int = GROWTH_RATE
    dtype: Any = jnp.float32
    bn_axis_name: Optional[str] = None
    bn_momentum: float = BN_MOMENTUM
    conv: ModuleDef = Conv
    norm: ModuleDef = BatchNorm

    @nn.compact
    def __call__(self, x, train: bool = False):
        conv = functools.partial(self.conv, use_bias=False, padding="VALID", dtype=self.dtype)
        norm = batch_norm_def(train, self.bn_momentum, BN_EPSILON, self.dtype, self.bn_axis_name, self.norm)
        x = preprocess_input(jnp.asarray(x).astype(self.dtype), "torch")
        x = imagenet_stem(x, conv, norm)
        for stage, layers in enumerate(self.blocks):
            for i in range(layers):
                x = DenseLayer(self.growth, conv=conv, norm=norm, name=f"block{stage + 1}_{i + 1}")(x)
            if stage < len(self.blocks) - 1:
                x = Transition(conv=conv, norm=norm, name=f"transition{stage + 1}")(x)
        return nn.relu(norm(name="last_bn")(x))


DenseNet121 = functools.partial(DenseNet, blocks=DENSENET121_BLOCKS)
DenseNet169 = functools.partial(DenseNet, blocks=DENSENET169_BLOCKS)
DenseNet201 = functools.partial(DenseNet, blocks=DENSENET201_BLOCKS)
