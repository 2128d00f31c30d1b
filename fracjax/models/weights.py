"""Import Keras ImageNet weights into fracjax backbones.

Two file formats are read (with h5py, no TensorFlow or Keras needed):

* Keras 3 ``.weights.h5``: ``layers/<snake_class_name>[_k]/vars/<j>``, the
  k-th layer of a class in ``model.layers`` order. Layer names are not stored.
* Legacy HDF5, as ``keras.applications`` downloads them (often written by
  Keras 2, with Keras-2 layer names): root attribute ``layer_names`` and one
  group per layer with attribute ``weight_names``. As Keras itself does, the
  layers that carry weights are matched in order, not by name.

Our side of the match is the order in which the backbone calls its
weight-bearing layers, recorded once by intercepting a shape-only trace. Every
shape is checked; a missing, extra or mis-shaped weight is a hard error that
names it.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Dict, List, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from flax import traverse_util


class KerasWeightsError(ValueError):
    """A Keras weights file that cannot be loaded into the requested model."""


# Keras class (snake case, as the .weights.h5 keys spell it) of flax's own
# weight-bearing layers; fracjax's layers name theirs (``keras_layer``).
_KIND_OF = {
    nn.Conv: "conv2d",
    nn.BatchNorm: "batch_normalization",
    nn.Dense: "dense",
}


def _keras_kind(module: nn.Module) -> Optional[str]:
    declared = getattr(module, "keras_layer", None)
    if declared is not None:
        return declared
    return next((k for t, k in _KIND_OF.items() if isinstance(module, t)), None)


@dataclasses.dataclass(frozen=True)
class LayerSlot:
    """One weight-bearing layer of our module, in call order."""

    path: Tuple[str, ...]  # module path inside the variables tree
    kind: str  # Keras class, snake case
    variables: Tuple[Tuple[str, str], ...]  # (collection, name) in Keras's var order


def _slot_variables(kind: str, module: nn.Module) -> Tuple[Tuple[str, str], ...]:
    if kind == "batch_normalization":
        return (("params", "scale"), ("params", "bias"), ("batch_stats", "mean"), ("batch_stats", "var"))
    if getattr(module, "use_bias", True):
        return (("params", "kernel"), ("params", "bias"))
    return (("params", "kernel"),)


def _add_slot(slots: List[LayerSlot], seen: set, slot: LayerSlot) -> None:
    if slot.path not in seen:
        seen.add(slot.path)
        slots.append(slot)


def keras_layer_order(module: nn.Module, input_shape: Sequence[int]) -> List[LayerSlot]:
    """The weight-bearing layers of ``module`` in the order they are called.

    Shapes only: nothing is computed. Keras's ``model.layers`` order, which
    both weight formats follow, is the same for the architectures we port.
    """
    slots: List[LayerSlot] = []
    seen = set()

    def interceptor(next_fun, args, kwargs, context):
        mod = context.module
        if context.method_name == "__call__":
            path = tuple(mod.scope.path) if mod.scope is not None else ()
            if hasattr(mod, "keras_slots"):  # one module standing for several Keras layers (ConvBN)
                for below, kind in mod.keras_slots():
                    _add_slot(slots, seen, LayerSlot((*path, *below), kind, _slot_variables(kind, mod)))
                return next_fun(*args, **kwargs)
            kind = _keras_kind(mod)
            if kind is not None:
                _add_slot(slots, seen, LayerSlot(path, kind, _slot_variables(kind, mod)))
        return next_fun(*args, **kwargs)

    def init(x):
        with nn.intercept_methods(interceptor):
            return module.init(jax.random.key(0), x)

    jax.eval_shape(init, jax.ShapeDtypeStruct(tuple(input_shape), jnp.float32))
    return slots


# --------------------------------------------------------------------------
# Reading the two file formats.
# --------------------------------------------------------------------------


@dataclasses.dataclass
class FileLayer:
    label: str  # where it sits in the file, for error messages
    kind: Optional[str]  # Keras class (snake case) where the format records it
    arrays: List  # h5py datasets: their shapes are checked before any is read


def _open_h5(path: str):
    import h5py  # optional dependency: only weight import needs it

    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"Keras weights file not found: {path}")
    try:
        f = h5py.File(path, "r")
    except OSError as err:
        raise KerasWeightsError(f"{path} is not a readable HDF5 file ({err})") from None
    try:
        _check_self_contained(f, path)
    except BaseException:
        f.close()
        raise
    return f


MAX_HDF5_DEPTH = 16  # Keras files nest four or five groups deep


def _check_self_contained(f, path: str) -> None:
    """Refuse an HDF5 file that reaches past itself before anything is read: soft and external
    links (another file, or a loop), datasets stored in other files or mapped from them."""
    import h5py

    stack = [("", f, 0)]
    while stack:
        prefix, group, depth = stack.pop()
        if depth > MAX_HDF5_DEPTH:
            raise KerasWeightsError(f"{path}: groups nested more than {MAX_HDF5_DEPTH} deep at {prefix}")
        for name in group:  # names only: iterating resolves no link
            where = f"{prefix}/{name}"
            link = group.get(name, getlink=True)
            if not isinstance(link, h5py.HardLink):
                raise KerasWeightsError(f"{path}: {where} is a {type(link).__name__}; weights files with links "
                                        "(to other files, or in a loop) are not read")
            item = group[name]
            if isinstance(item, h5py.Group):
                stack.append((where, item, depth + 1))
            elif isinstance(item, h5py.Dataset) and (item.external or item.is_virtual):
                raise KerasWeightsError(f"{path}: {where} keeps its values in another file; weights files that "
                                        "are not self-contained are not read")


def _split_key(key: str) -> Tuple[str, int]:
    """``conv2d_12`` -> ("conv2d", 12); ``conv2d`` -> ("conv2d", 0)."""
    base, _, suffix = key.rpartition("_")
    if base and suffix.isdigit():
        return base, int(suffix)
    return key, 0


def _read_keras3(f, path: str) -> Dict[str, Dict[int, FileLayer]]:
    """Keras 3 layout -> {kind: {index: FileLayer}} for layers that hold vars."""
    import h5py

    by_kind: Dict[str, Dict[int, FileLayer]] = {}
    for key, group in f["layers"].items():
        if not isinstance(group, h5py.Group):
            continue
        if "vars" in group and len(group["vars"]):
            vars_group = group["vars"]
            arrays = [vars_group[str(j)] for j in range(len(vars_group))]
            kind, index = _split_key(key)
            by_kind.setdefault(kind, {})[index] = FileLayer(f"layers/{key}", kind, arrays)
        else:
            # Nested models keep their own "layers" group.
            nested = [k for k in group.keys() if k != "vars"]
            if nested:
                raise KerasWeightsError(
                    f"{path}: layer group layers/{key} holds nested groups {nested}; "
                    "save the backbone model itself, not a model wrapping it"
                )
    return by_kind


def _decode(values) -> List[str]:
    return [v.decode("utf8") if isinstance(v, bytes) else str(v) for v in values]


def _read_legacy(f, path: str) -> List[FileLayer]:
    """Legacy layout -> FileLayers with weights, in the file's layer order."""
    root = f["model_weights"] if "model_weights" in f else f
    if "layer_names" not in root.attrs:
        raise KerasWeightsError(
            f"{path}: neither a Keras 3 .weights.h5 file (no 'layers' group) nor a legacy "
            "Keras weights file (no 'layer_names' attribute)"
        )
    layers = []
    for name in _decode(root.attrs["layer_names"]):
        if name not in root:
            raise KerasWeightsError(f"{path}: layer {name!r} is listed in layer_names but has no group")
        group = root[name]
        names = _decode(group.attrs.get("weight_names", []))
        if not names:
            continue
        try:
            arrays = [group[w] for w in names]
        except KeyError as err:
            raise KerasWeightsError(f"{path}: layer {name!r} lists a weight it does not hold ({err})") from None
        layers.append(FileLayer(name, None, arrays))
    return layers


def pair_keras_layers(f, path: str, slots: Sequence[LayerSlot]) -> List[Tuple[LayerSlot, FileLayer]]:
    """Pair each of our layers with the file's layer that Keras would load into
    it (``f``: the open HDF5 file; nothing is read but names and shapes).

    Raises KerasWeightsError naming what is missing or extra.
    """
    if "layers" in f:
        return _pair_keras3(_read_keras3(f, path), path, slots)
    layers = _read_legacy(f, path)
    if len(layers) != len(slots):
        detail = ""
        if len(layers) < len(slots):
            missing = slots[len(layers)]
            detail = f"; the first without weights would be {'/'.join(missing.path)}"
        else:
            detail = f"; the first extra is {layers[len(slots)].label!r}"
        raise KerasWeightsError(
            f"{path}: the file has {len(layers)} layers with weights, the model {len(slots)}{detail} "
            "(a model with its Keras top, or another architecture?)"
        )
    return list(zip(slots, layers, strict=True))


def _pair_keras3(by_kind: Dict[str, Dict[int, FileLayer]], path: str,
                 slots: Sequence[LayerSlot]) -> List[Tuple[LayerSlot, FileLayer]]:
    pairs, counters = [], {}
    for slot in slots:
        index = counters.get(slot.kind, 0)
        counters[slot.kind] = index + 1
        layer = by_kind.get(slot.kind, {}).pop(index, None)
        if layer is None:
            key = slot.kind if index == 0 else f"{slot.kind}_{index}"
            raise KerasWeightsError(f"{path}: missing weights layers/{key} for {'/'.join(slot.path)}")
        pairs.append((slot, layer))
    extra = sorted(layer.label for layers in by_kind.values() for layer in layers.values())
    if extra:
        raise KerasWeightsError(
            f"{path}: {len(extra)} weight layer(s) the model does not have: "
            f"{', '.join(extra[:8])}{' ...' if len(extra) > 8 else ''} "
            "(a model with its Keras top, or another architecture?)"
        )
    return pairs


# --------------------------------------------------------------------------
# Conversion.
# --------------------------------------------------------------------------


def _flax_shape(kind: str, var_index: int, shape: Tuple[int, ...]) -> Tuple[int, ...]:
    """The shape :func:`_to_flax` gives an array of ``shape``."""
    if kind == "depthwise_conv2d" and var_index == 0 and len(shape) == 4:
        return (*shape[:2], shape[3], shape[2])
    return shape


def _to_flax(kind: str, var_index: int, array: np.ndarray) -> np.ndarray:
    if kind == "depthwise_conv2d" and var_index == 0:
        # Keras (kh, kw, C, depth_multiplier=1) -> flax grouped (kh, kw, 1, C).
        return np.swapaxes(array, 2, 3)
    return array


def _checked_keys(path: str, slot: LayerSlot, layer: FileLayer, flat_target) -> List[tuple]:
    """The variables ``layer``'s arrays fill, after checking each declared
    shape (from the file's header: nothing is read, so a file declaring a
    huge tensor is refused without allocating it)."""
    if len(layer.arrays) != len(slot.variables):
        raise KerasWeightsError(
            f"{path}: {layer.label} holds {len(layer.arrays)} arrays, "
            f"{'/'.join(slot.path)} ({slot.kind}) needs {len(slot.variables)}"
        )
    keys = []
    for j, ((collection, name), dataset) in enumerate(zip(slot.variables, layer.arrays, strict=True)):
        key = (collection, *slot.path, name)
        shape = tuple(dataset.shape)
        if _flax_shape(slot.kind, j, shape) != tuple(flat_target[key].shape):
            raise KerasWeightsError(
                f"{path}: {layer.label} var {j} has shape {shape}; {'/'.join(key)} needs "
                f"{tuple(flat_target[key].shape)}"
            )
        if np.dtype(dataset.dtype).kind != "f":
            raise KerasWeightsError(f"{path}: {layer.label} var {j} holds {dataset.dtype} values, not floats")
        keys.append(key)
    return keys


def _read_array(path: str, layer: FileLayer, j: int, kind: str, dtype) -> jax.Array:
    try:
        value = _to_flax(kind, j, np.asarray(layer.arrays[j]))
    except OSError as err:  # a truncated or corrupt file: h5py fails at the read
        raise KerasWeightsError(f"{path}: {layer.label} var {j} cannot be read ({err})") from None
    if not np.isfinite(value).all():
        raise KerasWeightsError(f"{path}: {layer.label} var {j} holds NaN or infinite values")
    return jnp.asarray(value, dtype=dtype)


def convert_keras_weights(module: nn.Module, path: str, input_shape: Sequence[int]) -> dict:
    """Read ``path`` into a variables dict shaped like ``module.init``'s output."""
    slots = keras_layer_order(module, input_shape)
    target = jax.eval_shape(
        lambda x: module.init(jax.random.key(0), x),
        jax.ShapeDtypeStruct(tuple(input_shape), jnp.float32),
    )
    target = {k: v for k, v in target.items() if k in ("params", "batch_stats")}
    flat_target = traverse_util.flatten_dict(nn.unbox(target))
    with _open_h5(path) as f:
        pairs = pair_keras_layers(f, path, slots)
        keys = [_checked_keys(path, slot, layer, flat_target) for slot, layer in pairs]  # every shape, then reads
        flat = {key: _read_array(path, layer, j, slot.kind, flat_target[key].dtype)
                for (slot, layer), layer_keys in zip(pairs, keys, strict=True) for j, key in enumerate(layer_keys)}
    missing = sorted("/".join(k) for k in set(flat_target) - set(flat))
    if missing:  # a variable our layer order does not cover: a bug on our side
        raise KerasWeightsError(f"{path}: no Keras weight for {', '.join(missing[:8])}")
    return traverse_util.unflatten_dict(flat)


def with_backbone_variables(variables: dict, backbone_variables: dict) -> dict:
    """A copy of a classifier's ``variables`` whose ``backbone`` subtrees are
    replaced by ``backbone_variables``; the head keeps its initialisation.
    Every collection, path and shape must match."""
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in variables.items()}
    for collection, tree in backbone_variables.items():
        if collection not in variables or "backbone" not in variables[collection]:
            raise KerasWeightsError(f"the classifier has no {collection}/backbone to replace")
        current = variables[collection]["backbone"]
        want = jax.tree_util.tree_structure(current)
        got = jax.tree_util.tree_structure(tree)
        if want != got:
            a = set(traverse_util.flatten_dict(nn.unbox(current)))
            b = set(traverse_util.flatten_dict(nn.unbox(tree)))
            raise KerasWeightsError(
                f"{collection}/backbone structure differs: missing {sorted('/'.join(k) for k in a - b)[:5]}, "
                f"extra {sorted('/'.join(k) for k in b - a)[:5]}"
            )
        for (kp, old), new in zip(
            jax.tree_util.tree_leaves_with_path(current), jax.tree_util.tree_leaves(tree), strict=True
        ):
            if np.shape(old) != np.shape(new):
                raise KerasWeightsError(
                    f"{collection}/backbone{jax.tree_util.keystr(kp)}: shape {np.shape(new)}, "
                    f"the classifier needs {np.shape(old)}"
                )
        out[collection]["backbone"] = tree
    return out
