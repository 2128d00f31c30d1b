"""Variables saved in an older layout, moved into the current one.

Layout 2 (issue 32): a :class:`~fracjax.models.layers.ConvBN` (MobileNetV3's
stem, expand, project and last convolutions) owns its BatchNorm's variables,
``<conv>/<bn>/{scale, bias, mean, var}``; layout 1 kept them beside the
convolution, ``<bn>/...``, in the caller's scope. A model spec saved with a
checkpoint records its layout as ``variables_layout``; a spec without one is
layout 1. The values are moved, never changed: the same model, the same numbers.
"""

from __future__ import annotations

from typing import Any, Dict

import jax
import jax.numpy as jnp
from flax import traverse_util

VARIABLES_LAYOUT = 2


class LayoutError(ValueError):
    """Saved variables that do not fit the model, even moved into its layout."""


def abstract_variables(model, image_size: int, channels: int = 1) -> Dict[str, Any]:
    """The shapes and dtypes of ``model``'s variables (nothing is computed)."""
    dummy = jax.ShapeDtypeStruct((1, image_size, image_size, channels), jnp.float32)
    return jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), dummy)


def upgrade_variables(variables: Dict[str, Any], target: Dict[str, Any], where: str = "the checkpoint"):
    """``variables`` arranged as ``target`` (abstract or concrete variables of
    the current model): each leaf found at its own path or, for a layout-1
    BatchNorm of a ConvBN, one level up (``.../<conv>/<bn>/x`` <- ``.../<bn>/x``).
    Refused, naming the first paths, when a leaf is missing, left over or of
    another shape."""
    out = {}
    for collection, tree in target.items():
        old = traverse_util.flatten_dict(dict(variables.get(collection, {})))
        new = {}
        for path, leaf in traverse_util.flatten_dict(dict(tree)).items():
            found = path if path in old or len(path) < 3 else path[:-3] + path[-2:]
            if found not in old:
                raise LayoutError(f"{where}: {collection}/{'/'.join(path)} is missing (another model or layout?)")
            value = old.pop(found)
            if tuple(value.shape) != tuple(leaf.shape):
                raise LayoutError(f"{where}: {collection}/{'/'.join(path)} has shape {tuple(value.shape)}, the model "
                                  f"needs {tuple(leaf.shape)}")
            new[path] = value
        if old:
            raise LayoutError(f"{where}: {collection} holds {len(old)} array(s) the model does not have, the first "
                              f"{'/'.join(next(iter(old)))}")
        out[collection] = traverse_util.unflatten_dict(new)
    return out
