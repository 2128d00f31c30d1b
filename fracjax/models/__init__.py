"""fracjax models: Flax Linen backbones, heads and the registry.

    >>> import fracjax
    >>> model = fracjax.models.create("mobilenet_v3_small", head="hybrid")
"""

from fracjax.models import migrate, pretrained  # noqa: F401
from fracjax.models.hybrid import BackboneHead, ConvBlockSpec, HybridHead, LinearHead
from fracjax.models.kits import KITS, Kernels
from fracjax.models.layers import BatchNorm, Conv, ConvBN, DepthwiseConv2D
from fracjax.models.mobilenet_v3 import MobileNetV3, MobileNetV3Large, MobileNetV3Small
from fracjax.models.nnx_view import to_linen_variables, to_nnx
from fracjax.models.pretrained import WeightsUnavailableError
from fracjax.models.registry import (
    InputContract,
    available,
    create,
    init_variables,
    input_contract,
    load_keras_weights,
    register,
)
from fracjax.models.summary import summarize, summary
from fracjax.models.weights import KerasWeightsError, with_backbone_variables

__all__ = [
    "init_variables",
    "BackboneHead",
    "BatchNorm",
    "ConvBlockSpec",
    "Conv",
    "ConvBN",
    "DepthwiseConv2D",
    "HybridHead",
    "InputContract",
    "KITS",
    "KerasWeightsError",
    "Kernels",
    "LinearHead",
    "MobileNetV3",
    "MobileNetV3Large",
    "MobileNetV3Small",
    "WeightsUnavailableError",
    "available",
    "create",
    "input_contract",
    "load_keras_weights",
    "pretrained",
    "register",
    "summarize",
    "summary",
    "to_linen_variables",
    "to_nnx",
    "with_backbone_variables",
]
