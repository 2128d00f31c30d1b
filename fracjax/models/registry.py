"""Model registry: ``create(name, head=...)`` and each model's input contract."""

from __future__ import annotations

import dataclasses
import inspect
from typing import Callable, Dict, List, Optional, Tuple, Union

import jax
import jax.numpy as jnp
from flax import linen as nn

from fracjax.models import densenet, hybrid, mobilenet_v3, resnet, vgg
from fracjax.models.kits import Kernels, resolve_kernels
from fracjax.models.pretrained import resolve
from fracjax.models.weights import convert_keras_weights, with_backbone_variables


@dataclasses.dataclass(frozen=True)
class InputContract:
    """What a model expects, stated once per architecture.

    Every model takes NHWC pixels in ``pixel_range`` with 3 (RGB) or 1 (grey,
    repeated to RGB) channels and applies ``preprocessing`` itself, so callers
    never preprocess by hand.
    """

    preprocessing: str  # Keras preprocess_input mode: "tf", "caffe" or "torch"
    pixel_range: Tuple[float, float] = (0.0, 255.0)
    channels: Tuple[int, ...] = (1, 3)
    default_size: int = 224
    min_size: int = 32
    feature_channels: int = 0
    keras_application: str = ""

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class ModelEntry:
    name: str
    build_backbone: Callable[..., nn.Module]
    contract: InputContract


_REGISTRY: Dict[str, ModelEntry] = {}

HEADS = ("hybrid", "linear", None)


def register(name: str, build_backbone: Callable[..., nn.Module], contract: InputContract) -> None:
    """Register a backbone builder (keyword options -> Linen module)."""
    if name in _REGISTRY:
        raise ValueError(f"model {name!r} is already registered")
    _REGISTRY[name] = ModelEntry(name, build_backbone, contract)


def available() -> List[str]:
    """Names accepted by :func:`create`."""
    return sorted(_REGISTRY)


def _entry(name: str) -> ModelEntry:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(available())}") from None


def input_contract(name: str) -> InputContract:
    return _entry(name).contract


def _accepted_fields(builder) -> set:
    target = builder.func if hasattr(builder, "func") else builder
    if dataclasses.is_dataclass(target):
        return {f.name for f in dataclasses.fields(target) if f.init and f.name not in ("parent", "name")}
    return set(inspect.signature(target).parameters)


_HEAD_OPTIONS = {"head_blocks", "head_dropout"}


def create(
    name: str,
    head: Optional[str] = "hybrid",
    num_classes: int = 1,
    *,
    weights: Optional[str] = None,
    pretrained: bool = False,
    kernels: Union[str, Kernels, None] = None,
    **options,
):
    """Build a Linen module; with ``weights``, also its variables.

    Args:
      name: one of :func:`available`, e.g. ``"mobilenet_v3_small"``.
      head: ``"hybrid"`` (the paper's conv blocks + GAP + dropout + dense),
        ``"linear"`` (GAP + dropout + dense) or ``None`` (the bare backbone,
        whose output is the feature map).
      num_classes: logits out of the head (1 for binary, sigmoid).
      **options: backbone fields (``dtype``, ``bn_axis_name``,
        ``bn_momentum``...) and head options ``head_blocks`` (list of
        ConvBlockSpec / ints / (features, kernel, dropout)) and
        ``head_dropout``.
      kernels: the kit of layer implementations (:mod:`fracjax.models.kits`):
        "auto" (each op chosen per platform when lowered), "cpu", "portable",
        a :class:`~fracjax.models.kits.Kernels`, or None: "auto" unless the
        environment variables ``FRACJAX_CONV_IMPL`` / ``FRACJAX_DEPTHWISE_IMPL``
        say otherwise. The parameters do not depend on it.
      weights: ``"imagenet"`` (Keras's ImageNet file, fetched on first use,
        hash-checked and cached: :mod:`fracjax.models.pretrained`) or the path
        of a Keras weights file. Then ``create`` returns ``(model,
        variables)``: a Linen module holds no weights, so they come beside
        it, the backbone loaded and the head initialised (seed 0) at the
        architecture's default size. ``pretrained=True`` means
        ``weights="imagenet"`` (timm's spelling).

    The classifier's call is ``model.apply(variables, x, train=...,
    backbone_train=...)``; see :class:`fracjax.models.hybrid.BackboneHead`.
    """
    if pretrained and weights is None:
        weights = "imagenet"
    kit = resolve_kernels(kernels)
    model = _build(name, head, num_classes, dict(options), kit)
    if weights is None:
        return model
    return model, _variables_with_weights(model, name, head, weights, options, kit)


def _variables_with_weights(model: nn.Module, name: str, head: Optional[str], weights: str, options,
                            kit: Kernels) -> dict:
    size = input_contract(name).default_size
    backbone_options = {k: v for k, v in options.items() if k not in _HEAD_OPTIONS}
    backbone = load_keras_weights(name, weights, image_size=size, kernels=kit, **backbone_options)
    if head is None:
        return backbone
    return with_backbone_variables(init_variables(model, size, seed=0), backbone)


# XLA's backend optimisation off for an init: it runs once, and optimising its
# per-parameter random draws costs more than it saves (about half the compile;
# benchmarks/NOTES.md).
INIT_COMPILER_OPTIONS = {"xla_backend_optimization_level": 0}


def init_variables(model: nn.Module, image_size: int, seed: int, channels: int = 1) -> dict:
    """``model.init`` on one zero image, jitted with :data:`INIT_COMPILER_OPTIONS`."""
    dummy = jnp.zeros((1, image_size, image_size, channels), jnp.float32)
    init = jax.jit(lambda key: model.init(key, dummy, train=False),
                   compiler_options=INIT_COMPILER_OPTIONS)
    return init(jax.random.key(seed))


def load_keras_weights(name: str, path: str, image_size: Optional[int] = None, **options) -> dict:
    """Keras ImageNet (or any Keras-saved) weights for the backbone ``name``.

    Returns ``{"params": ..., "batch_stats": ...}`` for
    ``create(name, head=None, **options)``. ``path`` is a Keras 3
    ``.weights.h5`` or a legacy ``.h5`` weights file of the same architecture
    without its top (``include_top=False``), or ``"imagenet"`` for the file
    ``keras.applications`` uses (fetched once, hash-checked, cached; see
    :mod:`fracjax.models.pretrained`). Use
    :func:`~fracjax.models.weights.with_backbone_variables` to put it into a
    classifier's variables.
    """
    path = resolve(name, path)
    backbone = create(name, head=None, **options)
    size = image_size or input_contract(name).default_size
    return convert_keras_weights(backbone, path, (1, size, size, 3))


def _build(name: str, head: Optional[str], num_classes: int, options, kit: Kernels) -> nn.Module:
    entry = _entry(name)
    if head not in HEADS:
        raise ValueError(f"head must be one of {HEADS}, got {head!r}")
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    head_options = {k: options.pop(k) for k in list(options) if k in _HEAD_OPTIONS}
    accepted = _accepted_fields(entry.build_backbone)
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise TypeError(
            f"create({name!r}): unknown option(s) {unknown}; backbone options: {sorted(accepted)}, "
            f"head options: {sorted(_HEAD_OPTIONS)}"
        )
    blocks = {k: v for k, v in kit.module_defs().items() if k in accepted and k not in options}
    backbone = entry.build_backbone(**options, **blocks)
    if head is None:
        if head_options:
            raise TypeError(f"head options {sorted(head_options)} given with head=None")
        return backbone
    common = {k: options[k] for k in ("dtype", "bn_axis_name") if k in options}
    if head == "hybrid":
        head_module = hybrid.HybridHead(
            num_classes=num_classes,
            blocks=hybrid.parse_blocks(head_options.get("head_blocks", hybrid.DEFAULT_HYBRID_BLOCKS)),
            dropout=head_options.get("head_dropout", 0.3),
            conv=kit.module_defs()["conv"],
            **common,
        )
    else:
        if "head_blocks" in head_options:
            raise TypeError("head_blocks applies to head='hybrid' only")
        head_module = hybrid.LinearHead(
            num_classes=num_classes,
            dropout=head_options.get("head_dropout", 0.2),
            **{k: v for k, v in common.items() if k == "dtype"},
        )
    return hybrid.BackboneHead(backbone=backbone, head=head_module, min_size=entry.contract.min_size)


register(
    "mobilenet_v3_small",
    mobilenet_v3.MobileNetV3Small,
    InputContract(preprocessing="tf", feature_channels=576, keras_application="MobileNetV3Small"),
)
register(
    "mobilenet_v3_large",
    mobilenet_v3.MobileNetV3Large,
    InputContract(preprocessing="tf", feature_channels=960, keras_application="MobileNetV3Large"),
)

# The paper's baselines and their families (each registered model has a Keras
# parity test).
for _name, _builder, _channels, _application in (
    ("resnet50", resnet.ResNet50, 2048, "ResNet50"),
    ("resnet101", resnet.ResNet101, 2048, "ResNet101"),
    ("resnet152", resnet.ResNet152, 2048, "ResNet152"),
):
    register(_name, _builder, InputContract("caffe", feature_channels=_channels, keras_application=_application))
for _name, _builder, _application in (("vgg16", vgg.VGG16, "VGG16"), ("vgg19", vgg.VGG19, "VGG19")):
    register(_name, _builder, InputContract("caffe", feature_channels=512, keras_application=_application))
for _name, _builder, _channels, _application in (
    ("densenet121", densenet.DenseNet121, 1024, "DenseNet121"),
    ("densenet169", densenet.DenseNet169, 1664, "DenseNet169"),
    ("densenet201", densenet.DenseNet201, 1920, "DenseNet201"),
):
    register(_name, _builder, InputContract("torch", feature_channels=_channels, keras_application=_application))
