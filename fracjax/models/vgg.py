"""VGG (16, 19) matching ``keras.applications.VGG16`` / ``VGG19`` with
``include_top=False``: RGB (or grey) pixels in [0, 255] in, Keras's "caffe"
preprocessing built in, the fifth block's pooled map out (512 channels).

VGG has no BatchNorm: ``train``, ``bn_axis_name`` and ``bn_momentum`` are
accepted so that one training config drives every backbone, and change
nothing.
"""

from __future__ import annotations

import functools
from typing import Any, Optional, Sequence

import jax.numpy as jnp
from flax import linen as nn

from fracjax.models.layers import Conv, ModuleDef, preprocess_input

# 3x3 convs per block; the blocks have 64, 128, 256, 512, 512 filters.
VGG16_BLOCKS = (2, 2, 3, 3, 3)
VGG19_BLOCKS = (2, 2, 4, 4, 4)
BLOCK_FILTERS = (64, 128, 256, 512, 512)


class VGGBlock(nn.Module):
    """``convs`` x (3x3 "same" conv + bias -> ReLU), then a 2x2/2 max pool."""

    filters: int
    convs: int
    conv: ModuleDef

    @nn.compact
    def __call__(self, x):
        for i in range(self.convs):
            x = nn.relu(self.conv(self.filters, (3, 3), name=f"conv{i + 1}")(x))
        return nn.max_pool(x, window_shape=(2, 2), strides=(2, 2), padding="VALID")


class VGG(nn.Module):
    """VGG feature extractor. Input: (N, H, W, 3|1) pixels in [0, 255].
    Output: (N, H/32, W/32, 512). Submodules ``block1``-``block5``."""

    blocks: Sequence[int] = VGG16_BLOCKS
    dtype: Any = jnp.float32
    bn_axis_name: Optional[str] = None  # no BatchNorm: accepted, unused
    bn_momentum: Optional[float] = None  # no BatchNorm: accepted, unused
    conv: ModuleDef = Conv

    @nn.compact
    def __call__(self, x, train: bool = False):
        del train  # no BatchNorm, no dropout in the feature extractor
        conv = functools.partial(self.conv, use_bias=True, padding="SAME", dtype=self.dtype)
        x = preprocess_input(jnp.asarray(x).astype(self.dtype), "caffe")
        for i, (convs, filters) in enumerate(zip(self.blocks, BLOCK_FILTERS, strict=True)):
            x = VGGBlock(filters, convs, conv=conv, name=f"block{i + 1}")(x)
        return x


VGG16 = functools.partial(VGG, blocks=VGG16_BLOCKS)
VGG19 = functools.partial(VGG, blocks=VGG19_BLOCKS)
