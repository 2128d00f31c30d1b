"""Classification heads and the backbone + head classifier.

The paper's hybrid model puts new conv blocks (conv -> BN -> ReLU ->
dropout) on top of a pretrained feature extractor, then global average
pooling, dropout and a dense layer. The classifier keeps the two parts in
submodules named ``backbone`` and ``head`` so that the parameter tree splits
cleanly for freezing and for importing backbone weights.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional, Sequence

import jax.numpy as jnp
from flax import linen as nn

from fracjax.models.layers import BatchNorm, Conv, ModuleDef

# Keras BatchNormalization defaults, used by the new head layers (as in a
# Keras transfer-learning model built on top of keras.applications).
HEAD_BN_MOMENTUM = 0.99
HEAD_BN_EPSILON = 1e-3


@dataclasses.dataclass(frozen=True)
class ConvBlockSpec:
    """One head block: kxk conv (no bias) -> BN -> ReLU -> dropout."""

    features: int
    kernel: int = 3
    dropout: float = 0.0


DEFAULT_HYBRID_BLOCKS = (ConvBlockSpec(256, 3, 0.25), ConvBlockSpec(128, 3, 0.0))


def parse_blocks(blocks) -> tuple:
    """Accept ConvBlockSpec, ints (features) or (features, kernel[, dropout])
    tuples / dicts; return a tuple of ConvBlockSpec."""
    out = []
    for b in blocks:
        if isinstance(b, ConvBlockSpec):
            out.append(b)
        elif isinstance(b, int):
            out.append(ConvBlockSpec(b))
        elif isinstance(b, dict):
            out.append(ConvBlockSpec(**b))
        elif isinstance(b, (tuple, list)):
            out.append(ConvBlockSpec(*b))
        else:
            raise TypeError(f"head block must be an int, tuple, dict or ConvBlockSpec, got {b!r}")
    for b in out:
        if b.features < 1 or b.kernel < 1 or not 0.0 <= b.dropout < 1.0:
            raise ValueError(f"invalid head block {b}")
    return tuple(out)


class HybridHead(nn.Module):
    """Conv blocks -> global average pooling -> dropout -> dense logits."""

    num_classes: int = 1
    blocks: Sequence[ConvBlockSpec] = DEFAULT_HYBRID_BLOCKS
    dropout: float = 0.3
    dtype: Any = jnp.float32
    bn_axis_name: Optional[str] = None
    conv: ModuleDef = Conv

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = x.astype(self.dtype)
        for i, block in enumerate(self.blocks):
            x = self.conv(
                block.features,
                (block.kernel, block.kernel),
                padding="SAME",
                use_bias=False,  # BN's bias makes a conv bias redundant
                dtype=self.dtype,
                name=f"conv{i}",
            )(x)
            x = BatchNorm(
                use_running_average=not train,
                momentum=HEAD_BN_MOMENTUM,
                epsilon=HEAD_BN_EPSILON,
                dtype=self.dtype,
                axis_name=self.bn_axis_name,
                name=f"bn{i}",
            )(x)
            x = nn.relu(x)
            if block.dropout:
                x = nn.Dropout(block.dropout, deterministic=not train)(x)
        x = jnp.mean(x, axis=(1, 2))
        if self.dropout:
            x = nn.Dropout(self.dropout, deterministic=not train)(x)
        # Logits in float32 whatever the compute dtype: the loss needs them exact.
        return nn.Dense(self.num_classes, dtype=jnp.float32, name="classifier")(x)


class LinearHead(nn.Module):
    """Global average pooling -> dropout -> dense logits (Keras's usual
    transfer-learning head)."""

    num_classes: int = 1
    dropout: float = 0.2
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = jnp.mean(x.astype(self.dtype), axis=(1, 2))
        if self.dropout:
            x = nn.Dropout(self.dropout, deterministic=not train)(x)
        return nn.Dense(self.num_classes, dtype=jnp.float32, name="classifier")(x)


class BackboneHead(nn.Module):
    """``head(backbone(x))``, with the Keras transfer-learning semantics: the
    backbone's BatchNorm runs on its running statistics unless
    ``backbone_train`` is True; dropout and the head's BatchNorm follow
    ``train``. Returns (N, num_classes) float32 logits."""

    backbone: nn.Module
    head: nn.Module
    min_size: int = 32  # the architecture's input contract: 5 stride-2 stages need >= 32 px

    def __call__(self, x, train: bool = False, backbone_train: bool = False):
        if x.ndim != 4 or min(x.shape[1:3]) < self.min_size:
            raise ValueError(f"expected images (N, H, W, C) of at least {self.min_size}x{self.min_size} px, "
                             f"got shape {tuple(x.shape)}")
        features = self.backbone(x, train=backbone_train)
        return self.head(features, train=train)
