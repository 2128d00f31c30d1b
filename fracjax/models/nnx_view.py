"""fracjax's models as Flax NNX modules (``flax.nnx.bridge``), for users who write NNX.

    >>> model = fracjax.models.create("mobilenet_v3_small", head="hybrid")
    >>> variables = fracjax.models.init_variables(model, 224, seed=0)
    >>> nnx_model = fracjax.models.to_nnx(model, variables, image_size=224)
    >>> logits = nnx_model(images)                      # inference: running BatchNorm statistics
    >>> logits = nnx_model(images, train=True, backbone_train=True)   # updates its BatchStat in place

The view holds the Linen model's variables as NNX variables at the same paths
(``backbone/block0/depthwise/kernel`` is an ``nnx.Param``, a BatchNorm's ``mean`` an
``nnx.BatchStat``), so ``nnx.Optimizer`` and ``nnx.state(view, nnx.Param)`` work on it, and
:func:`to_linen_variables` gives the Linen dictionary back (for fracjax's checkpoints, export
and serving). It is a view of the same arithmetic, not a second implementation: the Linen
module runs inside it.
"""

from __future__ import annotations

from typing import Any, Dict

import jax
import jax.numpy as jnp
from flax import linen as nn
from flax import nnx
from flax.traverse_util import flatten_dict, unflatten_dict

COLLECTIONS = {"params": nnx.Param, "batch_stats": nnx.BatchStat}


def _collection_of(variable) -> str:
    for collection, kind in COLLECTIONS.items():
        if isinstance(variable, kind):
            return collection
    raise ValueError(f"a variable of type {type(variable).__name__} that fracjax's models do not have")


def to_nnx(model: nn.Module, variables: Dict[str, Any], image_size: int = 224, seed: int = 0) -> nnx.Module:
    """``model`` (a Linen module from :func:`fracjax.models.create`) holding ``variables``
    ({"params", "batch_stats"}) as an NNX module. ``seed`` feeds its dropout. The variables
    must fit the model: a missing or extra path, or another shape, is refused by name."""
    sample = jax.ShapeDtypeStruct((1, image_size, image_size, 1), jnp.float32)
    abstract = nnx.eval_shape(lambda: nnx.bridge.ToNNX(model, rngs=nnx.Rngs(seed)).lazy_init(
        jnp.zeros(sample.shape, sample.dtype)))
    graphdef, state = nnx.split(abstract)
    given = {(collection, *path): value for collection in COLLECTIONS
             for path, value in flatten_dict(dict(variables.get(collection, {}))).items()}
    filled, used = [], set()
    for path, variable in nnx.to_flat_state(state):
        if not isinstance(variable, tuple(COLLECTIONS.values())):  # the dropout stream: drawn below
            filled.append((path, variable))
            continue
        key = (_collection_of(variable), *(str(p) for p in path))
        if key not in given:
            raise ValueError(f"the variables lack {'/'.join(key)}, which the model has")
        value = jnp.asarray(given[key])
        if value.shape != variable.get_value().shape:
            raise ValueError(f"{'/'.join(key)}: the variables hold shape {value.shape}, the model wants "
                             f"{variable.get_value().shape}")
        filled.append((path, variable.replace(value)))
        used.add(key)
    extra = sorted("/".join(k) for k in set(given) - used)
    if extra:
        raise ValueError(f"the variables hold what the model does not have: {', '.join(extra[:5])}")
    view = nnx.merge(graphdef, nnx.from_flat_state(filled))
    nnx.reseed(view, default=seed)  # its random-number keys were only shapes under eval_shape
    return view


def to_linen_variables(view: nnx.Module) -> Dict[str, Any]:
    """The Linen variables ({"params", "batch_stats"}) an NNX view holds now."""
    out: Dict[str, Dict] = {collection: {} for collection in COLLECTIONS}
    for path, variable in nnx.to_flat_state(nnx.state(view)):
        if isinstance(variable, tuple(COLLECTIONS.values())):
            out[_collection_of(variable)][tuple(str(p) for p in path)] = variable.get_value()
    return {collection: unflatten_dict(flat) for collection, flat in out.items()}
