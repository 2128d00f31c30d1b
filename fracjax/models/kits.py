"""Kernel kits: which implementation every layer of a model runs.

:func:`fracjax.models.create` fills an architecture's ``conv``, ``depthwise``
and ``conv_bn`` building blocks from one kit: "auto" (each op decided per
platform when lowered: the CPU forms on CPU, lax's ops on GPU and TPU, also
for a function traced on a CPU host and exported for a GPU), "cpu" (the CPU
forms everywhere) or "portable" (lax's ops everywhere, no folding). The
environment variables ``FRACJAX_CONV_IMPL`` and ``FRACJAX_DEPTHWISE_IMPL``
only set what ``create`` uses when it is given no kit.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Dict, Union

from fracjax import ops
from fracjax.models.layers import Conv, ConvBN, DepthwiseConv2D
from fracjax.ops.platform import check_impl


@dataclasses.dataclass(frozen=True)
class Kernels:
    """The implementation of each kind of layer (see :mod:`fracjax.ops`)."""

    conv: str = "auto"  # fracjax.ops.CONV_IMPLS; also the conv of a ConvBN
    depthwise: str = "auto"  # fracjax.ops.DEPTHWISE_IMPLS
    fold: bool = True  # ConvBN folds where the CPU form runs and the shapes pay

    def __post_init__(self):
        check_impl(self.conv, ops.CONV_IMPLS, "Kernels.conv")
        check_impl(self.depthwise, ops.DEPTHWISE_IMPLS, "Kernels.depthwise")

    def module_defs(self) -> Dict[str, object]:
        """The building blocks an architecture takes, bound to this kit."""
        return {
            "conv": functools.partial(Conv, impl=self.conv),
            "depthwise": functools.partial(DepthwiseConv2D, impl=self.depthwise),
            "conv_bn": functools.partial(ConvBN, impl=self.conv, fold=self.fold),
        }


KITS: Dict[str, Kernels] = {
    "auto": Kernels(),
    "cpu": Kernels(conv="matmul", depthwise="shift"),
    "portable": Kernels(conv="lax", depthwise="lax", fold=False),
}


def kernels_from_environment() -> Kernels:
    """The kit ``create`` uses by default: "auto", unless ``FRACJAX_CONV_IMPL``
    or ``FRACJAX_DEPTHWISE_IMPL`` name an implementation."""
    return Kernels(conv=ops.env_impl("FRACJAX_CONV_IMPL", ops.CONV_IMPLS),
                   depthwise=ops.env_impl("FRACJAX_DEPTHWISE_IMPL", ops.DEPTHWISE_IMPLS))


def resolve_kernels(kernels: Union[str, Kernels, None]) -> Kernels:
    """A kit from its name, a :class:`Kernels`, or None (the environment's)."""
    if kernels is None:
        return kernels_from_environment()
    if isinstance(kernels, Kernels):
        return kernels
    if kernels not in KITS:
        raise ValueError(f"kernels must be one of {sorted(KITS)} or a fracjax.models.Kernels, got {kernels!r}")
    return KITS[kernels]
