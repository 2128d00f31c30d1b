"""fracjax models: Flax Linen backbones, heads and the registry.

    >>> import fracjax
    >>> model = fracjax.models.create("mobilenet_v3_small", head="hybrid")
"""

from fracjax.models import pretrained  # noqa: F401
from fracjax.models.hybrid import BackboneHead, ConvBlockSpec, HybridHead, LinearHead
from fracjax.models.layers import Conv, DepthwiseConv2D, set_default_conv_impl, set_default_depthwise_impl
from fracjax.models.mobilenet_v3 import MobileNetV3, MobileNetV3Large, MobileNetV3Small
from fracjax.models.pretrained import WeightsUnavailableError
from fracjax.models.registry import InputContract, available, create, input_contract, register
from fracjax.models.weights import KerasWeightsError, load_keras_weights, with_backbone_variables

__all__ = [
    "BackboneHead",
    "ConvBlockSpec",
    "Conv",
    "DepthwiseConv2D",
    "HybridHead",
    "InputContract",
    "KerasWeightsError",
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
    "set_default_conv_impl",
    "set_default_depthwise_impl",
    "with_backbone_variables",
]
